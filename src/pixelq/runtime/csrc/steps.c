/* A plan's node made into a net step (pxq_net_add_node, pixelq_kernels.h): each conv's kernel chosen
 * under the instruction set and its weights laid out for that kernel, once. The only place a
 * model's weights are laid out: pxq_load and the Python runtime both come here.
 *
 * Which kernel: a first conv over a lookup runs as table sums where the plan marks it so
 * (`table_sums`, fusion.mark_table_sums: its <= 16 channels' sums fit int16; the tables are built and
 * that checked here), else it packs its bit-planes through the lookup; another conv runs as dot products where
 * its plane pairs (input planes x weight bits) reach DOT_MIN_PAIRS, or 4 on layers of at least
 * DOT_WIDE_CHANNELS input channels (read off `python experiments/kernel_crossover.py` per build),
 * else as bit-planes. A grouped conv runs as the dense conv of its block-diagonal weight, as dot
 * products (the one kernel whose weights can be 0), where that kernel computes it exactly.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pixelq_kernels.h"

#define DOT_MIN_PAIRS 5
static const struct { const char *isa; int wide; } DOT_WIDE_CHANNELS[] = {
    /* the AVX-512 build without BITALG has no 16-channel lanes conv, so its W2A2 16-channel layers
     * are cheaper as dot products too */
    {"portable", 0}, {"avx2", 64}, {"avx512vpopcntdq", 1}, {"avx512bitalg", 32},
    /* not measured on ARM hardware: the rule of plane pairs alone */
    {"neon", 0}, {"neon-dotprod", 0}};

static int64_t padded(int64_t channels) { return (channels + 7) / 8 * 8; }

/* Bit-planes of the conv's input codes, signed ones shifted to start at 0. */
static int planes_of(const pxq_node *n) {
    const int64_t top = n->input_range[1] - (n->input_range[0] < 0 ? n->input_range[0] : 0);
    int bits = 0;
    while (bits < 62 && top >> bits) bits++;
    return bits > 1 ? bits : 1;
}

static int64_t count_of(const pxq_codes *t) {
    int64_t count = 1;
    for (int q = 0; q < t->ndim; q++) count *= t->shape[q];
    return count;
}

/* 1 when tensor t is there with exactly this shape. */
static int shaped(const pxq_codes *t, int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
    const int64_t want[4] = {a, b, c, d};
    if (!t->data || t->ndim != ndim) return 0;
    for (int q = 0; q < ndim; q++)
        if (t->shape[q] != want[q]) return 0;
    return 1;
}

/* Weight codes (O, kh, kw, I) -> window-row words (bits, kh, Kr, Opad): plane j of u = (code -
 * lowest) / stride, in row ky tap kx's channels at bits kx * 8 * ceil(I / 8) .. (kernels.c). */
static uint64_t *pack_planes(const pxq_node *n, int64_t *bytes) {
    const int64_t o = n->out_channels, k = n->kernel, ci = n->in_channels, J = n->weight_bits;
    const int64_t cb = (ci + 7) / 8, kr = (k * cb + 7) / 8, opad = padded(o);
    *bytes = J * k * kr * opad * 8;
    uint64_t *words = calloc((size_t)(J * k * kr * opad), 8);
    if (!words) return NULL;
    const int32_t *w = n->weight.data;
    for (int64_t oc = 0; oc < o; oc++)
        for (int64_t y = 0; y < k; y++)
            for (int64_t x = 0; x < k; x++)
                for (int64_t i = 0; i < ci; i++) {
                    const int64_t u = ((int64_t)w[((oc * k + y) * k + x) * ci + i] - n->weight_lowest) / n->weight_stride;
                    const int64_t bit = x * cb * 8 + i;
                    for (int64_t j = 0; j < J; j++)
                        if ((u >> j) & 1) words[((j * k + y) * kr + bit / 64) * opad + oc] |= (uint64_t)1 << (bit % 64);
                }
    return words;
}

