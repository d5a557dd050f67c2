/* A network as libpixelq runs it: steps in order, each one kernel (pixelq_kernels.h, "A network").
 *
 * The net owns copies of every array its steps point to. Each value keeps its buffer from run to
 * run (a fresh buffer of a layer's size comes from mmap, and its page faults cost about a third of a
 * network's time); a run computes the shapes from the images', grows a buffer only where a batch
 * needs more, and checks each step's input against what the step was built for.
 */
#define _POSIX_C_SOURCE 200809L  /* clock_gettime */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "pixelq_kernels.h"

typedef struct {
    int32_t type, ndim;
    int64_t shape[4];
    void *data;          /* the buffer (value 0: the images a run was given) */
    size_t capacity;     /* bytes allocated (0 for value 0) */
} value_t;

struct pxq_net {
    pxq_step *steps;
    int32_t count, capacity;
    value_t *values;     /* count + 1: the images, then each step's output */
    void **owned;        /* the copies of the steps' arrays */
    int32_t owned_count, owned_capacity;
    uint8_t **shifted;   /* per step: a conv's shifted, padded input */
    size_t *shifted_capacity;
    int64_t pool_count;
    int ran;             /* a run has written every value */
    int profile;         /* time each step (seconds) */
    double *seconds;
};

static const int64_t TYPE_BYTES[] = {1, 4, 8, 4};

pxq_net *pxq_net_new(void) {
    pxq_net *net = calloc(1, sizeof(pxq_net));
    if (net && !(net->values = calloc(1, sizeof(value_t)))) {
        free(net);
        net = NULL;
    }
    if (!net) pxq_fail(PXQ_ERROR_MEMORY, "net: out of memory");
    return net;
}

void pxq_net_free(pxq_net *net) {
    if (!net) return;
    for (int32_t i = 0; i < net->owned_count; i++) free(net->owned[i]);
    for (int32_t i = 1; i <= net->count; i++) free(net->values[i].data);
    for (int32_t i = 0; i < net->count; i++) free(net->shifted[i]);
    free(net->owned);
    free(net->values);
    free(net->shifted);
    free(net->shifted_capacity);
    free(net->seconds);
    free(net->steps);
    free(net);
}

/* Keeps `p` (malloc'd) to free with the net; 0 when out of memory (p freed). */
static int own(pxq_net *net, void *p) {
    if (net->owned_count == net->owned_capacity) {
        int32_t capacity = net->owned_capacity ? 2 * net->owned_capacity : 32;
        void **grown = realloc(net->owned, sizeof(void *) * capacity);
        if (!grown) {
            free(p);
            return 0;
        }
        net->owned = grown;
        net->owned_capacity = capacity;
    }
    net->owned[net->owned_count++] = p;
    return 1;
}

/* Points `b` at the net's own copy of its array; 0 when out of memory. */
static int copy_buffer(pxq_net *net, pxq_buffer *b) {
    if (!b->data) {
        b->bytes = 0;
        return 1;
    }
    if (b->bytes < 0) return 0;
    void *copy = malloc(b->bytes ? (size_t)b->bytes : 1);
    if (!copy || !own(net, copy)) return 0;
    memcpy(copy, b->data, (size_t)b->bytes);
    b->data = copy;
    return 1;
}

static int copy_string(pxq_net *net, const char **s) {
    if (!*s) return 1;
    size_t n = strlen(*s) + 1;
    char *copy = malloc(n);
    if (!copy || !own(net, copy)) return 0;
    memcpy(copy, *s, n);
    *s = copy;
    return 1;
}

/* The type of the value step `s` writes. */
static int32_t output_type(const pxq_step *s) {
    switch (s->op) {
    case PXQ_STEP_CONV: return s->conv.thresholds.data || s->conv.direction.data ? PXQ_UINT8 : PXQ_INT32;
    case PXQ_STEP_SUM_POOL: case PXQ_STEP_LINEAR: return PXQ_INT64;
    case PXQ_STEP_LINEAR_FLOAT: return PXQ_FLOAT32;
    default: return PXQ_UINT8;
    }
}

