/* The ARM64 check (`make test-arm64`): libpixelq cross-built for AArch64 and run under qemu-aarch64,
 * every ARM build of the kernels (pxq_isas) against outputs the host computed.
 *
 *   check cases CASES        each conv the x86 kernel tests ran with the portable build
 *                            (tests/arm64/cases.py), run again with every build: the same bytes out
 *   check model MODEL.pxq EXPECTED
 *                            the model's logits and labels on the images in EXPECTED (written by
 *                            tests/arm64/expect.py from the numpy reference executor), every build:
 *                            integer logits equal, float logits (a float last layer) within 1e-4
 *
 * Prints one line per build; exits 1 at the first difference, naming it.
 *
 * One thread: under qemu-user 7.2 (Debian 12) two OpenMP threads never finish, a plain
 * `omp parallel for` as much as libpixelq's; the threaded paths are the same C on every
 * architecture, and the x86 tests run them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pixelq.h"

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "arm64 check: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

static unsigned char *read_file(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(*size > 0 ? *size : 1);
    if (data && fread(data, 1, *size, f) != (size_t)*size) free(data), data = NULL;
    fclose(f);
    return data;
}

/* A cursor over a file read whole; each take checks there are enough bytes left. */
typedef struct {
    const unsigned char *at, *end;
} cursor;

static const void *take(cursor *c, long bytes) {
    if (bytes < 0 || c->end - c->at < bytes) return NULL;
    const void *p = c->at;
    c->at += bytes;
    return p;
}

static int take_int(cursor *c, int width, long long *value) {
    const void *p = take(c, width);
    if (!p) return 0;
    if (width == 4) {
        int32_t v;
        memcpy(&v, p, 4);
        *value = v;
    } else {
        int64_t v;
        memcpy(&v, p, 8);
        *value = v;
    }
    return 1;
}

/* The builds this CPU runs, from pxq_isas()'s comma-separated list. */
static int isa_list(char names[][32], int most) {
    char all[256];
    snprintf(all, sizeof all, "%s", pxq_isas());
    int count = 0;
    for (char *name = strtok(all, ","); name && count < most; name = strtok(NULL, ","))
        snprintf(names[count++], 32, "%s", name);
    return count;
}

/* Set field `name` of the conv parameters: a number of `width` bytes, or an array. */
static int set_field(pxq_conv_params *p, const char *name, int type, int width, long long value, const void *data,
                     long bytes) {
    int64_t offset = pxq_field_offset("pxq_conv_params", name);
    if (offset < 0) return 0;
    char *field = (char *)p + offset;
    if (type == 0) {
        if (width == 4) *(int32_t *)field = (int32_t)value;
        else *(int64_t *)field = value;
    } else {
        pxq_buffer b = {data, bytes};
        memcpy(field, &b, sizeof b);
    }
    return 1;
}

static int check_cases(const char *path) {
    long size;
    unsigned char *file = read_file(path, &size);
    if (!file) return fail("cannot read the cases", path);
    cursor c = {file, file + size};
    const void *magic = take(&c, 8);
    if (!magic || memcmp(magic, "PXQCASES", 8)) return fail("not a cases file", path);
    char isas[8][32];
    const int nisa = isa_list(isas, 8);
    long cases = 0, runs[8] = {0};
    while (c.at < c.end) {
        long long fields;
        if (!take_int(&c, 4, &fields)) return fail("truncated cases file", path);
        pxq_conv_params p;
        memset(&p, 0, sizeof p);
        const void *expected = NULL;
        long expected_bytes = 0;
        for (long long f = 0; f < fields; f++) {
            const unsigned char *len = take(&c, 1);
            const char *name = len ? take(&c, *len) : NULL;
            const unsigned char *type = name ? take(&c, 1) : NULL;
            char field[64];
            if (!type || *len >= sizeof field) return fail("truncated cases file", path);
            memcpy(field, name, *len), field[*len] = 0;
            if (*type == 0) {
                const unsigned char *width = take(&c, 1);
                long long value;
                if (!width || !take_int(&c, 8, &value) || !set_field(&p, field, 0, *width, value, NULL, 0))
                    return fail("bad number field", field);
            } else {
                long long bytes;
                const void *data = take_int(&c, 8, &bytes) ? take(&c, (long)bytes) : NULL;
                if (!data) return fail("truncated array field", field);
                if (*type == 2) expected = data, expected_bytes = (long)bytes;
                else if (!set_field(&p, field, 1, 0, 0, data, (long)bytes)) return fail("unknown field", field);
            }
        }
        if (!expected) return fail("a case without its output", NULL);
        unsigned char *out = malloc(expected_bytes ? expected_bytes : 1);
        for (int i = 0; i < nisa; i++) {
            memset(out, 0xA5, expected_bytes);
            p.out.data = out, p.out.bytes = expected_bytes, p.isa = isas[i];
            p.threads = 1;  /* see the top of this file */
            char where[96];
            snprintf(where, sizeof where, "case %ld (kind %d, %lldx%lldx%lld x %lld channels -> %lld), %s", cases,
                     p.kind, (long long)p.batch, (long long)p.height, (long long)p.width, (long long)p.channels,
                     (long long)p.out_channels, isas[i]);
            if (pxq_conv(&p) != PXQ_OK) return fail(where, pxq_last_error());
            if (memcmp(out, expected, expected_bytes)) return fail(where, "output differs from the host's");
            runs[i]++;
        }
        free(out);
        cases++;
    }
    for (int i = 0; i < nisa; i++) printf("%-14s %ld kernel cases equal to the host's\n", isas[i], runs[i]);
    free(file);
    return cases ? 0 : fail("no cases in", path);
}

