/* pixelq training kernels (float32): the first conv over a pixel embedding as table sums, and the
 * mid-tread activation quantizer in one pass each way.
 *
 * A pixel embedding feeds the first conv C * d channels, d per colour, each a function of one
 * pixel value. The conv is linear, so its output is a sum over taps of per-(pixel value, tap)
 * vectors of output channels:
 *
 *   out[n, oy, ox, o] = sum over the taps (ky, kx, ch) inside the image of T[image[n, y, x, ch], tap, o]
 *   T[v, tap, o]      = sum_j W[o, ch * d + j, ky, kx] E_ch[v, j],   tap = (ky * KW + kx) * C + ch
 *
 * (zero padding pads the embedded image with zeros, so a tap outside the image adds nothing).
 * PyTorch builds T from the quantized weights and table (a small einsum, which also carries the
 * gradient back to both); these kernels do the rest: the forward gathers, and the backward
 * scatters the output gradient into dL/dT. That replaces a conv over C * d channels, its weight
 * and input gradients, and the per-row sums of the embedding's gradient with 27 vector adds per
 * output position for a 3x3 kernel over RGB, forward and backward alike.
 *
 * Layouts: image (N, H, W, C) uint8; T and dL/dT (256, KH * KW * C, O) float32; out and its
 * gradient (N, HO, WO, O) float32. The backward sums into one private table per thread and then
 * adds those up in thread order: the result depends on the thread count, not on scheduling.
 *
 * The activation quantizer y = round(clip(x, 0, m) * n / m) * m / n (n = 2^bits - 1, ties to even)
 * runs after every conv of a quantized network. PyTorch takes four passes over the tensor for it
 * and keeps x for the backward; here one pass writes y and a byte mask [0 < x < m], and the
 * backward is one pass of grad * mask. The arithmetic is PyTorch's, operation for operation in
 * float32, so the values are the same to the bit.
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

typedef Py_ssize_t ssize;

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

/* One output row (n, oy): each position's O sums, tap by tap. */
CLONES static void forward_row(const geom_t *g, const uint8_t *image, const float *table, float *out, ssize n,
                               ssize oy) {
    const ssize T = taps(g), O = g->O;
    for (ssize ox = 0; ox < g->WO; ox++) {
        float *o = out + ((n * g->HO + oy) * g->WO + ox) * O;
        for (ssize k = 0; k < O; k++) o[k] = 0.0f;
        for (int ky = 0; ky < g->KH; ky++) {
            const ssize y = oy * g->SY - g->PY + ky;
            if (y < 0 || y >= g->H) continue;
            for (int kx = 0; kx < g->KW; kx++) {
                const ssize x = ox * g->SX - g->PX + kx;
                if (x < 0 || x >= g->W) continue;
                const uint8_t *px = image + ((n * g->H + y) * g->W + x) * g->C;
                const ssize tap = (ky * g->KW + kx) * g->C;
                for (ssize ch = 0; ch < g->C; ch++) {
                    const float *t = table + ((ssize)px[ch] * T + tap + ch) * O;
                    for (ssize k = 0; k < O; k++) o[k] += t[k];
                }
            }
        }
    }
}

/* One output row's gradient scattered into a (private) dL/dT. */
CLONES static void backward_row(const geom_t *g, const uint8_t *image, const float *grad, float *acc, ssize n,
                                ssize oy) {
    const ssize T = taps(g), O = g->O;
    for (ssize ox = 0; ox < g->WO; ox++) {
        const float *d = grad + ((n * g->HO + oy) * g->WO + ox) * O;
        for (int ky = 0; ky < g->KH; ky++) {
            const ssize y = oy * g->SY - g->PY + ky;
            if (y < 0 || y >= g->H) continue;
            for (int kx = 0; kx < g->KW; kx++) {
                const ssize x = ox * g->SX - g->PX + kx;
                if (x < 0 || x >= g->W) continue;
                const uint8_t *px = image + ((n * g->H + y) * g->W + x) * g->C;
                const ssize tap = (ky * g->KW + kx) * g->C;
                for (ssize ch = 0; ch < g->C; ch++) {
                    float *t = acc + ((ssize)px[ch] * T + tap + ch) * O;
                    for (ssize k = 0; k < O; k++) t[k] += d[k];
                }
            }
        }
    }
}

/* The rows of the quantizer's work: blocks of this many elements per loop iteration. */
#define BLOCK 4096