/* The type each input of step `s` must have; -1 for an input it does not take. */
static int32_t input_type(const pxq_step *s, int k) {
    if (k == 1) return s->op == PXQ_STEP_CONV || s->op == PXQ_STEP_ADD_CLIP ? PXQ_UINT8 : -1;
    return s->op == PXQ_STEP_THRESHOLD ? PXQ_INT32
           : s->op == PXQ_STEP_LINEAR || s->op == PXQ_STEP_LINEAR_FLOAT ? PXQ_INT64 : PXQ_UINT8;
}

int32_t pxq_net_add(pxq_net *net, const pxq_step *step) {
    if (!net || !step) return pxq_fail(PXQ_ERROR_ARGUMENT, "net: no net or no step"), -1;
    if (step->op < PXQ_STEP_CONV || step->op > PXQ_STEP_LINEAR_FLOAT)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net: unknown step op %d", (int)step->op), -1;
    for (int k = 0; k < 2; k++) {
        const int32_t v = step->inputs[k], want = input_type(step, k);
        const int optional = k == 1 && step->op == PXQ_STEP_CONV;
        if (want < 0 ? v != -1 : (v < 0 && !(optional && v == -1)) || v > net->count)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: input %d names value %d; it has values 0 .. %d",
                            net->count, k, (int)v, net->count), -1;
        if (v >= 0 && net->values[v].type != want)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: input %d has type %d, the op takes %d", net->count, k,
                            (int)net->values[v].type, (int)want), -1;
    }
    if (step->op == PXQ_STEP_CONV && step->inputs[1] >= 0 && !step->conv.thresholds.data)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: a residual add needs thresholds", net->count), -1;
    if (step->op == PXQ_STEP_CONV && step->input_shift && (step->input_shift < 0 || step->input_shift > 255 ||
                                                           step->shift_padding < 0 || step->conv.pad != 0))
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: a shifted input needs a shift in 1 .. 255, "
                        "shift_padding >= 0 and conv.pad 0", net->count), -1;
    if (step->op == PXQ_STEP_ADD_CLIP && !(0 <= step->qmin && step->qmin <= step->qmax && step->qmax <= 255 &&
                                           0 <= step->shift && step->shift <= 255))
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: add_clip needs 0 <= qmin <= qmax <= 255, shift in 0 .. 255",
                        net->count), -1;
    if ((step->op == PXQ_STEP_MAX_POOL && step->kernel < 1) ||
        ((step->op == PXQ_STEP_MAX_POOL || step->op == PXQ_STEP_SUBSAMPLE_PAD) && step->stride < 1) ||
        (step->op == PXQ_STEP_SUBSAMPLE_PAD && step->extra_channels < 0))
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: kernel and stride must be >= 1, extra_channels >= 0",
                        net->count), -1;
    if ((step->op == PXQ_STEP_LINEAR || step->op == PXQ_STEP_LINEAR_FLOAT) &&
        (step->rows < 1 || step->cols < 1 || step->rows > INT32_MAX || step->cols > INT32_MAX ||
         step->weight.bytes != step->rows * step->cols * 4))
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: linear weight must be (rows, cols) of 4-byte values", net->count), -1;
    if (step->op == PXQ_STEP_LINEAR_FLOAT && (step->bias.bytes != step->rows * 4 || !(step->step > 0)))
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: linear_float needs a float32 bias (rows) and a step > 0",
                        net->count), -1;

    if (net->count == net->capacity) {
        int32_t capacity = net->capacity ? 2 * net->capacity : 16;
        pxq_step *steps = realloc(net->steps, sizeof(pxq_step) * capacity);
        if (steps) net->steps = steps;
        value_t *values = steps ? realloc(net->values, sizeof(value_t) * (capacity + 1)) : NULL;
        if (values) net->values = values;
        uint8_t **shifted = values ? realloc(net->shifted, sizeof(uint8_t *) * capacity) : NULL;
        if (shifted) net->shifted = shifted;
        size_t *shifted_capacity = shifted ? realloc(net->shifted_capacity, sizeof(size_t) * capacity) : NULL;
        if (shifted_capacity) net->shifted_capacity = shifted_capacity;
        double *seconds = shifted_capacity ? realloc(net->seconds, sizeof(double) * capacity) : NULL;
        if (!seconds) return pxq_fail(PXQ_ERROR_MEMORY, "net: out of memory"), -1;
        net->seconds = seconds;
        net->capacity = capacity;
    }
    pxq_step s = *step;
    /* the arrays of a run are the values', never the caller's */
    s.conv.input = s.conv.residual = (pxq_buffer){0};
    s.conv.out = (pxq_output){0};
    s.threshold.acc = s.lookup.image = (pxq_buffer){0};
    s.threshold.out = s.lookup.out = (pxq_output){0};
    if (!copy_buffer(net, &s.conv.weights) || !copy_buffer(net, &s.conv.lookup_bits) ||
        !copy_buffer(net, &s.conv.lookup_sums) || !copy_buffer(net, &s.conv.direction) ||
        !copy_buffer(net, &s.conv.thresholds) || !copy_string(net, &s.conv.isa) ||
        !copy_buffer(net, &s.shift_border) || !copy_buffer(net, &s.offset) ||
        !copy_buffer(net, &s.threshold.direction) || !copy_buffer(net, &s.threshold.thresholds) ||
        !copy_buffer(net, &s.lookup.tables) || !copy_buffer(net, &s.weight) || !copy_buffer(net, &s.bias))
        return pxq_fail(PXQ_ERROR_MEMORY, "net: out of memory copying step %d's arrays", net->count), -1;
    net->steps[net->count] = s;
    net->shifted[net->count] = NULL;
    net->shifted_capacity[net->count] = 0;
    net->seconds[net->count] = 0;
    net->values[net->count + 1] = (value_t){.type = output_type(&s)};
    net->ran = 0;
    return ++net->count;
}

