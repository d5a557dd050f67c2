/* The loader against damaged files, built with AddressSanitizer and UndefinedBehaviorSanitizer
 * (tests/test_libpixelq.py): each file as it is, then MUTATIONS copies of it truncated, bit-flipped
 * or with a run of bytes overwritten. Every load must end in a model (then run on blank images) or
 * an error; a crash, a leak or undefined behaviour stops the run under the sanitizers.
 *
 *   fuzz_load MUTATIONS SEED SCRATCH FILE...      prints: loaded N refused M
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pixelq.h"

static uint64_t state;
static uint64_t next(void) {  /* xorshift64 */
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return state;
}

static int try_load(const char *path, int *loaded) {
    char error[512];
    pxq_model *m = pxq_load(path, NULL, error, sizeof error);
    if (!m) {
        if (!error[0]) return fprintf(stderr, "refused without a message: %s\n", path), 1;
        return 0;
    }
    int shape[3];
    pxq_input_shape(m, shape);
    const size_t bytes = (size_t)2 * shape[0] * shape[1] * shape[2];
    uint8_t *images = calloc(bytes ? bytes : 1, 1);
    int32_t labels[2];
    if (images && shape[0]) pxq_predict(m, images, 2, labels);  /* an error is fine; a crash is not */
    for (int k = 0; k < pxq_num_classes(m); k++) pxq_class_name(m, k);
    free(images);
    pxq_free(m);
    ++*loaded;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5) return fprintf(stderr, "usage: fuzz_load MUTATIONS SEED SCRATCH FILE...\n"), 2;
    const long mutations = strtol(argv[1], NULL, 10);
    state = (uint64_t)strtoull(argv[2], NULL, 10) | 1;
    const char *scratch = argv[3];
    int loaded = 0, refused = 0;
    for (int f = 4; f < argc; f++) {
        FILE *in = fopen(argv[f], "rb");
        if (!in) return fprintf(stderr, "cannot read %s\n", argv[f]), 2;
        fseek(in, 0, SEEK_END);
        const long size = ftell(in);
        fseek(in, 0, SEEK_SET);
        uint8_t *data = malloc((size_t)size), *copy = malloc((size_t)size);
        if (!data || !copy || fread(data, 1, (size_t)size, in) != (size_t)size) return 2;
        fclose(in);
        int before = loaded;
        if (try_load(argv[f], &loaded)) return 1;
        refused += loaded == before;
        for (long i = 0; i < mutations; i++) {
            memcpy(copy, data, (size_t)size);
            long n = size;
            switch (next() % 3) {
            case 0: n = (long)(next() % (uint64_t)size); break;  /* truncated */
            case 1:  /* a few bits flipped, often in the header */
                for (int k = 0, flips = 1 + (int)(next() % 8); k < flips; k++) {
                    const long at = next() % 2 ? (long)(next() % (uint64_t)(size < 512 ? size : 512)) : (long)(next() % (uint64_t)size);
                    copy[at] ^= (uint8_t)(1u << (next() % 8));
                }
                break;
            default: {  /* a run of bytes overwritten */
                const long at = (long)(next() % (uint64_t)size), len = 1 + (long)(next() % 64);
                for (long k = at; k < at + len && k < size; k++) copy[k] = (uint8_t)next();
            }
            }
            FILE *out = fopen(scratch, "wb");
            if (!out || fwrite(copy, 1, (size_t)n, out) != (size_t)n) return 2;
            fclose(out);
            before = loaded;
            if (try_load(scratch, &loaded)) return 1;
            refused += loaded == before;
        }
        free(data);
        free(copy);
    }
    printf("loaded %d refused %d\n", loaded, refused);
    return 0;
}
