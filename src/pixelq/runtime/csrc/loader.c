/* pxq_load: a .pxq file (version 3) read, checked and made into a net (pixelq.h).
 *
 * The file is safetensors: an 8-byte length, a JSON header naming each blob (dtype, shape, byte
 * range) with string metadata (format, version, the manifest as base64 of zlib-compressed JSON, its
 * SHA-256), then the blobs. The manifest holds the model's graph and its plan (the graph the
 * runtime executes, made at export by pixelq.runtime.fusion); only the plan is run here. Each of
 * its nodes is checked against its op's rules as pixelq/integer/ops.py checks them (attributes,
 * tensors, inputs, shapes along the graph, sizes bounded) before any tensor the file describes is
 * allocated at its own size. Then each conv's kernel is chosen and its weights laid out as the
 * Python executor does (runtime/fast.py), and the steps go into a pxq_net.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define JSMN_STATIC
#define JSMN_STRICT
#include "vendor/jsmn.h"
#include "vendor/sha256.h"

#include "internal.h"
#include "pixelq.h"

#define MAX_FILE ((int64_t)1 << 31)
#define MAX_MANIFEST (64 << 20)
#define MAX_TOKENS (1 << 22)
#define MAX_SIDE (1 << 15)
#define MAX_CODE (1 << 15)
#define MAX_COUNT (1 << 16)
#define MAX_ELEMENTS ((int64_t)1 << 28)
#define MAX_CLASSES (1 << 20)
#define MAX_NAME 256

/* ---- JSON: jsmn's tokens, walked ---- */

typedef struct {
    const char *text;
    jsmntok_t *tok;
    int count;
} json_t;

static int json_parse(json_t *j, const char *text, size_t len) {
    jsmn_parser p;
    jsmn_init(&p);
    int n = jsmn_parse(&p, text, len, NULL, 0);
    j->tok = NULL, j->text = text, j->count = 0;
    if (n < 1 || n > MAX_TOKENS || !(j->tok = malloc(sizeof(jsmntok_t) * (size_t)n))) return 0;
    jsmn_init(&p);
    if (jsmn_parse(&p, text, len, j->tok, (unsigned)n) != n) return 0;
    j->count = n;
    return 1;
}

/* The token after token i's whole subtree (tokens come in text order; a subtree ends where i's text does). */
static int skip(const json_t *j, int i) {
    int k = i + 1;
    while (k < j->count && j->tok[k].start < j->tok[i].end) k++;
    return k;
}

static int is(const json_t *j, int i, jsmntype_t type) { return i >= 0 && i < j->count && j->tok[i].type == type; }

static int str_eq(const json_t *j, int i, const char *s) {
    if (!is(j, i, JSMN_STRING)) return 0;
    size_t n = (size_t)(j->tok[i].end - j->tok[i].start);
    return strlen(s) == n && memcmp(j->text + j->tok[i].start, s, n) == 0;
}

/* Whether strings a and b hold the same text. */
static int same_text(const json_t *j, int a, int b) {
    if (!is(j, a, JSMN_STRING) || !is(j, b, JSMN_STRING)) return 0;
    const int n = j->tok[a].end - j->tok[a].start;
    return n == j->tok[b].end - j->tok[b].start && !memcmp(j->text + j->tok[a].start, j->text + j->tok[b].start, (size_t)n);
}

/* Whether token i is the primitive `literal` (true, false, null). */
static int literal(const json_t *j, int i, const char *literal) {
    if (!is(j, i, JSMN_PRIMITIVE)) return 0;
    size_t n = (size_t)(j->tok[i].end - j->tok[i].start);
    return strlen(literal) == n && memcmp(j->text + j->tok[i].start, literal, n) == 0;
}

/* The value of `key` in object `obj`, or -1. */
static int get(const json_t *j, int obj, const char *key) {
    if (!is(j, obj, JSMN_OBJECT)) return -1;
    int i = obj + 1;
    for (int k = 0; k < j->tok[obj].size && i + 1 < j->count; k++) {
        if (str_eq(j, i, key)) return i + 1;
        i = skip(j, i + 1);
    }
    return -1;
}

/* Element k of array `arr`, or -1. */
static int element(const json_t *j, int arr, int k) {
    if (!is(j, arr, JSMN_ARRAY) || k < 0 || k >= j->tok[arr].size) return -1;
    int i = arr + 1;
    while (k-- > 0 && i < j->count) i = skip(j, i);
    return i < j->count ? i : -1;
}

/* An integer (digits, an optional minus) within +-2^62. */
static int json_int(const json_t *j, int i, int64_t *out) {
    if (!is(j, i, JSMN_PRIMITIVE)) return 0;
    const char *s = j->text + j->tok[i].start;
    int n = j->tok[i].end - j->tok[i].start, k = s[0] == '-';
    if (n - k < 1 || n - k > 18) return 0;
    int64_t v = 0;
    for (int q = k; q < n; q++) {
        if (s[q] < '0' || s[q] > '9') return 0;
        v = v * 10 + (s[q] - '0');
    }
    *out = k ? -v : v;
    return 1;
}

