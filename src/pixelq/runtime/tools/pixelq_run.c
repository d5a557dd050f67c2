/* pixelq-run: classify uint8 images with a .pxq model, in C (libpixelq, no Python).
 *
 *   pixelq-run MODEL.pxq IMAGES.npy [--threads N] [--isa ISA] [--top K] [--json] [--bench REPEATS]
 *
 * IMAGES.npy holds uint8 images (N, H, W, C) (or one, (H, W, C)) of the model's shape. Prints one
 * line per image, its label and class name; --top K adds the K most probable classes with their
 * scores (softmax of the logits in the training model's units); --json prints a JSON list instead;
 * --bench R times R runs of the whole batch and prints the best. Any error: a message on stderr and
 * exit status 1 (2 for a usage error).
 */
#define _POSIX_C_SOURCE 200809L  /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pixelq.h"

static int usage(const char *message) {
    fprintf(stderr, "pixelq-run: %s\nusage: pixelq-run MODEL.pxq IMAGES.npy [--threads N] [--isa ISA] [--top K] "
                    "[--json] [--bench REPEATS]\n", message);
    return 2;
}

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "pixelq-run: error: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

/* A .npy file of uint8 values, C order: its data and shape (up to 4 dims). NULL with `error` set. */
static uint8_t *read_npy(const char *path, int64_t shape[4], int *ndim, const char **error) {
    FILE *f = fopen(path, "rb");
    *error = "cannot open it";
    if (!f) return NULL;
    uint8_t head[10];
    uint8_t *data = NULL;
    char *header = NULL;
    *error = "not a .npy file";
    if (fread(head, 1, 10, f) != 10 || memcmp(head, "\x93NUMPY", 6) || head[6] < 1 || head[6] > 3) goto done;
    size_t length = head[8] | (size_t)head[9] << 8;
    if (head[6] > 1) {  /* versions 2 and 3: a 4-byte header length */
        uint8_t more[2];
        if (fread(more, 1, 2, f) != 2) goto done;
        length |= (size_t)more[0] << 16 | (size_t)more[1] << 24;
    }
    if (length > 1 << 20 || !(header = calloc(length + 1, 1)) || fread(header, 1, length, f) != length) goto done;
    *error = "must hold uint8 images (N, H, W, C) in C order";
    if (!(strstr(header, "'|u1'") || strstr(header, "'<u1'") || strstr(header, "'u1'")) ||
        !strstr(header, "'fortran_order': False"))
        goto done;
    const char *s = strstr(header, "'shape': (");
    if (!s) goto done;
    s += strlen("'shape': (");
    int64_t count = 1;
    *ndim = 0;
    while (*s && *s != ')') {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || v < 0 || *ndim == 4 || v > (1LL << 31)) goto done;
        shape[(*ndim)++] = v, count *= v;
        if (count > (1LL << 36)) goto done;
        s = end;
        while (*s == ',' || *s == ' ') s++;
    }
    if (*s != ')' || *ndim < 3) goto done;
    *error = "out of memory";
    if (!(data = malloc(count ? (size_t)count : 1))) goto done;
    *error = "shorter than its shape says";
    if (fread(data, 1, (size_t)count, f) != (size_t)count) {
        free(data);
        data = NULL;
    }
done:
    free(header);
    fclose(f);
    return data;
}