/* EXPECTED: "PXQEXPCT", int32 n, h, w, c, the images (uint8), int32 kind (0: int32 logits,
 * 1: float32 logits), int32 classes, the logits. */
static int check_model(const char *model_path, const char *expected_path) {
    long size;
    unsigned char *file = read_file(expected_path, &size);
    if (!file) return fail("cannot read", expected_path);
    cursor c = {file, file + size};
    const void *magic = take(&c, 8);
    long long n, h, w, ch, kind, classes;
    if (!magic || memcmp(magic, "PXQEXPCT", 8) || !take_int(&c, 4, &n) || !take_int(&c, 4, &h) ||
        !take_int(&c, 4, &w) || !take_int(&c, 4, &ch))
        return fail("not an expected-logits file", expected_path);
    const uint8_t *images = take(&c, (long)(n * h * w * ch));
    if (!images || !take_int(&c, 4, &kind) || !take_int(&c, 4, &classes)) return fail("truncated", expected_path);
    const void *logits = take(&c, (long)(n * classes * 4));
    if (!logits) return fail("truncated", expected_path);
    char isas[8][32];
    const int nisa = isa_list(isas, 8);
    int32_t *ints = malloc(sizeof(int32_t) * n * classes), *labels = malloc(sizeof(int32_t) * n);
    float *floats = malloc(sizeof(float) * n * classes);
    for (int i = 0; i < nisa; i++) {
        char error[512], where[600];
        pxq_options options = {1, isas[i]};
        pxq_model *m = pxq_load(model_path, &options, error, sizeof error);
        snprintf(where, sizeof where, "%s, %s", model_path, isas[i]);
        if (!m) return fail(where, error);
        int shape[3];
        if (pxq_input_shape(m, shape) || shape[0] != h || shape[1] != w || shape[2] != ch ||
            pxq_num_classes(m) != classes)
            return fail(where, "input shape or classes differ from the host's");
        if (pxq_predict(m, images, (int)n, labels)) return fail(where, pxq_last_error());
        double worst = 0;
        if (kind == 0) {
            if (pxq_logits(m, images, (int)n, ints)) return fail(where, pxq_last_error());
            if (memcmp(ints, logits, sizeof(int32_t) * n * classes)) return fail(where, "integer logits differ");
        } else {
            if (pxq_float_logits(m, images, (int)n, floats)) return fail(where, pxq_last_error());
            const float *want = logits;
            for (long long q = 0; q < n * classes; q++) {
                double d = fabs((double)floats[q] - want[q]) / (fabs(want[q]) > 1 ? fabs(want[q]) : 1);
                worst = d > worst ? d : worst;
            }
            if (worst > 1e-4) return fail(where, "float logits differ by more than 1e-4");
        }
        for (long long k = 0; k < n; k++) {  /* the label: the first of the highest logits */
            int best = 0;
            for (int q = 1; q < classes; q++) {
                const long long at = k * classes;
                float a, b;
                if (kind == 0) a = (float)((const int32_t *)logits)[at + q], b = (float)((const int32_t *)logits)[at + best];
                else a = ((const float *)logits)[at + q], b = ((const float *)logits)[at + best];
                if (a > b) best = q;
            }
            if (labels[k] != best) return fail(where, "a label differs");
        }
        printf("%-14s %s: %lld images, %s logits%s\n", isas[i], model_path, n, kind == 0 ? "integer" : "float",
               kind == 0 ? " equal" : " within 1e-4");
        pxq_free(m);
    }
    free(ints), free(labels), free(floats), free(file);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "cases")) return check_cases(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "model")) return check_model(argv[2], argv[3]);
    return fail("usage: check cases CASES | check model MODEL.pxq EXPECTED", NULL);
}