/* A finite number (not true, false or null). */
static int json_num(const json_t *j, int i, double *out) {
    if (!is(j, i, JSMN_PRIMITIVE)) return 0;
    const char *s = j->text + j->tok[i].start;
    int n = j->tok[i].end - j->tok[i].start;
    char buf[64];
    if (n < 1 || n >= (int)sizeof buf || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9'))) return 0;
    memcpy(buf, s, (size_t)n);
    buf[n] = 0;
    char *end;
    double v = strtod(buf, &end);
    if (*end || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

/* A copy of string token i (escapes kept as written, but \" and \\); NULL if not a string or too long. */
static char *json_str(const json_t *j, int i, int limit) {
    if (!is(j, i, JSMN_STRING)) return NULL;
    const char *s = j->text + j->tok[i].start;
    int n = j->tok[i].end - j->tok[i].start;
    if (n > limit) return NULL;
    char *out = malloc((size_t)n + 1);
    if (!out) return NULL;
    int k = 0;
    for (int q = 0; q < n; q++) out[k++] = (s[q] == '\\' && q + 1 < n && (s[q + 1] == '"' || s[q + 1] == '\\')) ? s[++q] : s[q];
    out[k] = 0;
    return out;
}

/* ---- The model ---- */

enum { OP_LUT, OP_CONV, OP_FUSED_CONV, OP_THRESHOLD, OP_ADD_CLIP, OP_SUBSAMPLE_PAD, OP_MAX_POOL, OP_SUM_POOL,
       OP_LINEAR, OP_LINEAR_FLOAT, OP_COUNT };
static const char *const OP_NAMES[OP_COUNT] = {"lut", "conv", "fused_conv", "threshold", "add_clip", "subsample_pad",
                                               "max_pool", "sum_pool", "linear", "linear_float"};

/* The attributes of the ops, and the rule each keeps (as ops.RULES). */
enum { A_IN_CHANNELS, A_OUT_CHANNELS, A_KERNEL, A_STRIDE, A_PADDING, A_WEIGHT_BITS, A_WEIGHT_LOWEST, A_WEIGHT_STRIDE,
       A_GROUPS, A_D, A_QMIN, A_QMAX, A_SHIFT, A_EXTRA_CHANNELS, A_RESIDUAL_STRIDE, A_RESIDUAL_QMAX, A_RESIDUAL_SHIFT,
       A_INPUT_SHIFT, A_INPUT_RANGE, A_LUT_RANGE, A_STEP, A_CONV_NAME, A_TABLE_SUMS, A_COUNT };
enum { R_INT, R_COUNT, R_SIZE, R_BITS, R_RANGE, R_POSITIVE, R_NAME, R_TRUE };
static const struct { const char *key; int rule; } ATTRS[A_COUNT] = {
    {"in_channels", R_COUNT}, {"out_channels", R_COUNT}, {"kernel", R_COUNT}, {"stride", R_COUNT},
    {"padding", R_SIZE}, {"weight_bits", R_BITS}, {"weight_lowest", R_INT}, {"weight_stride", R_COUNT},
    {"groups", R_COUNT}, {"d", R_COUNT}, {"qmin", R_INT}, {"qmax", R_INT}, {"shift", R_INT},
    {"extra_channels", R_SIZE}, {"residual_stride", R_COUNT}, {"residual_qmax", R_INT}, {"residual_shift", R_INT},
    {"input_shift", R_INT}, {"input_range", R_RANGE}, {"lut_range", R_RANGE}, {"step", R_POSITIVE},
    {"conv_name", R_NAME}, {"table_sums", R_TRUE},
};
#define BIT(a) (1u << (a))
#define CONV_ATTRS (BIT(A_IN_CHANNELS) | BIT(A_OUT_CHANNELS) | BIT(A_INPUT_RANGE) | BIT(A_KERNEL) | BIT(A_STRIDE) | \
                    BIT(A_PADDING) | BIT(A_WEIGHT_BITS) | BIT(A_WEIGHT_LOWEST) | BIT(A_WEIGHT_STRIDE))
#define LINEAR_ATTRS (BIT(A_IN_CHANNELS) | BIT(A_OUT_CHANNELS) | BIT(A_WEIGHT_BITS) | BIT(A_WEIGHT_LOWEST) | \
                      BIT(A_WEIGHT_STRIDE))
#define GRID (BIT(A_QMIN) | BIT(A_QMAX) | BIT(A_STEP))
static const struct { uint32_t required, optional; } OP_ATTRS[OP_COUNT] = {
    [OP_LUT] = {BIT(A_D) | BIT(A_IN_CHANNELS) | GRID, 0},
    [OP_CONV] = {CONV_ATTRS, BIT(A_GROUPS)},
    [OP_FUSED_CONV] = {CONV_ATTRS | BIT(A_CONV_NAME), BIT(A_GROUPS) | BIT(A_LUT_RANGE) | GRID | BIT(A_RESIDUAL_STRIDE) |
                                                       BIT(A_RESIDUAL_QMAX) | BIT(A_RESIDUAL_SHIFT) | BIT(A_INPUT_SHIFT) |
                                                       BIT(A_TABLE_SUMS)},
    [OP_THRESHOLD] = {GRID, 0},
    [OP_ADD_CLIP] = {GRID, BIT(A_SHIFT)},
    [OP_SUBSAMPLE_PAD] = {BIT(A_STRIDE) | BIT(A_EXTRA_CHANNELS), 0},
    [OP_MAX_POOL] = {BIT(A_KERNEL) | BIT(A_STRIDE), 0},
    [OP_SUM_POOL] = {BIT(A_STEP), 0},
    [OP_LINEAR] = {LINEAR_ATTRS, 0},
    [OP_LINEAR_FLOAT] = {BIT(A_STEP), 0},
};

enum { T_WEIGHT, T_LUT, T_DIRECTION, T_THRESHOLDS, T_OFFSET, T_BIAS, T_COUNT };
static const char *const TENSOR_NAMES[T_COUNT] = {"weight", "lut", "direction", "thresholds", "offset", "bias"};

typedef struct {
    int ndim;
    int64_t shape[6], count;
    int is_float;   /* float32 values, else int32 codes */
    void *data;     /* int32_t or float */
} tensor_t;

typedef struct {
    int op, n_inputs, inputs[2];  /* value numbers: 0 the image, k node k - 1 */
    int tok;                      /* its object in the manifest */
    uint32_t has;                 /* BIT(attribute) for the attributes it holds */
    int64_t a[A_COUNT], range[A_COUNT][2];
    double step;
    uint32_t tensors;             /* BIT(tensor) for those it holds */
    tensor_t t[T_COUNT];
    int64_t shape[3];             /* its output per image: (H, W, C), -1 where unknown, or (C) */
    int ndim;
} node_t;

struct pxq_model {
    pxq_net *net;
    int nodes_count;
    node_t *nodes;
    int output;            /* the value number of the logits */
    int in_channels, num_classes, height, width, integer_only;
    char **classes;
    float *logit_scale;
    char number[16];       /* a class's name where the file names none */
};

/* The error of a load: into the caller's buffer and pxq_last_error. */
typedef struct {
    char *text;
    size_t size;
    const char *path;
} load_error_t;

static int bad(load_error_t *e, int code, const char *format, ...) __attribute__((format(printf, 3, 4)));
static int bad(load_error_t *e, int code, const char *format, ...) {
    char message[400];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    pxq_fail(code, "%s: %s", e->path, message);
    if (e->text && e->size) snprintf(e->text, e->size, "%s", pxq_last_error());
    return code;
}

/* ---- Reading the file ---- */

static int read_file(const char *path, uint8_t **data, int64_t *size, load_error_t *e) {
    FILE *f = fopen(path, "rb");
    if (!f) return bad(e, PXQ_ERROR_FILE, "cannot open the model file");
    uint8_t *buf = NULL;
    int64_t n = 0, capacity = 0;
    for (;;) {
        if (n == capacity) {
            capacity = capacity ? 2 * capacity : 1 << 16;
            if (capacity > MAX_FILE) {
                fclose(f), free(buf);
                return bad(e, PXQ_ERROR_FILE, "larger than %lld bytes", (long long)MAX_FILE);
            }
            uint8_t *grown = realloc(buf, (size_t)capacity);
            if (!grown) {
                fclose(f), free(buf);
                return bad(e, PXQ_ERROR_MEMORY, "out of memory reading the file");
            }
            buf = grown;
        }
        size_t got = fread(buf + n, 1, (size_t)(capacity - n), f);
        n += (int64_t)got;
        if (got == 0) break;
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        return bad(e, PXQ_ERROR_FILE, "cannot read the model file");
    }
    *data = buf, *size = n;
    return PXQ_OK;
}

typedef struct {
    char name[64];
    int dtype;              /* index in DTYPES */
    const uint8_t *data;
    int64_t bytes;
} blob_t;

static const struct { const char *safetensors, *pixelq; int size; } DTYPES[] = {
    {"U8", "packed", 1}, {"I8", "int8", 1}, {"I16", "int16", 2}, {"I32", "int32", 4}, {"F32", "float32", 4},
    {"F64", "float64", 8}, {"I64", "int64", 8},
};
#define DTYPE_COUNT ((int)(sizeof DTYPES / sizeof DTYPES[0]))

static int base64_value(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Standard base64 (padded) -> bytes; -1 on anything else. */
static int64_t base64_decode(const char *in, int64_t n, uint8_t *out) {
    if (n % 4) return -1;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int q = 0; q < 4; q++) {
            if (in[i + q] == '=' && i + 4 == n && q >= 2 && (q == 3 || in[i + 3] == '=')) {
                v[q] = 0, pad++;
            } else if ((v[q] = base64_value((unsigned char)in[i + q])) < 0) {
                return -1;
            }
        }
        uint32_t bits = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[k++] = (uint8_t)(bits >> 16);
        if (pad < 2) out[k++] = (uint8_t)(bits >> 8);
        if (pad < 1) out[k++] = (uint8_t)bits;
    }
    return k;
}

/* zlib data -> at most MAX_MANIFEST bytes, NUL-terminated. */
static int inflate_all(const uint8_t *in, int64_t n, char **out, int64_t *size) {
    z_stream z = {0};
    if (inflateInit(&z) != Z_OK) return 0;
    size_t capacity = 1 << 16, used = 0;
    char *buf = malloc(capacity);
    z.next_in = (Bytef *)in, z.avail_in = (uInt)n;
    int status = Z_OK;
    while (buf && status == Z_OK) {
        if (used + 1 >= capacity) {
            char *grown = capacity < MAX_MANIFEST ? realloc(buf, capacity * 2) : NULL;
            if (!grown) break;
            buf = grown, capacity *= 2;
        }
        z.next_out = (Bytef *)buf + used, z.avail_out = (uInt)(capacity - used - 1);
        status = inflate(&z, Z_NO_FLUSH);
        used = capacity - 1 - z.avail_out;
        if (status == Z_BUF_ERROR && z.avail_in == 0) break;  /* truncated */
    }
    inflateEnd(&z);
    if (!buf || status != Z_STREAM_END || z.avail_in != 0) {
        free(buf);
        return 0;
    }
    buf[used] = 0;
    *out = buf, *size = (int64_t)used;
    return 1;
}

static int compare_blobs(const void *a, const void *b) {
    return strcmp(((const blob_t *)a)->name, ((const blob_t *)b)->name);
}