/* Weight codes -> the dot-product layout (kh, kw, ceil(I / 4), Opad / 8, 8, 4) int8. */
static int8_t *pack_dot(const pxq_node *n, int64_t *bytes) {
    const int64_t o = n->out_channels, k = n->kernel, ci = n->in_channels, groups = (ci + 3) / 4, opad = padded(o);
    *bytes = k * k * groups * 4 * opad;
    int8_t *out = calloc((size_t)*bytes, 1);
    if (!out) return NULL;
    const int32_t *w = n->weight.data;
    for (int64_t oc = 0; oc < o; oc++)
        for (int64_t y = 0; y < k; y++)
            for (int64_t x = 0; x < k; x++)
                for (int64_t i = 0; i < ci; i++)
                    out[((((y * k + x) * groups + i / 4) * (opad / 8) + oc / 8) * 8 + oc % 8) * 4 + i % 4] =
                        (int8_t)w[((oc * k + y) * k + x) * ci + i];
    return out;
}

/* The first conv over a lookup as tables (256, kh * kw * colours, 16): per pixel value, tap and
 * colour, the <= 16 channels' sums of weight x code over the colour's d codes; int8 where the
 * entries fit, else int16. NULL where a window's sums would leave the kernel's int16 lanes (or the
 * conv has more than 16 channels, a residual add, a shifted input, no thresholds). */
static void *conv_table(const pxq_node *n, int64_t colours, int *entry_bytes, int64_t *bytes) {
    const int64_t o = n->out_channels, k = n->kernel, d = n->lut.shape[2], T = n->lut.shape[0];
    *entry_bytes = 0;
    if (o > 16 || !n->thresholds.data || n->residual_stride || n->input_shift) return NULL;
    const int32_t *w = n->weight.data, *lut = n->lut.data;
    const int64_t entries = 256 * k * k * colours * 16;
    int32_t *table = calloc((size_t)entries, 4);
    if (!table) return NULL;
    __int128 top = 0, lo = 0, hi = 0;  /* int32 codes: a product fits int64, a sum of d of them may not */
    for (int64_t v = 0; v < 256; v++)
        for (int64_t y = 0; y < k; y++)
            for (int64_t x = 0; x < k; x++)
                for (int64_t c = 0; c < colours; c++)
                    for (int64_t oc = 0; oc < o; oc++) {
                        __int128 sum = 0;
                        for (int64_t q = 0; q < d; q++)
                            sum += (int64_t)w[((oc * k + y) * k + x) * colours * d + c * d + q] *
                                   lut[((T == 1 ? 0 : c) * 256 + v) * d + q];
                        table[((v * k + y) * k + x) * colours * 16 + c * 16 + oc] = (int32_t)(sum > 32767 ? 32767 : sum < -32768 ? -32768 : sum);
                        top = (sum < 0 ? -sum : sum) > top ? (sum < 0 ? -sum : sum) : top;
                        lo = sum < lo ? sum : lo, hi = sum > hi ? sum : hi;
                    }
    if (top > 32000 || (int64_t)top * k * k * colours > 32000) {  /* int16 sums, room for the int16 threshold clamp */
        free(table);
        return NULL;
    }
    *entry_bytes = lo >= -128 && hi <= 127 ? 1 : 2;
    *bytes = entries * *entry_bytes;
    void *out = malloc((size_t)*bytes);
    for (int64_t q = 0; out && q < entries; q++) {
        if (*entry_bytes == 1) ((int8_t *)out)[q] = (int8_t)table[q];
        else ((int16_t *)out)[q] = (int16_t)table[q];
    }
    free(table);
    return out;
}

/* Whether dot products pay for the conv under `isa`: by the cost rule above. */
static int dot_pays(const pxq_node *n, const char *isa) {
    int wide = 0;
    for (size_t q = 0; q < sizeof DOT_WIDE_CHANNELS / sizeof DOT_WIDE_CHANNELS[0]; q++)
        if (!strcmp(DOT_WIDE_CHANNELS[q].isa, isa)) wide = DOT_WIDE_CHANNELS[q].wide;
    const int64_t pairs = planes_of(n) * n->weight_bits;
    return pairs >= DOT_MIN_PAIRS || (pairs == 4 && wide && n->in_channels >= wide);
}

/* Whether the dot-product kernel of `isa` computes the conv exactly: weight codes inside int8, for
 * VPMADDUBSW (AVX2 without VNNI, saturating int16 pairs) 2 x top code x |weight| <= 32767, and for
 * SDOT (signed bytes) codes below 128. */