/* `s` as a JSON string: quoted, with quotes, backslashes and control characters escaped. */
static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const char *paths[2] = {NULL, NULL}, *isa = NULL;
    int threads = 0, top = 0, json = 0, bench = 0, count = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage("classify images with a .pxq model"), 0;
        if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--threads") || !strcmp(a, "--isa") || !strcmp(a, "--top") || !strcmp(a, "--bench")) {
            if (i + 1 == argc) return usage("an option lacks its value");
            const char *v = argv[++i];
            char *end;
            long n = strtol(v, &end, 10);
            if (!strcmp(a, "--isa")) isa = v;
            else if (*end || n < 1 || n > 1 << 20) return usage("--threads, --top and --bench take a positive integer");
            else if (!strcmp(a, "--threads")) threads = (int)n;
            else if (!strcmp(a, "--top")) top = (int)n;
            else bench = (int)n;
        } else if (a[0] == '-' && a[1]) {
            return usage("unknown option");
        } else if (count < 2) {
            paths[count++] = a;
        } else {
            return usage("one model and one .npy file");
        }
    }
    if (count != 2) return usage("one model and one .npy file");
    char error[512];
    pxq_options options = {.threads = threads, .isa = isa};
    pxq_model *m = pxq_load(paths[0], &options, error, sizeof error);
    if (!m) return fail(error, NULL);
    int64_t shape[4];
    int ndim, status = 1;
    const char *why;
    uint8_t *images = read_npy(paths[1], shape, &ndim, &why);
    int model_shape[3];
    pxq_input_shape(m, model_shape);
    const int classes = pxq_num_classes(m);
    if (!images) {
        fail(paths[1], why);
        goto done;
    }
    if (ndim == 3) memmove(shape + 1, shape, 3 * sizeof(int64_t)), shape[0] = 1;
    if (shape[1] != model_shape[0] || shape[2] != model_shape[1] || shape[3] != model_shape[2] || shape[0] > 1 << 24) {
        snprintf(error, sizeof error, "images of shape (%d, %d, %d) expected, got (%lld, %lld, %lld)", model_shape[0],
                 model_shape[1], model_shape[2], (long long)shape[1], (long long)shape[2], (long long)shape[3]);
        fail(paths[1], error);
        goto done;
    }
    const int n = (int)shape[0];
    float *logits = malloc(sizeof(float) * (size_t)(n ? n : 1) * (size_t)classes);
    int32_t *labels = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    if (!logits || !labels) {
        fail("out of memory", NULL);
    } else if (n && (pxq_float_logits(m, images, n, logits) || pxq_predict(m, images, n, labels))) {
        fail(pxq_last_error(), NULL);
    } else if (bench) {
        double best = 1e30;
        for (int r = 0; r < bench && n; r++) {
            double t = now();
            if (pxq_predict(m, images, n, labels)) break;
            t = now() - t;
            best = t < best ? t : best;
        }
        printf(json ? "{\"images\": %d, \"best_s\": %.6g, \"images_per_s\": %.6g}\n"
                    : "%d images: best of the runs %.6g s, %.6g images/s\n", n, best, n / best);
        status = 0;
    } else {
        if (json) printf("[");
        for (int i = 0; i < n; i++) {
            const float *row = logits + (int64_t)i * classes;
            if (json) printf("%s{\"label\": %d, \"class\": ", i ? ", " : "", labels[i]), json_string(pxq_class_name(m, labels[i]));
            else printf("%d\t%s", labels[i], pxq_class_name(m, labels[i]));
            if (top) {  /* softmax, then the top K, the lower class first on a tie */
                double peak = row[0], total = 0;
                for (int k = 1; k < classes; k++) peak = row[k] > peak ? row[k] : peak;
                for (int k = 0; k < classes; k++) total += exp(row[k] - peak);
                if (json) printf(", \"top\": [");
                for (int t = 0, shown = -1; t < top && t < classes; t++) {  /* the best below the last shown */
                    int best = -1;
                    for (int k = 0; k < classes; k++)
                        if ((shown < 0 || row[k] < row[shown] || (row[k] == row[shown] && k > shown)) &&
                            (best < 0 || row[k] > row[best]))
                            best = k;
                    shown = best;
                    const double score = exp(row[best] - peak) / total;
                    if (json) printf("%s{\"class\": ", t ? ", " : ""), json_string(pxq_class_name(m, best)),
                              printf(", \"score\": %.6f}", score);
                    else printf("\t%s %.4f", pxq_class_name(m, best), score);
                }
                if (json) printf("]");
            }
            printf(json ? "}" : "\n");
        }
        if (json) printf("]\n");
        status = 0;
    }
    free(logits);
    free(labels);
done:
    free(images);
    pxq_free(m);
    return status;
}