/* The safetensors header: the blobs (sorted by name) and the metadata strings the manifest needs. */
typedef struct {
    blob_t blobs[16];
    int count;
    char *manifest;       /* the manifest JSON */
    int64_t manifest_bytes;
} file_t;

static int read_container(const uint8_t *data, int64_t size, file_t *f, load_error_t *e) {
    if (size < 8) return bad(e, PXQ_ERROR_FILE, "truncated: not a .pxq file");
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--) header = header << 8 | data[i];
    if (header < 2 || header > (uint64_t)(size - 8))
        return bad(e, PXQ_ERROR_FILE, "its header runs past its end: truncated or not a .pxq file");
    const int64_t start = 8 + (int64_t)header, payload = size - start;
    json_t j;
    if (!json_parse(&j, (const char *)data + 8, (size_t)header) || !is(&j, 0, JSMN_OBJECT)) {
        free(j.tok);
        return bad(e, PXQ_ERROR_FILE, "its header is not JSON: damaged or not a .pxq file");
    }
    int status = PXQ_OK, meta = -1, i = 1;
    for (int k = 0; k < j.tok[0].size && status == PXQ_OK; k++, i = skip(&j, i + 1)) {
        if (str_eq(&j, i, "__metadata__")) {
            meta = i + 1;
            continue;
        }
        const int v = i + 1;
        int64_t a, b, count = 1, dim;
        const int dtype_tok = get(&j, v, "dtype"), shape = get(&j, v, "shape"), offsets = get(&j, v, "data_offsets");
        int dtype = -1;
        for (int d = 0; d < DTYPE_COUNT; d++)
            if (str_eq(&j, dtype_tok, DTYPES[d].safetensors)) dtype = d;
        if (f->count == 16 || !is(&j, i, JSMN_STRING) || j.tok[i].end - j.tok[i].start >= 64 || dtype < 0 ||
            !is(&j, shape, JSMN_ARRAY) || !json_int(&j, element(&j, offsets, 0), &a) ||
            !json_int(&j, element(&j, offsets, 1), &b) || j.tok[offsets].size != 2 || a < 0 || b < a || b > payload) {
            status = bad(e, PXQ_ERROR_FILE, "its header describes a blob it does not hold");
            break;
        }
        for (int q = 0; q < j.tok[shape].size && count >= 0; q++)
            if (!json_int(&j, element(&j, shape, q), &dim) || dim < 0 || __builtin_mul_overflow(count, dim, &count))
                count = -1;
        if (count < 0 || count > payload || count * DTYPES[dtype].size != b - a) {
            status = bad(e, PXQ_ERROR_FILE, "its header describes a blob it does not hold");
            break;
        }
        blob_t *blob = &f->blobs[f->count++];
        memcpy(blob->name, j.text + j.tok[i].start, (size_t)(j.tok[i].end - j.tok[i].start));
        blob->name[j.tok[i].end - j.tok[i].start] = 0;
        blob->dtype = dtype, blob->data = data + start + a, blob->bytes = b - a;
    }
    const int format = get(&j, meta, "format"), version = get(&j, meta, "version"), manifest = get(&j, meta, "manifest"),
              sha = get(&j, meta, "sha256");
    if (status == PXQ_OK && !str_eq(&j, format, "pixelq-model")) status = bad(e, PXQ_ERROR_FILE, "not a pixelq model file");
    if (status == PXQ_OK && !str_eq(&j, version, "3")) {
        char *v = json_str(&j, version, 32);
        status = bad(e, PXQ_ERROR_FILE, "model file version %s, this libpixelq reads version 3; export the model "
                     "again with pixelq", v ? v : "?");
        free(v);
    }
    if (status == PXQ_OK && (!is(&j, manifest, JSMN_STRING) || !is(&j, sha, JSMN_STRING) ||
                             j.tok[sha].end - j.tok[sha].start != 64))
        status = bad(e, PXQ_ERROR_FILE, "the manifest is damaged");
    if (status == PXQ_OK) {
        const int64_t n = j.tok[manifest].end - j.tok[manifest].start;
        uint8_t *packed = malloc((size_t)(n / 4 * 3 + 3));
        int64_t packed_bytes = packed ? base64_decode(j.text + j.tok[manifest].start, n, packed) : -1;
        if (packed_bytes < 0 || !inflate_all(packed, packed_bytes, &f->manifest, &f->manifest_bytes))
            status = bad(e, PXQ_ERROR_FILE, "the manifest is damaged");
        free(packed);
    }
    if (status == PXQ_OK) {  /* the checksum: the manifest, then each blob's name and bytes, by name */
        qsort(f->blobs, (size_t)f->count, sizeof(blob_t), compare_blobs);
        SHA256_CTX ctx;
        BYTE hash[32];
        sha256_init(&ctx);
        sha256_update(&ctx, (const BYTE *)f->manifest, (size_t)f->manifest_bytes);
        for (int b = 0; b < f->count; b++) {
            sha256_update(&ctx, (const BYTE *)f->blobs[b].name, strlen(f->blobs[b].name));
            sha256_update(&ctx, f->blobs[b].data, (size_t)f->blobs[b].bytes);
        }
        sha256_final(&ctx, hash);
        char hex[65];
        for (int q = 0; q < 32; q++) snprintf(hex + 2 * q, 3, "%02x", hash[q]);
        if (memcmp(hex, j.text + j.tok[sha].start, 64) != 0)
            status = bad(e, PXQ_ERROR_FILE, "checksum mismatch: the file was altered or damaged after export");
    }
    free(j.tok);
    return status;
}

/* ---- Tensors ---- */

static const blob_t *find_blob(const file_t *f, const json_t *j, int name) {
    for (int b = 0; b < f->count; b++)
        if (str_eq(j, name, f->blobs[b].name)) return &f->blobs[b];
    return NULL;
}

/* A layout entry's tensor: packed codes (lowest + stride * u, u in `bits` bits) or raw values,
 * decoded into int32 codes or float32; its place checked inside its blob and its length against its
 * shape and encoding. */