/* Sets value v's shape (ndim dims) and makes its buffer hold it; the status. */
static int shape_value(pxq_net *net, int32_t v, int ndim, const int64_t *shape) {
    value_t *x = &net->values[v];
    int64_t bytes = TYPE_BYTES[x->type];
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || __builtin_mul_overflow(bytes, shape[d], &bytes))
            return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: output too large", v - 1);
        x->shape[d] = shape[d];
    }
    x->ndim = ndim;
    if ((size_t)bytes > x->capacity) {
        free(x->data);
        x->capacity = 0;
        if (!(x->data = malloc(bytes ? (size_t)bytes : 1)))
            return pxq_fail(PXQ_ERROR_MEMORY, "net step %d: out of memory for its output", v - 1);
        x->capacity = (size_t)bytes;
    }
    return PXQ_OK;
}

static int64_t value_bytes(const value_t *x) {
    int64_t bytes = TYPE_BYTES[x->type];
    for (int d = 0; d < x->ndim; d++) bytes *= x->shape[d];
    return bytes;
}

static pxq_buffer buffer_of(const value_t *x) { return (pxq_buffer){x->data, value_bytes(x)}; }
static pxq_output output_of(const value_t *x) { return (pxq_output){x->data, value_bytes(x)}; }

/* 0 with the error set unless value x has `ndim` dims. */
static int dims(const value_t *x, int ndim, int step) {
    if (x->ndim == ndim) return 1;
    pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: its input has %d dims, the op takes %d", step, x->ndim, ndim);
    return 0;
}

/* The input of step i's conv shifted by its input_shift and padded with its border bytes. */
static int shift_input(pxq_net *net, int32_t i, const value_t *x, uint8_t **out) {
    const pxq_step *s = &net->steps[i];
    const int64_t n = x->shape[0], h = x->shape[1], w = x->shape[2], c = x->shape[3], p = s->shift_padding;
    const int64_t hp = h + 2 * p, wp = w + 2 * p, bytes = n * hp * wp * c;
    if (s->shift_border.bytes != c) return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: shift_border needs %lld bytes", i,
                                                    (long long)c);
    if ((size_t)bytes > net->shifted_capacity[i]) {
        free(net->shifted[i]);
        net->shifted_capacity[i] = 0;
        if (!(net->shifted[i] = malloc((size_t)bytes)))
            return pxq_fail(PXQ_ERROR_MEMORY, "net step %d: out of memory for its shifted input", i);
        net->shifted_capacity[i] = (size_t)bytes;
    }
    const uint8_t *border = s->shift_border.data, *src = x->data;
    uint8_t *dst = net->shifted[i];
    const int add = s->conv.kind == PXQ_CONV_LOOKUP ? 0 : s->input_shift;  /* a lookup conv's tables are shifted */
    for (int64_t b = 0; b < n; b++)
        for (int64_t y = 0; y < hp; y++)
            for (int64_t xx = 0; xx < wp; xx++) {
                uint8_t *d = dst + ((b * hp + y) * wp + xx) * c;
                const int inside = y >= p && y < h + p && xx >= p && xx < w + p;
                if (!inside) {
                    memcpy(d, border, (size_t)c);
                    continue;
                }
                const uint8_t *v = src + ((b * h + y - p) * w + xx - p) * c;
                for (int64_t k = 0; k < c; k++) d[k] = (uint8_t)(v[k] + add);
            }
    *out = dst;
    return PXQ_OK;
}

