/* Classify one image with a .pxq model through libpixelq: no Python.
 *
 *   cc examples/classify.c -o classify $(python -m pixelq.runtime.flags)
 *   convert cat.jpg -resize 32x32! rgb:cat.rgb     # raw H x W x C bytes, the model's size
 *   ./classify model.pxq cat.rgb
 */
#include <stdio.h>
#include <stdlib.h>

#include "pixelq.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.pxq IMAGE.rgb\n", argv[0]);
        return 2;
    }
    char error[512];
    pxq_model *model = pxq_load(argv[1], NULL, error, sizeof error);  /* NULL: default threads and CPU */
    if (!model) {
        fprintf(stderr, "%s\n", error);
        return 1;
    }
    int shape[3];
    pxq_input_shape(model, shape);
    size_t bytes = (size_t)shape[0] * shape[1] * shape[2];
    unsigned char *image = malloc(bytes);
    FILE *f = fopen(argv[2], "rb");
    int32_t label;
    if (!image || !f || fread(image, 1, bytes, f) != bytes) {
        fprintf(stderr, "%s: expected %zu bytes (%d x %d x %d)\n", argv[2], bytes, shape[0], shape[1], shape[2]);
        return 1;
    }
    if (pxq_predict(model, image, 1, &label) != PXQ_OK) {
        fprintf(stderr, "%s\n", pxq_last_error());
        return 1;
    }
    printf("%s\n", pxq_class_name(model, label));
    fclose(f);
    free(image);
    pxq_free(model);
    return 0;
}