static int dot_holds(const pxq_node *n, const char *isa) {
    const int planes = planes_of(n);
    const int32_t *w = n->weight.data;
    int64_t top = 0;
    for (int64_t q = 0; q < count_of(&n->weight); q++) {
        if (w[q] < -128 || w[q] > 127) return 0;
        top = llabs(w[q]) > top ? llabs(w[q]) : top;
    }
    const char *dot = pxq_dot_isa(isa);
    if (dot && !strcmp(dot, "neon-dotprod")) return (1 << planes) - 1 <= 127;
    return !dot || strcmp(dot, "avx2") || 2 * ((1 << planes) - 1) * top <= 32767;
}

/* What a step points to until pxq_net_add has copied it. */
typedef struct {
    void *items[16];
    int count;
} owned_t;

static void *own(owned_t *s, void *p) {
    if (p && s->count < 16) return s->items[s->count++] = p;
    free(p);
    return NULL;
}

/* A grouped conv (weight (O, k, k, I / groups)) as a dense one whose weight (O, k, k, I) is block
 * diagonal: output channel oc reads only its group's inputs, every other weight 0. Only the
 * dot-product kernel holds a 0 weight (a binary grid has none), so it runs as dot products, at
 * groups x the MACs of the grouped conv. The dense weight is owned by `s`; NULL when out of memory. */
static int32_t *dense_weight(const pxq_node *n, owned_t *s) {
    const int64_t o = n->out_channels, k = n->kernel, ci = n->in_channels, g = n->groups, per = ci / g;
    int32_t *w = own(s, calloc((size_t)(o * k * k * ci), 4));
    if (!w) return NULL;
    for (int64_t oc = 0; oc < o; oc++)
        for (int64_t t = 0; t < k * k; t++)
            for (int64_t i = 0; i < per; i++)
                w[(oc * k * k + t) * ci + oc / (o / g) * per + i] = n->weight.data[(oc * k * k + t) * per + i];
    return w;
}

