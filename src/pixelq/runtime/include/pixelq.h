/* libpixelq: run a .pxq model (pixelq export) on uint8 images, in C, without Python.
 *
 *   char error[256];
 *   pxq_model *m = pxq_load("model.pxq", NULL, error, sizeof error);
 *   if (!m) { fprintf(stderr, "%s\n", error); return 1; }
 *   int32_t label;
 *   pxq_predict(m, image, 1, &label);   // image: H x W x C uint8, as pxq_input_shape says
 *   pxq_free(m);
 *
 * pxq_load checks the file as pixelq's Python reader does (its checksum, then every node of the
 * model's plan against the rules of its op) before it allocates anything the model asks for, so a
 * damaged or hostile file gives an error, never a crash. Functions that can fail return PXQ_OK (0)
 * or a PXQ_ERROR_* code, the message in pxq_last_error(). A model runs one batch at a time: calls
 * on one model from two threads must take turns (each model has its own buffers).
 */
#ifndef PIXELQ_H
#define PIXELQ_H

#include <stddef.h>
#include <stdint.h>

#include "pixelq_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pxq_model pxq_model;

typedef struct {
    int32_t threads;  /* 0: all cores (OpenMP's default) */
    const char *isa;  /* the instruction set (pxq_isas()), NULL: the best this CPU has */
} pxq_options;

/* The model in `path`, checked and ready to run; NULL with the reason in `error` (and in
 * pxq_last_error()) when it cannot be. `options` may be NULL for the defaults. */
PXQ_API pxq_model *pxq_load(const char *path, const pxq_options *options, char *error, size_t error_size);
/* The image shape the model was trained on, H, W, C (H and W 0 where the file does not record them:
 * any size is taken); the status. */
PXQ_API int pxq_input_shape(const pxq_model *m, int shape[3]);
PXQ_API int pxq_num_classes(const pxq_model *m);
/* Class k's name ("0", "1", ... where the file names none); NULL for k out of range. */
PXQ_API const char *pxq_class_name(const pxq_model *m, int k);
/* n images (NHWC uint8, n x H x W x C bytes) -> n labels (the largest logit, the lower class on a tie). */
PXQ_API int pxq_predict(pxq_model *m, const uint8_t *images, int n, int32_t *labels);
/* n images -> n x classes integer logits (an error for a model whose last layer is float). */
PXQ_API int pxq_logits(pxq_model *m, const uint8_t *images, int n, int32_t *logits);
/* n images -> n x classes logits in the training model's units: a float last layer's as they are, or
 * the integer logits x the file's scale per class / the pooled count. */
PXQ_API int pxq_float_logits(pxq_model *m, const uint8_t *images, int n, float *logits);
PXQ_API void pxq_free(pxq_model *m);

#ifdef __cplusplus
}
#endif
#endif