static int run_conv_step(pxq_net *net, int32_t i) {
    const pxq_step *s = &net->steps[i];
    const value_t *x = &net->values[s->inputs[0]];
    if (!dims(x, 4, i)) return PXQ_ERROR_ARGUMENT;
    pxq_conv_params p = s->conv;
    p.batch = x->shape[0], p.height = x->shape[1], p.width = x->shape[2];
    p.input = buffer_of(x);
    if (x->shape[3] != p.channels)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: its input has %lld channels, the conv takes %lld", i,
                        (long long)x->shape[3], (long long)p.channels);
    if (s->input_shift) {
        uint8_t *shifted = NULL;
        int status = shift_input(net, i, x, &shifted);
        if (status) return status;
        p.height += 2 * s->shift_padding, p.width += 2 * s->shift_padding;
        p.input = (pxq_buffer){shifted, p.batch * p.height * p.width * p.channels};
    }
    if (s->inputs[1] >= 0) {
        const value_t *r = &net->values[s->inputs[1]];
        if (!dims(r, 4, i)) return PXQ_ERROR_ARGUMENT;
        if (r->shape[0] != p.batch)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: the residual's batch differs from the input's", i);
        p.residual = buffer_of(r);
        p.residual_height = r->shape[1], p.residual_width = r->shape[2], p.residual_channels = r->shape[3];
    }
    const int64_t shape[4] = {p.batch, pxq_conv_out_size(p.height, p.kernel_h, p.stride, p.pad),
                              pxq_conv_out_size(p.width, p.kernel_w, p.stride, p.pad), p.out_channels};
    int status = shape_value(net, i + 1, 4, shape);
    if (status) return status;
    const value_t *y = &net->values[i + 1];
    p.out = output_of(y);
    if ((status = pxq_conv(&p))) return status;
    if (s->offset.data && y->type == PXQ_INT32) {
        if (s->offset.bytes != 4 * p.out_channels)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: offset needs %lld int32", i, (long long)p.out_channels);
        const int32_t *offset = s->offset.data;
        int32_t *acc = y->data;
        const int64_t positions = shape[0] * shape[1] * shape[2];
        for (int64_t m = 0; m < positions; m++)
            for (int64_t o = 0; o < p.out_channels; o++) acc[m * p.out_channels + o] -= offset[o];
    }
    return PXQ_OK;
}

