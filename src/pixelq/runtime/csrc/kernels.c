/* pixelq integer runtime kernels.
 *
 * Activations are integer codes; a conv reads them as bit-planes packed along channels
 * (plane p of code c is bit p; 64 channels per uint64 word) and multiplies with bit-planes of the
 * weights (weight code q = lowest + stride * u, plane j of u):
 *
 *   acc = lowest * S + stride * sum_{tap, j, p} 2^(j+p) * popcount(W_j[tap] & X_p[tap])
 *
 * where S is the sum of the input codes in the window. Binary weights are the case lowest = -1,
 * stride = 2, one plane: acc = 2 popcount(w & x) - popcount(x), the AND form of the {-1,+1}
 * decomposition. Zero padding needs no work: padded taps are skipped (their codes are 0).
 *
 * The hot loop runs over output channels, contiguous in the weight layout, so the compiler turns
 * AND + popcount + shift + add into vector code. The conv is compiled three times, for AVX-512
 * VPOPCNTDQ, for AVX2 and for plain C, and the module picks at import the best one this CPU has
 * (set_isa can force another, which the tests use to check every path).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define PIXELQ_X86 1
#endif

static inline __attribute__((always_inline)) int popcount64(uint64_t v) { return __builtin_popcountll(v); }

/* Bit p of 8 code bytes -> 8 bits: mask the bit in each byte, then one multiply gathers them. */
static inline uint64_t gather_bits8(uint64_t eight_codes, int p) {
    return (((eight_codes >> p) & 0x0101010101010101ULL) * 0x0102040810204080ULL) >> 56;
}

static void pack_planes_impl(const uint8_t *restrict codes, Py_ssize_t M, Py_ssize_t C, int P, Py_ssize_t Wd,
                             uint64_t *restrict out, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (Py_ssize_t m = 0; m < M; m++) {
        const uint8_t *c = codes + m * C;
        uint64_t *o = out + m * P * Wd;
        memset(o, 0, sizeof(uint64_t) * P * Wd);
        for (Py_ssize_t ch = 0; ch < C; ch += 8) {
            uint64_t chunk = 0;
            Py_ssize_t take = C - ch < 8 ? C - ch : 8;
            memcpy(&chunk, c + ch, take);  /* little-endian: byte i is channel ch + i */
            for (int p = 0; p < P; p++) o[p * Wd + (ch >> 6)] |= gather_bits8(chunk, p) << (ch & 63);
        }
    }
}

#define CONV_ARGS                                                                                  \
    const uint64_t *x, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, int P, Py_ssize_t Wd, const uint64_t *w, int KH, \
        int KW, int J, Py_ssize_t O, int lowest, int wstride, int stride, int pad, Py_ssize_t HO, Py_ssize_t WO,   \
        int32_t *acc, const int8_t *dir, const int32_t *thr, int L, int qmin, uint8_t *codes, int threads

/* One conv per instruction set: the same source, compiled for each target. */
#define CONV_NAME conv_portable
#include "conv_body.h"
#undef CONV_NAME
#ifdef PIXELQ_X86
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
#define CONV_NAME conv_avx2
#include "conv_body.h"
#undef CONV_NAME
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")
#define CONV_NAME conv_avx512
#include "conv_body.h"
#undef CONV_NAME
#pragma GCC pop_options
#endif

typedef void (*conv_fn)(CONV_ARGS);
static conv_fn conv_impl = conv_portable;
static const char *conv_isa = "portable";

static void threshold_impl(const int32_t *restrict acc, Py_ssize_t M, Py_ssize_t O, const int8_t *restrict dir,
                           const int32_t *restrict thr, int L, int qmin, uint8_t *restrict out, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (Py_ssize_t m = 0; m < M; m++) {
        for (Py_ssize_t o = 0; o < O; o++) {
            int64_t a = (int64_t)acc[m * O + o] * dir[o];
            int code = qmin;
            for (int l = 0; l < L; l++) code += a >= thr[o * L + l];
            out[m * O + o] = (uint8_t)code;
        }
    }
}

/* ---- Python bindings: buffers in, shapes as integers; the Python side checks shapes. ---- */

static int want(Py_buffer *b, Py_ssize_t bytes, const char *name) {
    if (b->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer has %zd bytes, expected %zd", name, b->len, bytes);
        return 0;
    }
    return 1;
}