static int decode_tensor(const json_t *j, int entry, const file_t *f, tensor_t *t, const char *name,
                         load_error_t *e) {
    int64_t offset, length, v;
    const int shape = get(j, entry, "shape"), packed = get(j, entry, "packed");
    const blob_t *blob = find_blob(f, j, get(j, entry, "blob"));
    if (!is(j, shape, JSMN_ARRAY) || j->tok[shape].size > 6 || !json_int(j, get(j, entry, "offset"), &offset) ||
        !json_int(j, get(j, entry, "length"), &length) || offset < 0 || length < 0 || !blob || !is(j, packed, JSMN_PRIMITIVE))
        return bad(e, PXQ_ERROR_FILE, "tensor %s: its entry needs shape, offset, length, blob and packed", name);
    t->ndim = j->tok[shape].size, t->count = 1;
    for (int q = 0; q < t->ndim; q++) {
        if (!json_int(j, element(j, shape, q), &v) || v < 0 || v > MAX_ELEMENTS)
            return bad(e, PXQ_ERROR_FILE, "tensor %s: its shape must be sizes", name);
        t->shape[q] = v, t->count *= v;
        if (t->count > MAX_ELEMENTS) return bad(e, PXQ_ERROR_FILE, "tensor %s: more than 2^28 values", name);
    }
    const int size = DTYPES[blob->dtype].size;  /* offset and length count the blob's values */
    if (offset > blob->bytes / size || length > blob->bytes / size - offset)
        return bad(e, PXQ_ERROR_FILE, "tensor %s: lies past the end of blob %s", name, blob->name);
    const uint8_t *data = blob->data + offset * size;
    if (literal(j, packed, "true")) {
        int64_t lowest, stride, bits;
        if (size != 1) return bad(e, PXQ_ERROR_FILE, "tensor %s: packed codes live in a byte blob", name);
        if (!json_int(j, get(j, entry, "lowest"), &lowest) || !json_int(j, get(j, entry, "stride"), &stride) ||
            !json_int(j, get(j, entry, "bits"), &bits) || llabs(lowest) > INT32_MAX || llabs(stride) > INT32_MAX ||
            bits < 1 || bits > 32)
            return bad(e, PXQ_ERROR_FILE, "tensor %s: lowest, stride and bits must be integers in the int32 range", name);
        if (length != (t->count * bits + 7) / 8)
            return bad(e, PXQ_ERROR_FILE, "tensor %s: %lld bytes do not hold %lld codes of %lld bits", name,
                       (long long)length, (long long)t->count, (long long)bits);
        int32_t *codes = malloc(sizeof(int32_t) * (size_t)(t->count ? t->count : 1));
        if (!codes) return bad(e, PXQ_ERROR_MEMORY, "out of memory for tensor %s", name);
        t->data = codes;
        for (int64_t i = 0; i < t->count; i++) {
            uint64_t u = 0;
            for (int64_t b = 0; b < bits; b++) {
                const int64_t k = i * bits + b;
                u |= (uint64_t)((data[k >> 3] >> (k & 7)) & 1) << b;
            }
            const int64_t code = lowest + stride * (int64_t)u;
            if (code < INT32_MIN || code > INT32_MAX)
                return bad(e, PXQ_ERROR_FILE, "tensor %s: its codes leave the int32 range", name);
            codes[i] = (int32_t)code;
        }
        return PXQ_OK;
    }
    if (!literal(j, packed, "false")) return bad(e, PXQ_ERROR_FILE, "tensor %s: packed must be true or false", name);
    const int dtype = get(j, entry, "dtype");
    if (!str_eq(j, dtype, DTYPES[blob->dtype].pixelq) || length != t->count)
        return bad(e, PXQ_ERROR_FILE, "tensor %s: %lld values of its blob do not fill its shape", name, (long long)length);
    const char *kind = DTYPES[blob->dtype].pixelq;
    void *values = malloc(4 * (size_t)(t->count ? t->count : 1));  /* int32 codes or float32 */
    if (!values) return bad(e, PXQ_ERROR_MEMORY, "out of memory for tensor %s", name);
    t->data = values;
    const uint8_t *src = data;
    if (!strcmp(kind, "float32")) {
        t->is_float = 1;
        memcpy(values, src, (size_t)(t->count * 4));
        for (int64_t i = 0; i < t->count; i++)
            if (!isfinite(((float *)values)[i])) return bad(e, PXQ_ERROR_FILE, "tensor %s: not finite", name);
        return PXQ_OK;
    }
    int32_t *out = values;
    for (int64_t i = 0; i < t->count; i++) {
        if (!strcmp(kind, "int8")) out[i] = ((const int8_t *)src)[i];
        else if (!strcmp(kind, "int16")) { int16_t x; memcpy(&x, src + 2 * i, 2); out[i] = x; }
        else if (!strcmp(kind, "int32")) memcpy(&out[i], src + 4 * i, 4);
        else return bad(e, PXQ_ERROR_FILE, "tensor %s: dtype %s has no place in a plan", name, kind);
    }
    return PXQ_OK;
}

/* ---- The plan's nodes, each checked by its op's rules (pixelq/integer/ops.py) ---- */

static int rule_ok(const json_t *j, int v, int rule, node_t *n, int a) {
    int64_t x, y;
    switch (rule) {
    case R_INT: return json_int(j, v, &n->a[a]) && llabs(n->a[a]) <= MAX_CODE;
    case R_COUNT: return json_int(j, v, &n->a[a]) && n->a[a] >= 1 && n->a[a] <= MAX_COUNT;
    case R_SIZE: return json_int(j, v, &n->a[a]) && n->a[a] >= 0 && n->a[a] <= MAX_SIDE;
    case R_BITS: return json_int(j, v, &n->a[a]) && n->a[a] >= 1 && n->a[a] <= 32;
    case R_RANGE:
        if (!is(j, v, JSMN_ARRAY) || j->tok[v].size != 2 || !json_int(j, element(j, v, 0), &x) ||
            !json_int(j, element(j, v, 1), &y) || llabs(x) > MAX_CODE || llabs(y) > MAX_CODE || x > y)
            return 0;
        n->range[a][0] = x, n->range[a][1] = y;
        return 1;
    case R_POSITIVE: return json_num(j, v, &n->step) && n->step > 0;
    case R_NAME: return is(j, v, JSMN_STRING) && j->tok[v].end > j->tok[v].start && j->tok[v].end - j->tok[v].start <= MAX_NAME;
    case R_TRUE:
        if (!is(j, v, JSMN_PRIMITIVE) || j->tok[v].end - j->tok[v].start != 4 || memcmp(j->text + j->tok[v].start, "true", 4))
            return 0;
        n->a[a] = 1;
        return 1;
    }
    return 0;
}

static const char *const RULE_WORDS[] = {"an integer in [-32768, 32768]", "an integer in [1, 65536]",
                                         "an integer in [0, 32768]", "an integer in [1, 32]",
                                         "[lowest, highest] integers in [-32768, 32768]", "a finite number > 0",
                                         "a non-empty name", "true (a mark: absent when not)"};

/* Node i's name as a C string (for messages), into buf. */
static const char *node_name(const json_t *j, int tok, char *buf) {
    const int v = get(j, tok, "name");
    int n = is(j, v, JSMN_STRING) ? j->tok[v].end - j->tok[v].start : 0;
    n = n < 63 ? n : 63;
    memcpy(buf, n ? j->text + j->tok[v].start : "?", n ? (size_t)n : 2);
    buf[n ? n : 1] = 0;
    return buf;
}

#define HAS(n, a) (((n)->has >> (a)) & 1)
#define HOLDS(n, t) (((n)->tensors >> (t)) & 1)

/* The tensors a node of its op holds (op_of(node).node_tensors). */
static int expected_tensors(node_t *n, load_error_t *e, const char *name) {
    switch (n->op) {
    case OP_LUT: return BIT(T_LUT);
    case OP_CONV: case OP_LINEAR: return BIT(T_WEIGHT);
    case OP_THRESHOLD: return BIT(T_DIRECTION) | BIT(T_THRESHOLDS);
    case OP_LINEAR_FLOAT: return BIT(T_WEIGHT) | BIT(T_BIAS);
    case OP_FUSED_CONV: {
        const int parts = HAS(n, A_QMIN) + HAS(n, A_QMAX) + HAS(n, A_STEP);
        if (parts && parts != 3) return -bad(e, PXQ_ERROR_FILE, "node %s: qmin, qmax and step come together", name);
        if ((HAS(n, A_RESIDUAL_STRIDE) || HAS(n, A_RESIDUAL_QMAX)) &&
            !(parts && HAS(n, A_RESIDUAL_STRIDE) && HAS(n, A_RESIDUAL_QMAX)))
            return -bad(e, PXQ_ERROR_FILE, "node %s: a residual add needs residual_stride, residual_qmax and thresholds",
                        name);
        if (HOLDS(n, T_OFFSET) && (parts || !(HAS(n, A_INPUT_SHIFT) && n->a[A_INPUT_SHIFT])))
            return -bad(e, PXQ_ERROR_FILE, "node %s: an offset belongs to the accumulators of a shifted input", name);
        if (HAS(n, A_TABLE_SUMS) && !(HAS(n, A_LUT_RANGE) && parts && !HAS(n, A_RESIDUAL_STRIDE) &&
                                      !(HAS(n, A_INPUT_SHIFT) && n->a[A_INPUT_SHIFT]) && n->a[A_OUT_CHANNELS] <= 16))
            return -bad(e, PXQ_ERROR_FILE, "node %s: table sums need a lookup, thresholds, at most 16 output channels and "
                        "no residual add or shifted input", name);
        return (int)(BIT(T_WEIGHT) | (HAS(n, A_LUT_RANGE) ? BIT(T_LUT) : 0) |
                     (parts ? BIT(T_DIRECTION) | BIT(T_THRESHOLDS) : 0) | (HOLDS(n, T_OFFSET) ? BIT(T_OFFSET) : 0));
    }
    default: return 0;
    }
}