static int run_step(pxq_net *net, int32_t i) {
    const pxq_step *s = &net->steps[i];
    if (s->op == PXQ_STEP_CONV) return run_conv_step(net, i);
    const value_t *x = &net->values[s->inputs[0]];
    value_t *y = &net->values[i + 1];
    int64_t shape[4];
    memcpy(shape, x->shape, sizeof shape);
    int status;
    switch (s->op) {
    case PXQ_STEP_THRESHOLD: {
        if ((status = shape_value(net, i + 1, x->ndim, shape))) return status;
        pxq_threshold_params p = s->threshold;
        p.channels = x->shape[x->ndim - 1];
        p.positions = value_bytes(x) / 4 / p.channels;
        p.acc = buffer_of(x), p.out = output_of(y);
        return pxq_threshold(&p);
    }
    case PXQ_STEP_LOOKUP: {
        if (!dims(x, 4, i)) return PXQ_ERROR_ARGUMENT;
        shape[3] = x->shape[3] * s->lookup.depth;
        if ((status = shape_value(net, i + 1, 4, shape))) return status;
        pxq_lookup_params p = s->lookup;
        p.positions = x->shape[0] * x->shape[1] * x->shape[2], p.channels = x->shape[3];
        p.image = buffer_of(x), p.out = output_of(y);
        return pxq_lookup(&p);
    }
    case PXQ_STEP_ADD_CLIP: {
        const value_t *b = &net->values[s->inputs[1]];
        if (b->ndim != x->ndim || memcmp(b->shape, x->shape, sizeof(int64_t) * x->ndim))
            return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: add_clip's inputs differ in shape", i);
        if ((status = shape_value(net, i + 1, x->ndim, shape))) return status;
        const uint8_t *u = x->data, *v = b->data;
        uint8_t *out = y->data;
        const int64_t count = value_bytes(x);
        for (int64_t k = 0; k < count; k++) {
            int sum = u[k] + v[k] - s->shift;
            out[k] = (uint8_t)(sum < s->qmin ? s->qmin : sum > s->qmax ? s->qmax : sum);
        }
        return PXQ_OK;
    }
    case PXQ_STEP_SUBSAMPLE_PAD: {
        if (!dims(x, 4, i)) return PXQ_ERROR_ARGUMENT;
        const int64_t st = s->stride, c = x->shape[3];
        shape[1] = (x->shape[1] + st - 1) / st, shape[2] = (x->shape[2] + st - 1) / st, shape[3] = c + s->extra_channels;
        if ((status = shape_value(net, i + 1, 4, shape))) return status;
        const uint8_t *src = x->data;
        uint8_t *dst = y->data;
        for (int64_t b = 0; b < shape[0]; b++)
            for (int64_t r = 0; r < shape[1]; r++)
                for (int64_t q = 0; q < shape[2]; q++) {
                    uint8_t *d = dst + ((b * shape[1] + r) * shape[2] + q) * shape[3];
                    memcpy(d, src + ((b * x->shape[1] + r * st) * x->shape[2] + q * st) * c, (size_t)c);
                    memset(d + c, 0, (size_t)s->extra_channels);
                }
        return PXQ_OK;
    }
    case PXQ_STEP_MAX_POOL: {
        if (!dims(x, 4, i)) return PXQ_ERROR_ARGUMENT;
        const int64_t k = s->kernel, st = s->stride, c = x->shape[3];
        shape[1] = pxq_conv_out_size(x->shape[1], s->kernel, s->stride, 0);
        shape[2] = pxq_conv_out_size(x->shape[2], s->kernel, s->stride, 0);
        if (shape[1] < 1 || shape[2] < 1)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: a %lldx%lld pool does not fit its input", i, (long long)k,
                            (long long)k);
        if ((status = shape_value(net, i + 1, 4, shape))) return status;
        const uint8_t *src = x->data;
        uint8_t *dst = y->data;
        for (int64_t b = 0; b < shape[0]; b++)
            for (int64_t r = 0; r < shape[1]; r++)
                for (int64_t q = 0; q < shape[2]; q++) {
                    uint8_t *d = dst + ((b * shape[1] + r) * shape[2] + q) * c;
                    memset(d, 0, (size_t)c);
                    for (int64_t dy = 0; dy < k; dy++)
                        for (int64_t dx = 0; dx < k; dx++) {
                            const uint8_t *v = src + ((b * x->shape[1] + r * st + dy) * x->shape[2] + q * st + dx) * c;
                            for (int64_t ch = 0; ch < c; ch++) d[ch] = v[ch] > d[ch] ? v[ch] : d[ch];
                        }
                }
        return PXQ_OK;
    }
    case PXQ_STEP_SUM_POOL: {
        if (!dims(x, 4, i)) return PXQ_ERROR_ARGUMENT;
        const int64_t pooled[2] = {x->shape[0], x->shape[3]};
        if ((status = shape_value(net, i + 1, 2, pooled))) return status;
        net->pool_count = x->shape[1] * x->shape[2];
        pxq_pool_params p = {.codes = buffer_of(x), .batch = x->shape[0], .positions = net->pool_count,
                             .channels = x->shape[3], .out = output_of(y), .threads = s->threads};
        return pxq_sum_pool(&p);
    }
    case PXQ_STEP_LINEAR_FLOAT: {  /* numpy's order of operations: (x as float32 * float32 scale) @ W.T + b */
        if (!dims(x, 2, i)) return PXQ_ERROR_ARGUMENT;
        if (x->shape[1] != s->cols || net->pool_count < 1)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: linear_float takes %lld pooled sums", i, (long long)s->cols);
        const int64_t logits[2] = {x->shape[0], s->rows};
        if ((status = shape_value(net, i + 1, 2, logits))) return status;
        const float scale = (float)(s->step / (double)net->pool_count);
        const int64_t *in = x->data;
        const float *w = s->weight.data, *bias = s->bias.data;
        float *out = y->data;
        for (int64_t b = 0; b < logits[0]; b++)
            for (int64_t r = 0; r < s->rows; r++) {
                float sum = 0;
                for (int64_t k = 0; k < s->cols; k++) sum += (float)in[b * s->cols + k] * scale * w[r * s->cols + k];
                out[b * s->rows + r] = sum + bias[r];
            }
        return PXQ_OK;
    }
    case PXQ_STEP_LINEAR: {
        if (!dims(x, 2, i)) return PXQ_ERROR_ARGUMENT;
        if (x->shape[1] != s->cols)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: linear takes %lld features, got %lld", i,
                            (long long)s->cols, (long long)x->shape[1]);
        const int64_t logits[2] = {x->shape[0], s->rows};
        if ((status = shape_value(net, i + 1, 2, logits))) return status;
        const int64_t *in = x->data;
        const int32_t *w = s->weight.data;
        int64_t *out = y->data;
        for (int64_t b = 0; b < logits[0]; b++)
            for (int64_t r = 0; r < s->rows; r++) {
                int64_t sum = 0;
                for (int64_t k = 0; k < s->cols; k++) sum += in[b * s->cols + k] * w[r * s->cols + k];
                out[b * s->rows + r] = sum;
            }
        return PXQ_OK;
    }
    }
    return pxq_fail(PXQ_ERROR_ARGUMENT, "net step %d: unknown op %d", i, (int)s->op);
}