static PyObject *py_pack_planes(PyObject *self, PyObject *args) {
    Py_buffer codes, out;
    Py_ssize_t M, C, Wd;
    int P, threads;
    if (!PyArg_ParseTuple(args, "y*nninw*i", &codes, &M, &C, &P, &Wd, &out, &threads)) return NULL;
    PyObject *ret = NULL;
    if (want(&codes, M * C, "codes") && want(&out, M * P * Wd * 8, "out")) {
        Py_BEGIN_ALLOW_THREADS
        pack_planes_impl(codes.buf, M, C, P, Wd, out.buf, threads);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_conv(PyObject *self, PyObject *args) {
    Py_buffer x, w, out, dir = {0}, thr = {0};
    Py_ssize_t N, H, W, Wd, O, HO, WO;
    int P, KH, KW, J, lowest, wstride, stride, pad, threads, L = 0, qmin = 0;
    if (!PyArg_ParseTuple(args, "y*nnniny*iiiniiiinnw*i|y*y*ii", &x, &N, &H, &W, &P, &Wd, &w, &KH, &KW, &J, &O,
                          &lowest, &wstride, &stride, &pad, &HO, &WO, &out, &threads, &dir, &thr, &L, &qmin))
        return NULL;
    int fused = thr.buf != NULL;
    PyObject *ret = NULL;
    if (want(&x, N * H * W * P * Wd * 8, "x") && want(&w, (Py_ssize_t)KH * KW * J * Wd * O * 8, "w") &&
        want(&out, N * HO * WO * O * (fused ? 1 : 4), "out") &&
        (!fused || (want(&dir, O, "direction") && want(&thr, O * L * 4, "thresholds")))) {
        Py_BEGIN_ALLOW_THREADS
        conv_impl(x.buf, N, H, W, P, Wd, w.buf, KH, KW, J, O, lowest, wstride, stride, pad, HO, WO,
                  fused ? NULL : out.buf, dir.buf, thr.buf, L, qmin, fused ? out.buf : NULL, threads);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&out);
    if (dir.buf) PyBuffer_Release(&dir);
    if (thr.buf) PyBuffer_Release(&thr);
    return ret;
}

static PyObject *py_threshold(PyObject *self, PyObject *args) {
    Py_buffer acc, dir, thr, out;
    Py_ssize_t M, O;
    int L, qmin, threads;
    if (!PyArg_ParseTuple(args, "y*nny*y*iiw*i", &acc, &M, &O, &dir, &thr, &L, &qmin, &out, &threads)) return NULL;
    PyObject *ret = NULL;
    if (want(&acc, M * O * 4, "acc") && want(&dir, O, "direction") && want(&thr, O * L * 4, "thresholds") &&
        want(&out, M * O, "out")) {
        Py_BEGIN_ALLOW_THREADS
        threshold_impl(acc.buf, M, O, dir.buf, thr.buf, L, qmin, out.buf, threads);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&acc);
    PyBuffer_Release(&dir);
    PyBuffer_Release(&thr);
    PyBuffer_Release(&out);
    return ret;
}

static int choose_isa(const char *name) {
    if (strcmp(name, "portable") == 0) {
        conv_impl = conv_portable, conv_isa = "portable";
        return 1;
    }
#ifdef PIXELQ_X86
    __builtin_cpu_init();
    if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) {
        conv_impl = conv_avx2, conv_isa = "avx2";
        return 1;
    }
    if (strcmp(name, "avx512vpopcntdq") == 0 && __builtin_cpu_supports("avx512vpopcntdq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        conv_impl = conv_avx512, conv_isa = "avx512vpopcntdq";
        return 1;
    }
#endif
    return 0;
}

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    if (!choose_isa(name)) {
        PyErr_Format(PyExc_ValueError, "instruction set %s is not available on this CPU", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_isa(PyObject *self, PyObject *args) { return PyUnicode_FromString(conv_isa); }

static PyObject *py_cpu_features(PyObject *self, PyObject *args) {
#ifdef PIXELQ_X86
    __builtin_cpu_init();
    return Py_BuildValue("{s:O,s:O,s:O}", "avx512vpopcntdq",
                         __builtin_cpu_supports("avx512vpopcntdq") ? Py_True : Py_False, "avx2",
                         __builtin_cpu_supports("avx2") ? Py_True : Py_False, "popcnt",
                         __builtin_cpu_supports("popcnt") ? Py_True : Py_False);
#else
    return PyDict_New();
#endif
}

static PyMethodDef methods[] = {
    {"pack_planes", py_pack_planes, METH_VARARGS, "pack uint8 codes (M, C) into bit-planes (M, P, Wd) uint64"},
    {"conv", py_conv, METH_VARARGS,
     "integer conv over packed bit-planes -> int32 accumulators, or uint8 codes given thresholds"},
    {"threshold", py_threshold, METH_VARARGS, "int32 accumulators -> uint8 codes by per-channel thresholds"},
    {"cpu_features", py_cpu_features, METH_NOARGS, "the popcount-related features this CPU has"},
    {"set_isa", py_set_isa, METH_VARARGS, "use the conv built for 'avx512vpopcntdq', 'avx2' or 'portable'"},
    {"isa", py_isa, METH_NOARGS, "the instruction set the conv runs with"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "pixelq integer runtime kernels", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    if (!choose_isa("avx512vpopcntdq") && !choose_isa("avx2")) choose_isa("portable");
    return PyModule_Create(&module);
}