CLONES static void mid_tread_block(const float *x, float *y, uint8_t *mask, ssize count, float max, float up,
                                   float down) {
    for (ssize i = 0; i < count; i++) {
        const float v = x[i];
        const float c = v < 0.0f ? 0.0f : (v > max ? max : v);
        y[i] = rintf(c * up) * down;
        mask[i] = (v > 0.0f) & (v < max);
    }
}

CLONES static void masked_block(const float *grad, const uint8_t *mask, float *out, ssize count) {
    for (ssize i = 0; i < count; i++) out[i] = mask[i] ? grad[i] : 0.0f;
}

static int want(Py_buffer *b, ssize bytes, const char *name) {
    if (b->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer has %zd bytes, expected %zd", name, b->len, bytes);
        return 0;
    }
    return 1;
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

static PyObject *py_embedding_conv(PyObject *self, PyObject *args) {
    Py_buffer image, table, out;
    geom_t g;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*w*" GEOMETRY_FORMAT "i", &image, &table, &out, GEOMETRY_ARGS(g), &threads))
        return NULL;
    PyObject *ret = NULL;
    if (geometry_ok(&g, threads) && want(&image, g.N * g.H * g.W * g.C, "image") &&
        want(&table, 256 * taps(&g) * g.O * 4, "table") && want(&out, g.N * g.HO * g.WO * g.O * 4, "out")) {
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (ssize r = 0; r < g.N * g.HO; r++) forward_row(&g, image.buf, table.buf, out.buf, r / g.HO, r % g.HO);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&image);
    PyBuffer_Release(&table);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_embedding_conv_backward(PyObject *self, PyObject *args) {
    Py_buffer image, grad, out;
    geom_t g;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*w*" GEOMETRY_FORMAT "i", &image, &grad, &out, GEOMETRY_ARGS(g), &threads))
        return NULL;
    PyObject *ret = NULL;
    const ssize size = 256 * taps(&g) * g.O;
    float *priv = NULL;
    if (geometry_ok(&g, threads) && want(&image, g.N * g.H * g.W * g.C, "image") &&
        want(&grad, g.N * g.HO * g.WO * g.O * 4, "grad") && want(&out, size * 4, "out")) {
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
    PyBuffer_Release(&image);
    PyBuffer_Release(&grad);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_mid_tread(PyObject *self, PyObject *args) {
    Py_buffer x, y, mask;
    float max, up, down;
    int threads;
    if (!PyArg_ParseTuple(args, "y*w*w*fffi", &x, &y, &mask, &max, &up, &down, &threads)) return NULL;
    PyObject *ret = NULL;
    const ssize count = x.len / 4;
    if (threads < 1) {
        PyErr_Format(PyExc_ValueError, "mid_tread: threads must be >= 1, got %d", threads);
    } else if (x.len % 4 == 0 && want(&y, x.len, "y") && want(&mask, count, "mask")) {
        const float *xs = x.buf;
        float *ys = y.buf;
        uint8_t *ms = mask.buf;
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (ssize b = 0; b < count; b += BLOCK)
            mid_tread_block(xs + b, ys + b, ms + b, count - b < BLOCK ? count - b : BLOCK, max, up, down);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "mid_tread: x must hold float32 values");
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    PyBuffer_Release(&mask);
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
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (ssize b = 0; b < count; b += BLOCK) masked_block(gs + b, ms + b, os + b, count - b < BLOCK ? count - b : BLOCK);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&grad);
    PyBuffer_Release(&mask);
    PyBuffer_Release(&out);
    return ret;
}

static PyMethodDef methods[] = {
    {"embedding_conv", py_embedding_conv, METH_VARARGS,
     "embedding_conv(image, table, out, N, H, W, C, O, HO, WO, KH, KW, SY, SX, PY, PX, threads): "
     "out[n, oy, ox] = sum over the taps inside the image of table[pixel value, tap]"},
    {"embedding_conv_backward", py_embedding_conv_backward, METH_VARARGS,
     "embedding_conv_backward(image, grad, out, <geometry>, threads): out = dL/dtable given dL/dout"},
    {"mid_tread", py_mid_tread, METH_VARARGS,
     "mid_tread(x, y, mask, max, up, down, threads): y = rint(clip(x, 0, max) * up) * down, mask = [0 < x < max]"},
    {"masked", py_masked, METH_VARARGS, "masked(grad, mask, out, threads): out = grad where mask else 0"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_train_kernels", "pixelq training kernels", -1, methods};

PyMODINIT_FUNC PyInit__train_kernels(void) { return PyModule_Create(&module); }
