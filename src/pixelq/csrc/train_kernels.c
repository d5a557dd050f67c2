/* pixelq training kernels (float32): the first conv over a pixel embedding as table sums, and the
 * mid-tread activation quantizer in one pass each way. Python side: pixelq.train_kernels.
 *
 * A pixel embedding feeds the first conv C * d channels, d per colour, each a function of one
 * pixel value. The conv is linear, so its output is a sum over taps of per-(pixel value, tap)
 * vectors of output channels:
 *
 *   out[n, oy, ox, o] = sum over the taps (ky, kx, ch) inside the image of T[tap, image[n, y, x, ch], o]
 *   T[tap, v, o]      = sum_j W[o, ch * d + j, ky, kx] E_ch[v, j],   tap = (ky * KW + kx) * C + ch
 *
 * (zero padding pads the embedded image with zeros, so a tap outside the image adds nothing).
 * PyTorch builds T from the quantized weights and table (a small einsum, which also carries the
 * gradient back to both); these kernels do the rest: the forward gathers, and the backward
 * scatters the output gradient into dL/dT. That replaces a conv over C * d channels, its weight
 * and input gradients, and the per-row sums of the embedding's gradient with 27 vector adds per
 * output position for a 3x3 kernel over RGB, forward and backward alike.
 *
 * Layouts: image (N, H, W, C) uint8; T and dL/dT (KH * KW * C, 256, OP) float32; out and its
 * gradient (N, HO, WO, OP) float32; OP = O rounded up to a multiple of 16, the columns past O zero.
 * The backward sums into one private table per thread and then adds those up in thread order: the
 * result depends on the thread count, not on scheduling.
 *
 * The activation quantizer y = round(clip(x, 0, m) * n / m) * m / n (n = 2^bits - 1, ties to even)
 * runs after every conv of a quantized network. PyTorch takes four passes over the tensor for it
 * and keeps x for the backward; here one pass writes y and a byte mask [0 < x < m], and the
 * backward is one pass of grad * mask. The arithmetic is PyTorch's, operation for operation in
 * float32, so the values are the same to the bit. A residual block ends in two of them around an
 * add, out = Q(Q(y) + x) on one grid: that too is one pass each way (two mask bits per byte).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "buffers.h"

typedef struct {
    ssize N, H, W, C, O, HO, WO;
    int KH, KW, SY, SX, PY, PX;
} geom_t;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

static inline ssize taps(const geom_t *g) { return (ssize)g->KH * g->KW * g->C; }

/* Rows of T, out and their gradients hold OP = O rounded up to a multiple of LANES floats (zeros
 * past O), so every row update is whole vectors. */
#define LANES 16
static inline ssize padded(ssize O) { return (O + LANES - 1) / LANES * LANES; }

/* An output row (n, oy) tap by tap: for each tap, every position of the row updates its row of the
 * tap's (256, OP) slice of T. The slice (16 KiB at 16 channels) and the row of positions (2 KiB at
 * 32 x 16) stay in L1, where a random row per position would come from L2; the backward adds
 * grad into the slice instead of adding the slice into out. A position's taps are summed in
 * order (ky, kx, ch) both ways. */