/* 0 with the error unless tensor t of node n has this shape. */
static int expect(node_t *n, int t, int ndim, const int64_t *shape, load_error_t *e, const char *name) {
    const tensor_t *x = &n->t[t];
    int ok = x->ndim == ndim;
    for (int q = 0; ok && q < ndim; q++) ok = x->shape[q] == shape[q];
    if (!ok) {
        char want[96] = "", got[96] = "";
        for (int q = 0; q < ndim; q++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", q ? ", " : "", (long long)shape[q]);
        for (int q = 0; q < x->ndim; q++) snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", q ? ", " : "", (long long)x->shape[q]);
        bad(e, PXQ_ERROR_FILE, "node %s: %s has shape (%s), the graph needs (%s)", name, TENSOR_NAMES[t], got, want);
    }
    return ok;
}

/* 0 with the error unless every weight code is weight_lowest + weight_stride * u, 0 <= u < 2^weight_bits. */
static int on_grid(const node_t *n, load_error_t *e, const char *name) {
    const int32_t *w = n->t[T_WEIGHT].data;
    for (int64_t q = 0; q < n->t[T_WEIGHT].count; q++) {
        const int64_t u = (int64_t)w[q] - n->a[A_WEIGHT_LOWEST];
        if (u < 0 || u % n->a[A_WEIGHT_STRIDE] || (u / n->a[A_WEIGHT_STRIDE]) >> n->a[A_WEIGHT_BITS]) {
            bad(e, PXQ_ERROR_FILE, "node %s: weight codes lie off its grid weight_lowest + weight_stride * u, "
                "0 <= u < 2^weight_bits", name);
            return 0;
        }
    }
    return 1;
}

/* The output length of a window over `side` (-1: unknown); -2 with the error where it does not fit. */
static int64_t window(int64_t side, int64_t kernel, int64_t stride, int64_t pad, load_error_t *e, const char *name) {
    if (side < 0) return -1;
    if (side + 2 * pad < kernel) {
        bad(e, PXQ_ERROR_FILE, "node %s: a %lld-wide window does not fit %lld pixels (padding %lld)", name,
            (long long)kernel, (long long)side, (long long)pad);
        return -2;
    }
    return (side + 2 * pad - kernel) / stride + 1;
}

/* Node n's output shape from its inputs' (Op.output_shape); the status. */
static int infer_shape(pxq_model *m, node_t *n, load_error_t *e, const char *name) {
    const node_t *src[2] = {NULL, NULL};
    int64_t in[2][3] = {{-1, -1, m->in_channels}, {-1, -1, -1}};
    int nd[2] = {3, 3};
    for (int k = 0; k < n->n_inputs; k++) {
        if (n->inputs[k] > 0) {
            src[k] = &m->nodes[n->inputs[k] - 1];
            nd[k] = src[k]->ndim;
            memcpy(in[k], src[k]->shape, sizeof in[k]);
        } else {
            in[k][0] = m->height ? m->height : -1, in[k][1] = m->width ? m->width : -1, in[k][2] = m->in_channels;
        }
    }
    const int spatial = n->op == OP_LUT || n->op == OP_CONV || n->op == OP_FUSED_CONV || n->op == OP_SUBSAMPLE_PAD ||
                        n->op == OP_MAX_POOL || n->op == OP_SUM_POOL;
    const int vector = n->op == OP_LINEAR || n->op == OP_LINEAR_FLOAT;
    for (int k = 0; k < n->n_inputs; k++)
        if ((spatial && nd[k] != 3) || (vector && nd[k] != 1))
            return bad(e, PXQ_ERROR_FILE, "node %s: reads %s", name, spatial ? "an (H, W, C) map" : "a (C,) vector");
    const int64_t h = in[0][0], w = in[0][1], c = in[0][2];
    int64_t *out = n->shape;
    n->ndim = nd[0];
    memcpy(out, in[0], sizeof in[0]);
    switch (n->op) {
    case OP_LUT: {
        const tensor_t *lut = &n->t[T_LUT];
        if (c != n->a[A_IN_CHANNELS]) return bad(e, PXQ_ERROR_FILE, "node %s: looks up %lld channels, got %lld", name,
                                                 (long long)n->a[A_IN_CHANNELS], (long long)c);
        if (lut->ndim != 3 || (lut->shape[0] != 1 && lut->shape[0] != c) || lut->shape[1] != 256 || lut->shape[2] != n->a[A_D])
            return bad(e, PXQ_ERROR_FILE, "node %s: lut has the wrong shape", name);
        if (src[0] && !(HAS(src[0], A_QMIN) && HAS(src[0], A_QMAX) && 0 <= src[0]->a[A_QMIN] && src[0]->a[A_QMAX] <= 255))
            return bad(e, PXQ_ERROR_FILE, "node %s: looks up byte values; its input gives codes outside 0..255", name);
        out[2] = c * n->a[A_D];
        break;
    }
    case OP_CONV: case OP_FUSED_CONV: {
        int64_t ci = c;
        if (HAS(n, A_LUT_RANGE)) {
            const tensor_t *lut = &n->t[T_LUT];
            if (n->inputs[0] != 0 || lut->ndim != 3 || (lut->shape[0] != 1 && lut->shape[0] != c) || lut->shape[1] != 256 ||
                c * lut->shape[2] != n->a[A_IN_CHANNELS])
                return bad(e, PXQ_ERROR_FILE, "node %s: its lookup of the image has the wrong shape", name);
            ci = n->a[A_IN_CHANNELS];
        }
        const int64_t k = n->a[A_KERNEL], g = HAS(n, A_GROUPS) ? n->a[A_GROUPS] : 1, o = n->a[A_OUT_CHANNELS];
        if (ci != n->a[A_IN_CHANNELS] || ci % g || o % g)
            return bad(e, PXQ_ERROR_FILE, "node %s: reads %lld channels in %lld group(s), got %lld", name,
                       (long long)n->a[A_IN_CHANNELS], (long long)g, (long long)ci);
        if (n->a[A_PADDING] >= k)
            return bad(e, PXQ_ERROR_FILE, "node %s: padding %lld must be smaller than the kernel (%lld)", name,
                       (long long)n->a[A_PADDING], (long long)k);
        const int64_t weight[4] = {o, k, k, ci / g}, channels[1] = {o};
        if (!expect(n, T_WEIGHT, 4, weight, e, name) || !on_grid(n, e, name)) return PXQ_ERROR_FILE;
        out[0] = window(h, k, n->a[A_STRIDE], n->a[A_PADDING], e, name);
        out[1] = window(w, k, n->a[A_STRIDE], n->a[A_PADDING], e, name);
        if (out[0] == -2 || out[1] == -2) return PXQ_ERROR_FILE;
        out[2] = o;
        if (HOLDS(n, T_THRESHOLDS)) {
            const int64_t levels[2] = {o, n->a[A_QMAX] - n->a[A_QMIN]};
            if (!expect(n, T_DIRECTION, 1, channels, e, name) || !expect(n, T_THRESHOLDS, 2, levels, e, name))
                return PXQ_ERROR_FILE;
        }
        if (HOLDS(n, T_OFFSET) && !expect(n, T_OFFSET, 1, channels, e, name)) return PXQ_ERROR_FILE;
        if (HAS(n, A_RESIDUAL_STRIDE)) {
            const int64_t s = n->a[A_RESIDUAL_STRIDE];
            if (n->a[A_RESIDUAL_QMAX] < 0 || n->a[A_RESIDUAL_SHIFT] < 0)
                return bad(e, PXQ_ERROR_FILE, "node %s: a residual add clips to [0, residual_qmax] after taking "
                           "residual_shift >= 0 off", name);
            if (in[1][2] > o || (out[0] >= 0 && in[1][0] >= 0 && (out[0] - 1) * s >= in[1][0]) ||
                (out[1] >= 0 && in[1][1] >= 0 && (out[1] - 1) * s >= in[1][1]))
                return bad(e, PXQ_ERROR_FILE, "node %s: its shortcut does not fit its output", name);
        }
        break;
    }
    case OP_THRESHOLD: {
        const int64_t cc = in[0][nd[0] - 1], channels[1] = {cc}, levels[2] = {cc, n->a[A_QMAX] - n->a[A_QMIN]};
        if (!expect(n, T_DIRECTION, 1, channels, e, name) || !expect(n, T_THRESHOLDS, 2, levels, e, name))
            return PXQ_ERROR_FILE;
        break;
    }
    case OP_ADD_CLIP:
        if (nd[0] != nd[1] || memcmp(in[0], in[1], sizeof(int64_t) * (size_t)nd[0]))
            return bad(e, PXQ_ERROR_FILE, "node %s: adds maps of different shapes", name);
        break;
    case OP_SUBSAMPLE_PAD: {
        const int64_t s = n->a[A_STRIDE];
        out[0] = h < 0 ? -1 : (h + s - 1) / s, out[1] = w < 0 ? -1 : (w + s - 1) / s, out[2] = c + n->a[A_EXTRA_CHANNELS];
        break;
    }
    case OP_MAX_POOL:
        out[0] = window(h, n->a[A_KERNEL], n->a[A_STRIDE], 0, e, name);
        out[1] = window(w, n->a[A_KERNEL], n->a[A_STRIDE], 0, e, name);
        if (out[0] == -2 || out[1] == -2) return PXQ_ERROR_FILE;
        break;
    case OP_SUM_POOL:
        n->ndim = 1, out[0] = c;
        break;
    case OP_LINEAR: {
        const int64_t weight[2] = {n->a[A_OUT_CHANNELS], n->a[A_IN_CHANNELS]};
        if (in[0][0] != n->a[A_IN_CHANNELS])
            return bad(e, PXQ_ERROR_FILE, "node %s: reads %lld sums, got %lld", name, (long long)n->a[A_IN_CHANNELS],
                       (long long)in[0][0]);
        if (!expect(n, T_WEIGHT, 2, weight, e, name) || !on_grid(n, e, name)) return PXQ_ERROR_FILE;
        out[0] = n->a[A_OUT_CHANNELS];
        break;
    }
    case OP_LINEAR_FLOAT: {
        const tensor_t *wt = &n->t[T_WEIGHT];
        if (wt->ndim != 2 || wt->shape[1] != in[0][0] || !wt->is_float || !n->t[T_BIAS].is_float)
            return bad(e, PXQ_ERROR_FILE, "node %s: weight must be float32 (classes, %lld)", name, (long long)in[0][0]);
        const int64_t bias[1] = {wt->shape[0]};
        if (!expect(n, T_BIAS, 1, bias, e, name)) return PXQ_ERROR_FILE;
        out[0] = wt->shape[0];
        break;
    }
    }
    int64_t elements = 1;
    for (int q = 0; q < n->ndim; q++) {
        if (out[q] == 0 || out[q] < -1) return bad(e, PXQ_ERROR_FILE, "node %s: its output is empty", name);
        if (out[q] > 0 && (elements *= out[q]) > MAX_ELEMENTS)
            return bad(e, PXQ_ERROR_FILE, "node %s: its output is larger than 2^28 values per image", name);
    }
    return PXQ_OK;
}

/* Plan node `tok` read into m->nodes[i]: its op, attributes, inputs and tensors, each checked. */
static int read_node(pxq_model *m, const json_t *j, int tok, int i, int plan_tensors, int graph_tensors,
                     const file_t *f, load_error_t *e) {
    node_t *n = &m->nodes[i];
    char name[64];
    node_name(j, tok, name);
    n->tok = tok;
    const int op = get(j, tok, "op"), nm = get(j, tok, "name"), inputs = get(j, tok, "inputs"),
              tensors = get(j, tok, "tensors");
    n->op = -1;
    for (int k = 0; k < OP_COUNT; k++)
        if (str_eq(j, op, OP_NAMES[k])) n->op = k;
    if (n->op < 0) {
        if (str_eq(j, op, "affine") || str_eq(j, op, "quantize"))
            return bad(e, PXQ_ERROR_UNSUPPORTED, "node %s: op %s has no place in a plan", name, str_eq(j, op, "affine") ? "affine" : "quantize");
        return bad(e, PXQ_ERROR_FILE, "node %s: unknown op; it needs a newer pixelq", name);
    }
    if (!is(j, nm, JSMN_STRING) || j->tok[nm].end == j->tok[nm].start || j->tok[nm].end - j->tok[nm].start > MAX_NAME ||
        str_eq(j, nm, "image"))
        return bad(e, PXQ_ERROR_FILE, "node %s: a node needs a name (other than 'image')", name);
    for (int k = 0; k < i; k++) {
        if (same_text(j, get(j, m->nodes[k].tok, "name"), nm))
            return bad(e, PXQ_ERROR_FILE, "node %s: a second node of that name", name);
    }
    const uint32_t required = OP_ATTRS[n->op].required, allowed = required | OP_ATTRS[n->op].optional;
    for (int a = 0; a < A_COUNT; a++) {
        if (!(allowed & BIT(a))) continue;
        const int v = get(j, tok, ATTRS[a].key);
        if (v < 0) {
            if (required & BIT(a)) return bad(e, PXQ_ERROR_FILE, "node %s: missing %s", name, ATTRS[a].key);
            continue;
        }
        if (!rule_ok(j, v, ATTRS[a].rule, n, a))
            return bad(e, PXQ_ERROR_FILE, "node %s: %s must be %s", name, ATTRS[a].key, RULE_WORDS[ATTRS[a].rule]);
        n->has |= BIT(a);
    }
    /* no key the op does not have (a misspelt attribute must not be read as absent) */
    for (int k = 0, i = tok + 1; k < j->tok[tok].size && i + 1 < j->count; k++, i = skip(j, i + 1)) {
        int known = str_eq(j, i, "op") || str_eq(j, i, "name") || str_eq(j, i, "inputs") || str_eq(j, i, "tensors");
        for (int a = 0; a < A_COUNT && !known; a++) known = (allowed & BIT(a)) && str_eq(j, i, ATTRS[a].key);
        if (!known) return bad(e, PXQ_ERROR_FILE, "node %s: has an attribute its op does not have", name);
    }
    if (HAS(n, A_QMIN) && HAS(n, A_QMAX) && n->a[A_QMIN] > n->a[A_QMAX])
        return bad(e, PXQ_ERROR_FILE, "node %s: qmin > qmax", name);
    /* the tensors it lists */
    if (!is(j, tensors, JSMN_ARRAY)) return bad(e, PXQ_ERROR_FILE, "node %s: tensors must be a list", name);
    for (int k = 0; k < j->tok[tensors].size; k++) {
        const int t = element(j, tensors, k);
        int which = -1;
        for (int q = 0; q < T_COUNT; q++)
            if (str_eq(j, t, TENSOR_NAMES[q])) which = q;
        if (which < 0 || HOLDS(n, which)) return bad(e, PXQ_ERROR_FILE, "node %s: holds unknown or repeated tensors", name);
        n->tensors |= BIT(which);
    }
    const int expected = expected_tensors(n, e, name);
    if (expected < 0) return PXQ_ERROR_FILE;
    if ((uint32_t)expected != n->tensors) return bad(e, PXQ_ERROR_FILE, "node %s: holds the wrong tensors for its op", name);
    /* its inputs: the image or earlier nodes */
    n->n_inputs = n->op == OP_ADD_CLIP || (n->op == OP_FUSED_CONV && HAS(n, A_RESIDUAL_STRIDE)) ? 2 : 1;
    if (!is(j, inputs, JSMN_ARRAY) || j->tok[inputs].size != n->n_inputs)
        return bad(e, PXQ_ERROR_FILE, "node %s: takes %d input name(s)", name, n->n_inputs);
    for (int k = 0; k < n->n_inputs; k++) {
        const int in = element(j, inputs, k);
        n->inputs[k] = -1;
        if (str_eq(j, in, "image")) n->inputs[k] = 0;
        for (int q = 0; q < i && n->inputs[k] < 0; q++)
            if (same_text(j, get(j, m->nodes[q].tok, "name"), in)) n->inputs[k] = q + 1;
        if (n->inputs[k] < 0) return bad(e, PXQ_ERROR_FILE, "node %s: an input is no earlier node", name);
    }
    /* its tensors, "<node name>.<tensor>" in the plan's layout (or the graph's, same_as) */
    for (int t = 0; t < T_COUNT; t++) {
        if (!HOLDS(n, t)) continue;
        char key[MAX_NAME + 16];
        snprintf(key, sizeof key, "%.*s.%s", j->tok[nm].end - j->tok[nm].start, j->text + j->tok[nm].start, TENSOR_NAMES[t]);
        int entry = get(j, plan_tensors, key);
        const int same = get(j, entry, "same_as");
        if (same >= 0) {
            char *target = json_str(j, same, MAX_NAME + 16);
            entry = target && is(j, entry, JSMN_OBJECT) && j->tok[entry].size == 1 ? get(j, graph_tensors, target) : -1;
            free(target);
            if (get(j, entry, "same_as") >= 0) entry = -1;
        }
        if (!is(j, entry, JSMN_OBJECT)) return bad(e, PXQ_ERROR_FILE, "tensor %s is not in the model", key);
        const int status = decode_tensor(j, entry, f, &n->t[t], key, e);
        if (status) return status;
        if (n->t[t].is_float != (t == T_BIAS || (t == T_WEIGHT && n->op == OP_LINEAR_FLOAT)))
            return bad(e, PXQ_ERROR_FILE, "tensor %s: float where codes belong, or the other way", key);
    }
    return infer_shape(m, n, e, name);
}

/* ---- The net ---- */

/* The public form of a checked node (pxq_net_add_node lays its weights out and chooses its kernel). */
static pxq_node public_node(const node_t *n) {
    static const int OPS[OP_COUNT] = {
        [OP_LUT] = PXQ_NODE_LUT, [OP_CONV] = PXQ_NODE_CONV, [OP_FUSED_CONV] = PXQ_NODE_FUSED_CONV,
        [OP_THRESHOLD] = PXQ_NODE_THRESHOLD, [OP_ADD_CLIP] = PXQ_NODE_ADD_CLIP, [OP_SUBSAMPLE_PAD] = PXQ_NODE_SUBSAMPLE_PAD,
        [OP_MAX_POOL] = PXQ_NODE_MAX_POOL, [OP_SUM_POOL] = PXQ_NODE_SUM_POOL, [OP_LINEAR] = PXQ_NODE_LINEAR,
        [OP_LINEAR_FLOAT] = PXQ_NODE_LINEAR_FLOAT};
    pxq_node p = {.op = OPS[n->op], .inputs = {n->inputs[0], n->n_inputs > 1 ? n->inputs[1] : -1},
                  .in_channels = n->a[A_IN_CHANNELS], .out_channels = n->a[A_OUT_CHANNELS], .kernel = n->a[A_KERNEL],
                  .stride = n->a[A_STRIDE], .padding = n->a[A_PADDING], .groups = n->a[A_GROUPS],
                  .weight_bits = n->a[A_WEIGHT_BITS], .weight_lowest = n->a[A_WEIGHT_LOWEST],
                  .weight_stride = n->a[A_WEIGHT_STRIDE],
                  .input_range = {n->range[A_INPUT_RANGE][0], n->range[A_INPUT_RANGE][1]},
                  .input_shift = n->a[A_INPUT_SHIFT], .qmin = n->a[A_QMIN], .qmax = n->a[A_QMAX], .shift = n->a[A_SHIFT],
                  .extra_channels = n->a[A_EXTRA_CHANNELS], .residual_stride = n->a[A_RESIDUAL_STRIDE],
                  .residual_qmax = n->a[A_RESIDUAL_QMAX], .residual_shift = n->a[A_RESIDUAL_SHIFT],
                  .table_sums = n->a[A_TABLE_SUMS], .step = n->step};
    pxq_codes *tensors[] = {&p.weight, &p.lut, &p.direction, &p.thresholds, &p.offset};
    const int which[] = {T_WEIGHT, T_LUT, T_DIRECTION, T_THRESHOLDS, T_OFFSET};
    for (int q = 0; q < 5; q++) {
        const tensor_t *t = &n->t[which[q]];
        if (!HOLDS(n, which[q]) || t->is_float || t->ndim > 4) continue;
        tensors[q]->data = t->data, tensors[q]->ndim = t->ndim;
        memcpy(tensors[q]->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    }
    pxq_floats *floats[] = {&p.float_weight, &p.bias};
    const int float_tensors[] = {T_WEIGHT, T_BIAS};
    for (int q = 0; q < 2; q++) {
        const tensor_t *t = &n->t[float_tensors[q]];
        if (!HOLDS(n, float_tensors[q]) || !t->is_float || t->ndim > 4) continue;
        floats[q]->data = t->data, floats[q]->ndim = t->ndim;
        memcpy(floats[q]->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    }
    return p;
}

static int default_threads(void) {
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

static int read_meta(pxq_model *m, const json_t *j, int meta, load_error_t *e) {
    int64_t c, classes;
    if (!json_int(j, get(j, meta, "in_channels"), &c) || c < 1 || c > 4096 ||
        !json_int(j, get(j, meta, "num_classes"), &classes) || classes < 1 || classes > MAX_CLASSES)
        return bad(e, PXQ_ERROR_FILE, "in_channels and num_classes must be positive integers");
    m->in_channels = (int)c, m->num_classes = (int)classes;
    const int shape = get(j, meta, "image_shape");
    if (shape >= 0 && !literal(j, shape, "null")) {  /* null: not recorded */
        int64_t hw[3];
        if (!is(j, shape, JSMN_ARRAY) || j->tok[shape].size != 3)
            return bad(e, PXQ_ERROR_FILE, "image_shape must be [H, W, %lld]", (long long)c);
        for (int q = 0; q < 3; q++)
            if (!json_int(j, element(j, shape, q), &hw[q]) || hw[q] < 1 || hw[q] > MAX_SIDE)
                return bad(e, PXQ_ERROR_FILE, "image_shape must be [H, W, %lld] with sides in [1, 32768]", (long long)c);
        if (hw[2] != c) return bad(e, PXQ_ERROR_FILE, "image_shape's channels differ from in_channels");
        m->height = (int)hw[0], m->width = (int)hw[1];
    }
    const int names = get(j, meta, "classes");
    if (names >= 0 && !literal(j, names, "null")) {
        if (!is(j, names, JSMN_ARRAY) || j->tok[names].size != classes)
            return bad(e, PXQ_ERROR_FILE, "classes must be %lld names", (long long)classes);
        if (!(m->classes = calloc((size_t)classes, sizeof(char *)))) return bad(e, PXQ_ERROR_MEMORY, "out of memory");
        for (int k = 0, i = names + 1; k < classes; k++, i = skip(j, i))
            if (!(m->classes[k] = json_str(j, i, 1024))) return bad(e, PXQ_ERROR_FILE, "classes must be %lld names", (long long)classes);
    }
    const int integer = get(j, meta, "integer_only");
    if (!literal(j, integer, "true") && !literal(j, integer, "false"))
        return bad(e, PXQ_ERROR_FILE, "integer_only must be true or false");
    m->integer_only = literal(j, integer, "true");
    if (m->integer_only) {
        const int scale = get(j, meta, "logit_scale");
        if (!is(j, scale, JSMN_ARRAY) || j->tok[scale].size != classes ||
            !(m->logit_scale = malloc(sizeof(float) * (size_t)classes)))
            return bad(e, PXQ_ERROR_FILE, "an integer model needs one finite logit scale per class");
        for (int k = 0, i = scale + 1; k < classes; k++, i = skip(j, i)) {
            double x;
            if (!json_num(j, i, &x)) return bad(e, PXQ_ERROR_FILE, "an integer model needs one finite logit scale per class");
            m->logit_scale[k] = (float)x;
        }
    }
    return PXQ_OK;
}

static void free_nodes(pxq_model *m) {
    for (int i = 0; m->nodes && i < m->nodes_count; i++)
        for (int t = 0; t < T_COUNT; t++) free(m->nodes[i].t[t].data);
    free(m->nodes);
    m->nodes = NULL, m->nodes_count = 0;
}

void pxq_free(pxq_model *m) {
    if (!m) return;
    pxq_net_free(m->net);
    free_nodes(m);
    for (int k = 0; m->classes && k < m->num_classes; k++) free(m->classes[k]);
    free(m->classes);
    free(m->logit_scale);
    free(m);
}

/* Graph `nodes` (the model's or its plan's) read into m->nodes, each node checked, its output node
 * found (m->output) and checked: one logit per class, integer_only as its op says. */
static int read_graph(pxq_model *m, const json_t *j, int nodes, int tensors, int graph_tensors, int output,
                      const file_t *f, load_error_t *e) {
    if (!is(j, nodes, JSMN_ARRAY) || j->tok[nodes].size < 1 || j->tok[nodes].size > 4096)
        return bad(e, PXQ_ERROR_FILE, "a graph of the manifest needs 1 to 4096 nodes");
    if (!(m->nodes = calloc((size_t)j->tok[nodes].size, sizeof(node_t)))) return bad(e, PXQ_ERROR_MEMORY, "out of memory");
    int status = PXQ_OK;
    for (int i = 0, tok = nodes + 1; !status && i < j->tok[nodes].size; i++, tok = skip(j, tok)) {
        if (!is(j, tok, JSMN_OBJECT)) return bad(e, PXQ_ERROR_FILE, "node %d is not an object", i);
        status = read_node(m, j, tok, i, tensors, graph_tensors, f, e), m->nodes_count = i + 1;
    }
    m->output = -1;
    for (int i = 0; !status && i < m->nodes_count; i++)
        if (same_text(j, get(j, m->nodes[i].tok, "name"), output)) m->output = i;
    if (!status && (m->output < 0 || m->nodes[m->output].ndim != 1 || m->nodes[m->output].shape[0] != m->num_classes))
        status = bad(e, PXQ_ERROR_FILE, "output must name the node of the %d logits", m->num_classes);
    if (!status && m->integer_only != (m->nodes[m->output].op == OP_LINEAR))
        status = bad(e, PXQ_ERROR_FILE, "integer_only disagrees with the output node's op");
    return status;
}

/* The manifest: its meta, its graph and its plan, each node read and checked, then the net. */
static int build(pxq_model *m, const file_t *f, const pxq_options *options, load_error_t *e) {
    json_t j;
    if (!json_parse(&j, f->manifest, (size_t)f->manifest_bytes) || !is(&j, 0, JSMN_OBJECT)) {
        free(j.tok);
        return bad(e, PXQ_ERROR_FILE, "the manifest is damaged");
    }
    const int meta = get(&j, 0, "meta"), plan = get(&j, 0, "plan"), plan_nodes = get(&j, plan, "nodes"),
              plan_tensors = get(&j, plan, "tensors"), graph_nodes = get(&j, 0, "nodes"),
              graph_tensors = get(&j, 0, "tensors");
    int status = PXQ_OK;
    if (!is(&j, meta, JSMN_OBJECT) || !is(&j, plan_tensors, JSMN_OBJECT) || !is(&j, graph_tensors, JSMN_OBJECT))
        status = bad(e, PXQ_ERROR_FILE, "the manifest needs meta, tensors and a plan");
    if (!status) status = read_meta(m, &j, meta, e);
    /* the graph, checked as pixelq's reader checks it, then the plan, which is kept to run */
    if (!status) status = read_graph(m, &j, graph_nodes, graph_tensors, graph_tensors, get(&j, meta, "output"), f, e);
    free_nodes(m);
    if (!status) status = read_graph(m, &j, plan_nodes, plan_tensors, graph_tensors, get(&j, meta, "output"), f, e);
    /* the net: every node up to the output */
    const int threads = options && options->threads > 0 ? options->threads : default_threads();
    if (!status && !(m->net = pxq_net_new())) status = bad(e, PXQ_ERROR_MEMORY, "out of memory");
    for (int i = 0; !status && i <= m->output; i++) {
        char name[64];
        node_name(&j, m->nodes[i].tok, name);
        const pxq_node node = public_node(&m->nodes[i]);
        if (pxq_net_add_node(m->net, &node, options ? options->isa : NULL, threads) < 0)
            status = bad(e, pxq_last_status(), "node %s: %s", name, pxq_last_error());
    }
    free(j.tok);
    free_nodes(m);  /* the net holds its own copies */
    return status;
}

pxq_model *pxq_load(const char *path, const pxq_options *options, char *error, size_t error_size) {
    load_error_t e = {error, error_size, path ? path : "(null)"};
    if (error && error_size) error[0] = 0;
    uint8_t *data = NULL;
    int64_t size = 0;
    file_t f = {.count = 0};
    pxq_model *m = calloc(1, sizeof(pxq_model));
    int status = !path ? bad(&e, PXQ_ERROR_ARGUMENT, "no path") : !m ? bad(&e, PXQ_ERROR_MEMORY, "out of memory") : PXQ_OK;
    if (!status) status = read_file(path, &data, &size, &e);
    if (!status) status = read_container(data, size, &f, &e);
    if (!status) status = build(m, &f, options, &e);
    free(f.manifest);
    free(data);
    if (status) {
        pxq_free(m);
        return NULL;
    }
    return m;
}

int pxq_input_shape(const pxq_model *m, int shape[3]) {
    if (!m || !shape) return pxq_fail(PXQ_ERROR_ARGUMENT, "no model");
    shape[0] = m->height, shape[1] = m->width, shape[2] = m->in_channels;
    return PXQ_OK;
}

int pxq_num_classes(const pxq_model *m) { return m ? m->num_classes : 0; }

const char *pxq_class_name(const pxq_model *m, int k) {
    if (!m || k < 0 || k >= m->num_classes) return NULL;
    if (m->classes) return m->classes[k];
    pxq_model *mutable = (pxq_model *)m;  /* a number written on demand */
    snprintf(mutable->number, sizeof mutable->number, "%d", k);
    return m->number;
}

/* Runs n images (H x W x C each: the model's, or for a file without one, any) through the net. */
static int run(pxq_model *m, const uint8_t *images, int n, int height, int width) {
    if (!m || !images || n < 1) return pxq_fail(PXQ_ERROR_ARGUMENT, "no model, no images or n < 1");
    const int64_t bytes = (int64_t)n * height * width * m->in_channels;
    return pxq_net_run(m->net, (pxq_buffer){images, bytes}, n, height, width, m->in_channels);
}

/* The logits of n images into v, after checking there is somewhere to put what comes of them. */
static int logits_of(pxq_model *m, const uint8_t *images, int n, const void *out, pxq_value *v) {
    if (!out) return pxq_fail(PXQ_ERROR_ARGUMENT, "no output buffer");
    if (m && !m->height) return pxq_fail(PXQ_ERROR_ARGUMENT, "this model file records no image size; export it again");
    int status = run(m, images, n, m ? m->height : 0, m ? m->width : 0);
    return status ? status : pxq_net_value(m->net, m->output + 1, v);
}

int pxq_logits(pxq_model *m, const uint8_t *images, int n, int32_t *logits) {
    if (m && !m->integer_only)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "this model's last layer is float: its logits come from pxq_float_logits");
    pxq_value v;
    int status = logits_of(m, images, n, logits, &v);
    if (status) return status;
    const int64_t *x = v.data;
    for (int64_t q = 0; q < (int64_t)n * m->num_classes; q++) {
        if (x[q] < INT32_MIN || x[q] > INT32_MAX) return pxq_fail(PXQ_ERROR_ARGUMENT, "a logit leaves the int32 range");
        logits[q] = (int32_t)x[q];
    }
    return PXQ_OK;
}

int pxq_float_logits(pxq_model *m, const uint8_t *images, int n, float *logits) {
    pxq_value v;
    int status = logits_of(m, images, n, logits, &v);
    if (status) return status;
    const int64_t count = (int64_t)n * m->num_classes, pooled = pxq_net_pool_count(m->net);
    if (!m->integer_only) {  /* a float last layer: its logits as they are */
        memcpy(logits, v.data, sizeof(float) * (size_t)count);
        return PXQ_OK;
    }
    const int64_t *x = v.data;
    for (int64_t q = 0; q < count; q++) logits[q] = (float)x[q] * (m->logit_scale[q % m->num_classes] / (float)pooled);
    return PXQ_OK;
}

int pxq_predict(pxq_model *m, const uint8_t *images, int n, int32_t *labels) {
    pxq_value v;
    int status = logits_of(m, images, n, labels, &v);
    if (status) return status;
    for (int i = 0; i < n; i++) {  /* the largest logit, the lower class on a tie */
        int best = 0;
        for (int k = 1; k < m->num_classes; k++) {
            const int64_t at = (int64_t)i * m->num_classes;
            const int better = m->integer_only ? ((const int64_t *)v.data)[at + k] > ((const int64_t *)v.data)[at + best]
                                               : ((const float *)v.data)[at + k] > ((const float *)v.data)[at + best];
            if (better) best = k;
        }
        labels[i] = best;
    }
    return PXQ_OK;
}