static int conv_step(const pxq_node *given, const char *isa, int threads, pxq_step *step, owned_t *s) {
    pxq_node dense;
    const pxq_node *n = given;
    const int64_t shift = n->input_shift, o = n->out_channels, k = n->kernel;
    const int64_t lo = n->input_range[0], hi = n->input_range[1];
    if (hi + (lo < 0 ? -lo : 0) > 255)  /* fusion.has_kernel */
        return pxq_fail(PXQ_ERROR_UNSUPPORTED, "codes wider than a byte have no C kernel yet");
    if (n->groups > 1) {
        if (o < 1 || k < 1 || n->in_channels < 1)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: its attributes and its weight (O, k, k, I) disagree");
        if (n->lut.data || lo < 0 || n->in_channels % n->groups || o % n->groups ||
            !shaped(&n->weight, 4, o, k, k, n->in_channels / n->groups))
            return pxq_fail(PXQ_ERROR_UNSUPPORTED, "grouped convs over a lookup or signed codes have no C kernel yet");
        if (o > ((int64_t)1 << 28) / (k * k) / n->in_channels)  /* the dense weight: at most 1 GB of int32 */
            return pxq_fail(PXQ_ERROR_UNSUPPORTED, "this grouped conv is too large to run as a dense one");
        dense = *n;
        dense.groups = 1;
        dense.weight.data = dense_weight(n, s);
        dense.weight.shape[3] = n->in_channels;
        if (!dense.weight.data) return pxq_fail(PXQ_ERROR_MEMORY, "out of memory");
        n = &dense;
    }
    if (o < 1 || k < 1 || n->in_channels < 1 || n->stride < 1 || n->padding < 0 || shift < 0 || shift > 255 ||
        n->weight_bits < 1 || n->weight_bits > 8 || n->weight_stride < 1 ||
        !shaped(&n->weight, 4, o, k, k, n->in_channels))
        return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: its attributes and its weight (O, k, k, I) disagree");
    pxq_conv_params *c = &step->conv;
    c->kernel_h = c->kernel_w = (int32_t)k;
    c->stride = (int32_t)n->stride, c->pad = shift ? 0 : (int32_t)n->padding;
    c->out_channels = o, c->out_channels_padded = padded(o), c->threads = threads, c->isa = isa;
    c->channels = n->in_channels;
    step->input_shift = (int32_t)shift, step->shift_padding = shift ? (int32_t)n->padding : 0;
    if (n->thresholds.data) {
        const int64_t levels = n->qmax - n->qmin, opad = padded(o);
        if (n->qmin < 0 || n->qmax > 255 || !shaped(&n->direction, 1, o, 0, 0, 0) ||
            !shaped(&n->thresholds, 2, o, levels, 0, 0))
            return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: its thresholds must be (O, qmax - qmin), codes a byte");
        int8_t *dir = own(s, malloc((size_t)opad));
        int32_t *thr = own(s, calloc((size_t)(levels * opad > 0 ? levels * opad : 1), 4));
        if (!dir || !thr) return pxq_fail(PXQ_ERROR_MEMORY, "out of memory");
        for (int64_t q = 0; q < opad; q++) dir[q] = q < o ? (int8_t)n->direction.data[q] : 1;
        for (int64_t l = 0; l < levels; l++)
            for (int64_t q = 0; q < o; q++) thr[l * opad + q] = n->thresholds.data[q * levels + l];
        c->direction = (pxq_buffer){dir, opad}, c->thresholds = (pxq_buffer){thr, levels * opad * 4};
        c->levels = (int32_t)levels, c->qmin = (int32_t)n->qmin;
    }
    if (n->residual_stride) {
        if (n->residual_stride < 0 || n->residual_qmax < 0 || n->residual_qmax > 255 || n->residual_shift < 0 ||
            n->residual_shift > 255)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: a residual add needs qmax and shift in 0 .. 255");
        c->residual_stride = (int32_t)n->residual_stride, c->residual_qmax = (int32_t)n->residual_qmax;
        c->residual_shift = (int32_t)n->residual_shift;
    }
    if (n->offset.data) {
        if (!shaped(&n->offset, 1, o, 0, 0, 0)) return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: its offset must be (O,)");
        step->offset = (pxq_buffer){n->offset.data, o * 4};
    }
    int64_t bytes = 0;
    if (n->lut.data) {
        const int64_t d = n->lut.ndim == 3 ? n->lut.shape[2] : 0, T = n->lut.shape[0];
        const int64_t colours = d ? n->in_channels / d : 0;
        if (!d || colours * d != n->in_channels || n->lut.shape[1] != 256 || (T != 1 && T != colours))
            return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: its lookup must be (1 or colours, 256, d)");
        c->channels = colours;
        if (n->table_sums) {  /* the plan's choice; its tables must hold the sums */
            int entry;
            void *table = own(s, conv_table(n, colours, &entry, &bytes));
            if (!table)
                return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: the plan runs it as table sums, but they do not fit the "
                                "kernel (more than 16 channels, no thresholds, or sums beyond int16)");
            c->kind = PXQ_CONV_TABLE, c->weights = (pxq_buffer){table, bytes}, c->table_entry_bytes = entry;
            return PXQ_OK;
        }
        const int planes = planes_of(n);
        uint64_t *bits = own(s, calloc((size_t)(T * 256 * planes), 8));
        int32_t *sums = own(s, calloc((size_t)(T * 256), 4));
        uint8_t *border = shift ? own(s, malloc((size_t)colours)) : NULL;
        if (!bits || !sums || (shift && !border)) return pxq_fail(PXQ_ERROR_MEMORY, "out of memory");
        const int32_t *codes = n->lut.data;
        if (d > 64) return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: a lookup conv packs at most 64 codes per pixel");
        for (int64_t t = 0; t < T; t++)
            for (int64_t v = 0; v < 256; v++)
                for (int64_t q = 0; q < d; q++) {
                    const int64_t code = codes[(t * 256 + v) * d + q] + shift;
                    if (code < 0 || code >> planes)
                        return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: its lookup gives codes outside its input range");
                    sums[t * 256 + v] += (int32_t)code;  /* <= 64 codes of <= 8 bits */
                    for (int p = 0; p < planes; p++)
                        if ((code >> p) & 1) bits[(t * 256 + v) * planes + p] |= (uint64_t)1 << q;
                }
        if (shift) {  /* the padding: for each colour, the first pixel value whose codes are all 0 */
            for (int64_t ch = 0; ch < colours; ch++) {
                const int64_t t = T == 1 ? 0 : ch;
                int found = -1;
                for (int v = 0; v < 256 && found < 0; v++) {
                    int zero = 1;
                    for (int64_t q = 0; q < d; q++) zero &= codes[(t * 256 + v) * d + q] == 0;
                    if (zero) found = v;
                }
                if (found < 0) return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: no pixel value looks up codes all 0");
                border[ch] = (uint8_t)found;
            }
            step->shift_border = (pxq_buffer){border, colours};
        }
        c->kind = PXQ_CONV_LOOKUP, c->lookup_bits = (pxq_buffer){bits, T * 256 * planes * 8};
        c->lookup_sums = (pxq_buffer){sums, T * 256 * 4}, c->lookup_tables = (int32_t)T, c->lookup_depth = (int32_t)d;
    } else {
        if (shift) {
            uint8_t *border = own(s, malloc((size_t)c->channels));
            if (!border) return pxq_fail(PXQ_ERROR_MEMORY, "out of memory");
            memset(border, (int)shift, (size_t)c->channels);
            step->shift_border = (pxq_buffer){border, c->channels};
        }
        if (n != given && !dot_holds(n, isa))
            return pxq_fail(PXQ_ERROR_UNSUPPORTED, "this grouped conv's dot products do not fit this instruction set");
        if (n != given || (dot_pays(n, isa) && dot_holds(n, isa))) {
            int8_t *dot = own(s, pack_dot(n, &bytes));
            if (!dot) return pxq_fail(PXQ_ERROR_MEMORY, "out of memory");
            c->kind = PXQ_CONV_DOT, c->weights = (pxq_buffer){dot, bytes};
            return PXQ_OK;
        }
        c->kind = PXQ_CONV_PLANES;
    }
    uint64_t *words = own(s, pack_planes(n, &bytes));
    if (!words) return pxq_fail(PXQ_ERROR_MEMORY, "out of memory");
    c->weights = (pxq_buffer){words, bytes}, c->input_planes = planes_of(n);
    c->weight_bits = (int32_t)n->weight_bits, c->weight_lowest = (int32_t)n->weight_lowest;
    c->weight_stride = (int32_t)n->weight_stride;
    return PXQ_OK;
}