#define FOR_EACH_TAP_OF_ROW(g, image, n, oy, BODY)                                                        \
    for (int ky = 0; ky < (g)->KH; ky++) {                                                                 \
        const ssize y = (oy) * (g)->SY - (g)->PY + ky;                                                     \
        if (y < 0 || y >= (g)->H) continue;                                                                \
        for (int kx = 0; kx < (g)->KW; kx++) {                                                             \
            /* the positions whose tap (ky, kx) lies inside the image: ox in [lo, hi) */                  \
            const ssize first = (g)->PX - kx, last = (g)->W - 1 + (g)->PX - kx;                            \
            const ssize lo = first > 0 ? (first + (g)->SX - 1) / (g)->SX : 0;                              \
            const ssize hi = last < 0 ? 0 : (last / (g)->SX + 1 < (g)->WO ? last / (g)->SX + 1 : (g)->WO);   \
            for (ssize ch = 0; ch < (g)->C; ch++) {                                                        \
                const ssize tap = (ky * (g)->KW + kx) * (g)->C + ch;                                       \
                const uint8_t *line = (image) + ((n) * (g)->H + y) * (g)->W * (g)->C + ch;                  \
                for (ssize ox = lo; ox < hi; ox++) {                                                       \
                    const ssize v = line[(ox * (g)->SX - first) * (g)->C];                                 \
                    BODY                                                                                   \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }

/* dst[0 .. OP) += src[0 .. OP): one whole vector at 16 channels, the common case, else a loop of them. */
static inline __attribute__((always_inline)) void add_row(float *restrict dst, const float *restrict src, ssize OP) {
    if (OP == LANES) {
        for (int k = 0; k < LANES; k++) dst[k] += src[k];
        return;
    }
    for (ssize k0 = 0; k0 < OP; k0 += LANES)
        for (int k = 0; k < LANES; k++) dst[k0 + k] += src[k0 + k];
}

CLONES static void forward_row(const geom_t *g, const uint8_t *image, const float *restrict table,
                               float *restrict out, ssize n, ssize oy) {
    const ssize OP = padded(g->O);
    float *restrict row = out + (n * g->HO + oy) * g->WO * OP;
    memset(row, 0, (size_t)(g->WO * OP) * sizeof(float));
    FOR_EACH_TAP_OF_ROW(g, image, n, oy, { add_row(row + ox * OP, table + (tap * 256 + v) * OP, OP); })
}

CLONES static void backward_row(const geom_t *g, const uint8_t *image, const float *restrict grad,
                                float *restrict acc, ssize n, ssize oy) {
    const ssize OP = padded(g->O);
    const float *restrict row = grad + (n * g->HO + oy) * g->WO * OP;
    FOR_EACH_TAP_OF_ROW(g, image, n, oy, { add_row(acc + (tap * 256 + v) * OP, row + ox * OP, OP); })
}

/* The rows of the quantizer's work: blocks of this many elements per loop iteration; below
 * PARALLEL_MIN elements one thread does it all (waking a second costs more than it saves, and far
 * more when another process holds the other core). */
#define BLOCK 4096
#define PARALLEL_MIN 65536

CLONES static void mid_tread_block(const float *x, float *y, uint8_t *mask, ssize count, float low, float max,
                                   float up, float down) {
    for (ssize i = 0; i < count; i++) {
        const float v = x[i];
        const float c = v < low ? low : (v > max ? max : v);
        y[i] = rintf(c * up) * down;
        mask[i] = (v > low) & (v < max);
    }
}

/* A residual block's end, out = Q(Q'(y) + x) on one grid, Q' clipping to [low, m] (low = 0, or -m
 * for a signed branch) and Q to [0, m]: bit 0 of the mask is y's [low < y < m], bit 1 the sum's
 * [0 < s < m]. */
CLONES static void mid_tread_add_block(const float *y, const float *x, float *out, uint8_t *mask, ssize count,
                                       float low, float max, float up, float down) {
    for (ssize i = 0; i < count; i++) {
        const float v = y[i];
        const float s = rintf((v < low ? low : (v > max ? max : v)) * up) * down + x[i];
        out[i] = rintf((s < 0.0f ? 0.0f : (s > max ? max : s)) * up) * down;
        mask[i] = ((v > low) & (v < max)) | (((s > 0.0f) & (s < max)) << 1);
    }
}

CLONES static void masked_add_block(const float *grad, const uint8_t *mask, float *grad_y, float *grad_x,
                                    ssize count) {
    for (ssize i = 0; i < count; i++) {
        grad_x[i] = mask[i] & 2 ? grad[i] : 0.0f;
        grad_y[i] = mask[i] == 3 ? grad[i] : 0.0f;
    }
}

CLONES static void masked_block(const float *grad, const uint8_t *mask, float *out, ssize count) {
    for (ssize i = 0; i < count; i++) out[i] = mask[i] ? grad[i] : 0.0f;
}

static int geometry_ok(const geom_t *g, int threads) {
    if (g->N < 1 || g->H < 1 || g->W < 1 || g->C < 1 || g->O < 1 || g->KH < 1 || g->KW < 1 || g->SY < 1 ||
        g->SX < 1 || g->PY < 0 || g->PX < 0 || threads < 1 || g->HO != (g->H + 2 * g->PY - g->KH) / g->SY + 1 ||
        g->WO != (g->W + 2 * g->PX - g->KW) / g->SX + 1 || g->HO < 1 || g->WO < 1) {
        PyErr_SetString(PyExc_ValueError, "embedding conv: inconsistent geometry");
        return 0;
    }
    return 1;
}

#define GEOMETRY_FORMAT "nnnnnnniiiiii"
#define GEOMETRY_ARGS(g) &g.N, &g.H, &g.W, &g.C, &g.O, &g.HO, &g.WO, &g.KH, &g.KW, &g.SY, &g.SX, &g.PY, &g.PX

/* The buffers both embedding-conv calls take: (image, table, out) forward, (image, grad, out)
 * backward, each checked against the geometry; on a mismatch, ValueError and 0. */
static int conv_buffers_ok(const geom_t *g, int threads, Py_buffer *image, Py_buffer *in, const char *in_name,
                           ssize in_bytes, Py_buffer *out, ssize out_bytes) {
    return geometry_ok(g, threads) && want(image, g->N * g->H * g->W * g->C, "image") && want(in, in_bytes, in_name) &&
           want(out, out_bytes, "out");
}

static void release(Py_buffer *a, Py_buffer *b, Py_buffer *c) {
    PyBuffer_Release(a);
    PyBuffer_Release(b);
    PyBuffer_Release(c);
}

static PyObject *py_embedding_conv(PyObject *self, PyObject *args) {
    Py_buffer image, table, out;
    geom_t g;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*w*" GEOMETRY_FORMAT "i", &image, &table, &out, GEOMETRY_ARGS(g), &threads))
        return NULL;
    PyObject *ret = NULL;
    if (conv_buffers_ok(&g, threads, &image, &table, "table", 256 * taps(&g) * padded(g.O) * 4, &out,
                        g.N * g.HO * g.WO * padded(g.O) * 4)) {
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (ssize r = 0; r < g.N * g.HO; r++) forward_row(&g, image.buf, table.buf, out.buf, r / g.HO, r % g.HO);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    release(&image, &table, &out);
    return ret;
}

static PyObject *py_embedding_conv_backward(PyObject *self, PyObject *args) {
    Py_buffer image, grad, out;
    geom_t g;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*w*" GEOMETRY_FORMAT "i", &image, &grad, &out, GEOMETRY_ARGS(g), &threads))
        return NULL;
    PyObject *ret = NULL;
    const ssize size = 256 * taps(&g) * padded(g.O);
    float *priv = NULL;
    if (conv_buffers_ok(&g, threads, &image, &grad, "grad", g.N * g.HO * g.WO * padded(g.O) * 4, &out, size * 4)) {
        if (g.N * g.HO < threads) threads = (int)(g.N * g.HO);
        priv = calloc((size_t)threads * size, sizeof(float));
        if (priv == NULL) PyErr_NoMemory();
    }
    if (priv != NULL) {
        float *sum = out.buf;
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel num_threads(threads)
        {
#ifdef _OPENMP
            float *acc = priv + (ssize)omp_get_thread_num() * size;
#else
            float *acc = priv;
#endif
            #pragma omp for schedule(static)
            for (ssize r = 0; r < g.N * g.HO; r++) backward_row(&g, image.buf, grad.buf, acc, r / g.HO, r % g.HO);
            #pragma omp for schedule(static)
            for (ssize i = 0; i < size; i++) {
                float s = 0.0f;
                for (int t = 0; t < threads; t++) s += priv[t * size + i];
                sum[i] = s;
            }
        }
        Py_END_ALLOW_THREADS
        free(priv);
        ret = Py_None;
        Py_INCREF(ret);
    }
    release(&image, &grad, &out);
    return ret;
}

static PyObject *py_mid_tread(PyObject *self, PyObject *args) {
    Py_buffer x, y, mask;
    float low, max, up, down;
    int threads;
    if (!PyArg_ParseTuple(args, "y*w*w*ffffi", &x, &y, &mask, &low, &max, &up, &down, &threads)) return NULL;
    PyObject *ret = NULL;
    const ssize count = x.len / 4;
    if (threads < 1) {
        PyErr_Format(PyExc_ValueError, "mid_tread: threads must be >= 1, got %d", threads);
    } else if (x.len % 4 == 0 && want(&y, x.len, "y") && want(&mask, count, "mask")) {
        const float *xs = x.buf;
        float *ys = y.buf;
        uint8_t *ms = mask.buf;
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for num_threads(threads) schedule(static) if(count >= PARALLEL_MIN)
        for (ssize b = 0; b < count; b += BLOCK)
            mid_tread_block(xs + b, ys + b, ms + b, count - b < BLOCK ? count - b : BLOCK, low, max, up, down);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "mid_tread: x must hold float32 values");
    }
    release(&x, &y, &mask);
    return ret;
}

static PyObject *py_masked(PyObject *self, PyObject *args) {
    Py_buffer grad, mask, out;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*w*i", &grad, &mask, &out, &threads)) return NULL;
    PyObject *ret = NULL;
    const ssize count = mask.len;
    if (threads < 1) {
        PyErr_Format(PyExc_ValueError, "masked: threads must be >= 1, got %d", threads);
    } else if (want(&grad, count * 4, "grad") && want(&out, count * 4, "out")) {
        const float *gs = grad.buf;
        const uint8_t *ms = mask.buf;
        float *os = out.buf;
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for num_threads(threads) schedule(static) if(count >= PARALLEL_MIN)
        for (ssize b = 0; b < count; b += BLOCK) masked_block(gs + b, ms + b, os + b, count - b < BLOCK ? count - b : BLOCK);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    release(&grad, &mask, &out);
    return ret;
}

static PyObject *py_mid_tread_add(PyObject *self, PyObject *args) {
    Py_buffer y, x, out, mask;
    float low, max, up, down;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*w*w*ffffi", &y, &x, &out, &mask, &low, &max, &up, &down, &threads)) return NULL;
    PyObject *ret = NULL;
    const ssize count = mask.len;
    if (threads < 1) {
        PyErr_Format(PyExc_ValueError, "mid_tread_add: threads must be >= 1, got %d", threads);
    } else if (want(&y, count * 4, "y") && want(&x, count * 4, "x") && want(&out, count * 4, "out")) {
        const float *ys = y.buf, *xs = x.buf;
        float *os = out.buf;
        uint8_t *ms = mask.buf;
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for num_threads(threads) schedule(static) if(count >= PARALLEL_MIN)
        for (ssize b = 0; b < count; b += BLOCK)
            mid_tread_add_block(ys + b, xs + b, os + b, ms + b, count - b < BLOCK ? count - b : BLOCK, low, max, up, down);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&y);
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    PyBuffer_Release(&mask);
    return ret;
}

static PyObject *py_masked_add(PyObject *self, PyObject *args) {
    Py_buffer grad, mask, grad_y, grad_x;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*w*w*i", &grad, &mask, &grad_y, &grad_x, &threads)) return NULL;
    PyObject *ret = NULL;
    const ssize count = mask.len;
    if (threads < 1) {
        PyErr_Format(PyExc_ValueError, "masked_add: threads must be >= 1, got %d", threads);
    } else if (want(&grad, count * 4, "grad") && want(&grad_y, count * 4, "grad_y") &&
               want(&grad_x, count * 4, "grad_x")) {
        const float *gs = grad.buf;
        const uint8_t *ms = mask.buf;
        float *gy = grad_y.buf, *gx = grad_x.buf;
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for num_threads(threads) schedule(static) if(count >= PARALLEL_MIN)
        for (ssize b = 0; b < count; b += BLOCK)
            masked_add_block(gs + b, ms + b, gy + b, gx + b, count - b < BLOCK ? count - b : BLOCK);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&grad);
    PyBuffer_Release(&mask);
    PyBuffer_Release(&grad_y);
    PyBuffer_Release(&grad_x);
    return ret;
}

static PyMethodDef methods[] = {
    {"embedding_conv", py_embedding_conv, METH_VARARGS,
     "embedding_conv(image, table, out, N, H, W, C, O, HO, WO, KH, KW, SY, SX, PY, PX, threads): "
     "out[n, oy, ox] = sum over the taps inside the image of table[tap, pixel value]"},
    {"embedding_conv_backward", py_embedding_conv_backward, METH_VARARGS,
     "embedding_conv_backward(image, grad, out, <geometry>, threads): out = dL/dtable given dL/dout "
     "(table columns padded to a multiple of 16)"},
    {"mid_tread", py_mid_tread, METH_VARARGS,
     "mid_tread(x, y, mask, low, max, up, down, threads): y = rint(clip(x, low, max) * up) * down, "
     "mask = [low < x < max]"},
    {"masked", py_masked, METH_VARARGS, "masked(grad, mask, out, threads): out = grad where mask else 0"},
    {"mid_tread_add", py_mid_tread_add, METH_VARARGS,
     "mid_tread_add(y, x, out, mask, low, max, up, down, threads): out = Q(Q'(y) + x), Q the mid-tread "
     "quantizer on [0, max], Q' on [low, max]; mask bit 0 = [low < y < max], bit 1 = [0 < Q'(y) + x < max]"},
    {"masked_add", py_masked_add, METH_VARARGS,
     "masked_add(grad, mask, grad_y, grad_x, threads): the gradients of mid_tread_add's y and x"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_train_kernels", "pixelq training kernels", -1, methods};

PyMODINIT_FUNC PyInit__train_kernels(void) { return PyModule_Create(&module); }
