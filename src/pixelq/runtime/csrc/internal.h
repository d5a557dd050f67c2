/* What libpixelq's sources share and do not export. */
#ifndef PIXELQ_INTERNAL_H
#define PIXELQ_INTERNAL_H

#define PXQ_HIDDEN __attribute__((visibility("hidden")))

/* Records this thread's error message (pxq_last_error) and returns `code`. */
PXQ_HIDDEN int pxq_fail(int code, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* The name of the best instruction set this CPU runs the kernels with. */
PXQ_HIDDEN const char *pxq_best_isa(void);

#endif