static int other_step(const pxq_node *n, int threads, pxq_step *step, owned_t *s) {
    switch (n->op) {
    case PXQ_NODE_LUT: {
        const pxq_codes *lut = &n->lut;
        if (n->qmin < 0 || n->qmax > 255)
            return pxq_fail(PXQ_ERROR_UNSUPPORTED, "lookups of codes beyond a byte have no C kernel yet");
        if (!lut->data || lut->ndim != 3 || lut->shape[1] != 256 || lut->shape[2] < 1)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "lookup: its tables must be (1 or channels, 256, d)");
        const int64_t count = count_of(lut);
        uint8_t *tables = own(s, malloc((size_t)count));
        if (!tables) return pxq_fail(PXQ_ERROR_MEMORY, "out of memory");
        for (int64_t q = 0; q < count; q++) {
            if (lut->data[q] < 0 || lut->data[q] > 255)
                return pxq_fail(PXQ_ERROR_ARGUMENT, "lookup: a code of its tables is not a byte");
            tables[q] = (uint8_t)lut->data[q];
        }
        step->op = PXQ_STEP_LOOKUP;
        step->lookup = (pxq_lookup_params){.tables = {tables, count}, .tables_count = (int32_t)lut->shape[0],
                                           .depth = (int32_t)lut->shape[2], .threads = threads};
        return PXQ_OK;
    }
    case PXQ_NODE_THRESHOLD: {
        const int64_t c = n->direction.data ? n->direction.shape[0] : 0, levels = n->qmax - n->qmin;
        if (n->qmin < 0 || n->qmax > 255)
            return pxq_fail(PXQ_ERROR_UNSUPPORTED, "thresholds to codes beyond a byte have no C kernel yet");
        if (!shaped(&n->direction, 1, c, 0, 0, 0) || !shaped(&n->thresholds, 2, c, levels, 0, 0))
            return pxq_fail(PXQ_ERROR_ARGUMENT, "threshold: needs direction (C,) and thresholds (C, qmax - qmin)");
        int8_t *dir = own(s, malloc((size_t)(c ? c : 1)));
        if (!dir) return pxq_fail(PXQ_ERROR_MEMORY, "out of memory");
        for (int64_t q = 0; q < c; q++) dir[q] = (int8_t)n->direction.data[q];
        step->op = PXQ_STEP_THRESHOLD;
        step->threshold = (pxq_threshold_params){.direction = {dir, c}, .thresholds = {n->thresholds.data, c * levels * 4},
                                                 .levels = (int32_t)levels, .qmin = (int32_t)n->qmin, .threads = threads};
        return PXQ_OK;
    }
    case PXQ_NODE_ADD_CLIP:
        step->op = PXQ_STEP_ADD_CLIP, step->qmin = (int32_t)n->qmin, step->qmax = (int32_t)n->qmax;
        step->shift = (int32_t)n->shift;
        return PXQ_OK;
    case PXQ_NODE_SUBSAMPLE_PAD:
        step->op = PXQ_STEP_SUBSAMPLE_PAD, step->stride = (int32_t)n->stride, step->extra_channels = (int32_t)n->extra_channels;
        return PXQ_OK;
    case PXQ_NODE_MAX_POOL:
        step->op = PXQ_STEP_MAX_POOL, step->kernel = (int32_t)n->kernel, step->stride = (int32_t)n->stride;
        return PXQ_OK;
    case PXQ_NODE_SUM_POOL:
        step->op = PXQ_STEP_SUM_POOL, step->threads = threads;
        return PXQ_OK;
    case PXQ_NODE_LINEAR:
        if (!shaped(&n->weight, 2, n->out_channels, n->in_channels, 0, 0))
            return pxq_fail(PXQ_ERROR_ARGUMENT, "linear: its weight must be (out_channels, in_channels)");
        step->op = PXQ_STEP_LINEAR, step->rows = n->out_channels, step->cols = n->in_channels;
        step->weight = (pxq_buffer){n->weight.data, step->rows * step->cols * 4};
        return PXQ_OK;
    case PXQ_NODE_LINEAR_FLOAT: {
        const pxq_floats *w = &n->float_weight, *b = &n->bias;
        if (!w->data || w->ndim != 2 || !b->data || b->ndim != 1 || b->shape[0] != w->shape[0] || !(n->step > 0))
            return pxq_fail(PXQ_ERROR_ARGUMENT, "linear_float: needs a float weight (classes, C), bias (classes) and step");
        step->op = PXQ_STEP_LINEAR_FLOAT, step->rows = w->shape[0], step->cols = w->shape[1], step->step = n->step;
        step->weight = (pxq_buffer){w->data, step->rows * step->cols * 4};
        step->bias = (pxq_buffer){b->data, step->rows * 4};
        return PXQ_OK;
    }
    default:
        return pxq_fail(PXQ_ERROR_UNSUPPORTED, "op %d has no C kernel yet", (int)n->op);
    }
}

int32_t pxq_net_add_node(pxq_net *net, const pxq_node *node, const char *isa, int32_t threads) {
    if (!net || !node) return pxq_fail(PXQ_ERROR_ARGUMENT, "no net or no node"), -1;
    if (!isa) isa = pxq_best_isa();
    if (!pxq_dot_isa(isa)) return pxq_fail(PXQ_ERROR_ISA, "instruction set %s is not available on this CPU", isa), -1;
    if (threads < 1) return pxq_fail(PXQ_ERROR_ARGUMENT, "threads must be >= 1"), -1;
    pxq_step step = {.inputs = {node->inputs[0], node->inputs[1]}};
    owned_t s = {.count = 0};
    const int conv = node->op == PXQ_NODE_CONV || node->op == PXQ_NODE_FUSED_CONV;
    int32_t status = conv ? conv_step(node, isa, threads, &step, &s) : other_step(node, threads, &step, &s);
    const int32_t index = status ? -1 : pxq_net_add(net, &step);
    for (int q = 0; q < s.count; q++) free(s.items[q]);
    return index;
}