int pxq_net_run(pxq_net *net, pxq_buffer images, int64_t batch, int64_t height, int64_t width, int64_t channels) {
    if (!net) return pxq_fail(PXQ_ERROR_ARGUMENT, "net: no net");
    if (batch < 1 || height < 1 || width < 1 || channels < 1 || !images.data || batch > INT32_MAX ||
        height > INT32_MAX || width > INT32_MAX || channels > INT32_MAX ||
        images.bytes != batch * height * width * channels)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net: images must be uint8 (batch, height, width, channels), %lld bytes",
                        (long long)images.bytes);
    net->ran = 0;
    net->pool_count = 0;
    net->values[0] = (value_t){.type = PXQ_UINT8, .ndim = 4, .shape = {batch, height, width, channels},
                               .data = (void *)images.data};
    for (int32_t i = 0; i < net->count; i++) {
        struct timespec t0, t1;
        if (net->profile) clock_gettime(CLOCK_MONOTONIC, &t0);
        int status = run_step(net, i);
        if (status) return status;
        if (net->profile) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            net->seconds[i] = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        }
    }
    net->ran = 1;
    return PXQ_OK;
}

int32_t pxq_net_steps(const pxq_net *net) { return net ? net->count : 0; }

int pxq_net_profile(pxq_net *net, int32_t profile) {
    if (!net) return pxq_fail(PXQ_ERROR_ARGUMENT, "net: no net");
    net->profile = profile != 0;
    return PXQ_OK;
}

int pxq_net_step_seconds(const pxq_net *net, double *seconds, int32_t steps) {
    if (!net || !seconds || steps != net->count || !net->ran)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net: step times need a finished run and one slot per step");
    memcpy(seconds, net->seconds, sizeof(double) * (size_t)steps);
    return PXQ_OK;
}

int pxq_net_step_kernel(const pxq_net *net, int32_t step, int32_t *kind, int32_t *planes, int32_t *bits) {
    if (!net || step < 0 || step >= net->count || !kind || !planes || !bits)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net: no step %d", (int)step);
    const pxq_step *s = &net->steps[step];
    *kind = s->op == PXQ_STEP_CONV ? s->conv.kind : -1;
    *planes = s->conv.input_planes, *bits = s->conv.weight_bits;
    return PXQ_OK;
}

int pxq_net_value(const pxq_net *net, int32_t index, pxq_value *value) {
    if (!net || !value || index < 0 || index > net->count || !net->ran)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "net: no value %d from a finished run", (int)index);
    const value_t *x = &net->values[index];
    *value = (pxq_value){.data = x->data, .type = x->type, .ndim = x->ndim};
    memcpy(value->shape, x->shape, sizeof x->shape);
    return PXQ_OK;
}

int64_t pxq_net_pool_count(const pxq_net *net) { return net ? net->pool_count : 0; }
