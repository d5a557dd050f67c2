/* libpixelq's kernels: one parameter struct per kernel family, each call checked before it runs.
 *
 * A caller fills a struct (zero it first: every optional part is off at zero), passes it, and reads
 * the return code: 0, or one of PXQ_ERROR_* with pxq_last_error() saying what was wrong. Every array
 * travels as a pxq_buffer, its pointer with its size in bytes, and each call checks each size
 * against the one its geometry needs, so a wrong shape is an error, never a read past an array.
 * The output geometry (rows and columns) is computed here from the input's, the kernel, stride and
 * padding: callers never pass it.
 *
 * Python binds these with ctypes (pixelq/runtime/clib.py, whose field lists mirror the structs
 * below in the same order; pxq_field_offset lets its tests check that they do).
 */
#ifndef PIXELQ_KERNELS_H
#define PIXELQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef PXQ_API
#define PXQ_API __attribute__((visibility("default")))  /* the library is built with hidden visibility */
#endif

#define PXQ_OK 0
#define PXQ_ERROR_ARGUMENT 1  /* a size, shape or value the kernel cannot take */
#define PXQ_ERROR_MEMORY 2    /* scratch memory could not be allocated */
#define PXQ_ERROR_ISA 3       /* the instruction set asked for is unknown or not on this CPU */
#define PXQ_ERROR_FILE 4      /* a model file that cannot be read, or is not a valid .pxq model */
#define PXQ_ERROR_UNSUPPORTED 5  /* a valid model with a node libpixelq cannot run yet */

/* An array and its size in bytes (data NULL and bytes 0: absent). */
typedef struct {
    const void *data;
    int64_t bytes;
} pxq_buffer;

/* An array a kernel writes. */
typedef struct {
    void *data;
    int64_t bytes;
} pxq_output;

/* The conv kernels, by how they read the input and the weights. */
enum pxq_conv_kind {
    PXQ_CONV_PLANES = 0,  /* uint8 codes packed into bit-planes, popcounts against bit-plane weights */
    PXQ_CONV_LOOKUP = 1,  /* the same, the planes packed straight from uint8 pixels through a lookup */
    PXQ_CONV_TABLE = 2,   /* uint8 pixels, sums of per-(tap, colour, pixel value) tables; needs thresholds */
    PXQ_CONV_DOT = 3,     /* uint8 codes times int8 weights, dot products */
};

/* A conv (integer, zero padding of the codes, NHWC in, NHWC out), with optionally its thresholds
 * (the next layer's batch norm and activation) and a clipped residual add fused after them. */
typedef struct {
    int32_t kind;          /* enum pxq_conv_kind */
    /* The input: (batch, height, width, channels) uint8 codes, or pixels for LOOKUP and TABLE. */
    pxq_buffer input;
    int64_t batch, height, width, channels;
    int32_t input_planes;  /* PLANES, LOOKUP: the bit-planes of the input codes, 1 .. 8 */
    /* The weights:
     *   PLANES, LOOKUP: uint64 words (weight_bits, kernel_h, Kr, out_channels_padded), Kr =
     *     ceil(kernel_w * ceil(C / 8) / 8), C the conv's input channels; code = weight_lowest +
     *     weight_stride * (the weight_bits-bit number the planes spell);
     *   DOT: int8 (kernel_h, kernel_w, ceil(C / 4), out_channels_padded / 8, 8, 4);
     *   TABLE: int8 or int16 (256, kernel_h * kernel_w * channels, 16): per pixel value, per tap and
 *     colour, the 16 (padded) output channels' partial sums. */
    pxq_buffer weights;
    int32_t kernel_h, kernel_w;
    int32_t weight_bits, weight_lowest, weight_stride;  /* PLANES, LOOKUP */
    int32_t table_entry_bytes;                          /* TABLE: 1 or 2 */
    int64_t out_channels, out_channels_padded;          /* padded: a multiple of 8 */
    /* LOOKUP: each pixel value's codes (C = channels * lookup_depth of them per pixel), by plane
     * (lookup_tables, 256, input_planes) uint64, bit j of plane p = bit p of code j, and their sums
     * (lookup_tables, 256) int32; one table for every colour, or one per colour. */
    pxq_buffer lookup_bits, lookup_sums;
    int32_t lookup_tables, lookup_depth;
    int32_t stride, pad;
    /* Thresholds (absent: int32 accumulators out): direction (out_channels_padded,) int8 of +-1,
     * thresholds (levels, out_channels_padded) int32; code = qmin + #{l : direction * acc >= t[l]}. */
    pxq_buffer direction, thresholds;
    int32_t levels, qmin;
    /* A residual add after the thresholds (absent: none): uint8 codes (batch, residual_height,
     * residual_width, residual_channels) read at (oy, ox) * residual_stride, zero past its channels;
     * code = clip(code + residual - residual_shift, 0, residual_qmax). */
    pxq_buffer residual;
    int64_t residual_height, residual_width, residual_channels;
    int32_t residual_stride, residual_qmax, residual_shift;
    /* The output (batch, out_height, out_width, out_channels): int32 accumulators, or uint8 codes
     * with thresholds. */
    pxq_output out;
    int32_t threads;       /* >= 1 */
    const char *isa;       /* the instruction set to run (pxq_isas), NULL for the best this CPU has */
} pxq_conv_params;

/* Thresholds on their own: int32 accumulators (positions, channels) -> uint8 codes, directions
 * (channels,) int8 and thresholds (channels, levels) int32. */
typedef struct {
    pxq_buffer acc;
    int64_t positions, channels;
    pxq_buffer direction, thresholds;
    int32_t levels, qmin;
    pxq_output out;
    int32_t threads;
} pxq_threshold_params;

/* A per-pixel lookup: uint8 image (positions, channels) -> codes (positions, channels * depth)
 * through uint8 tables (tables, 256, depth), one for every colour or one per colour. */
typedef struct {
    pxq_buffer image;
    int64_t positions, channels;
    pxq_buffer tables;
    int32_t tables_count, depth;
    pxq_output out;
    int32_t threads;
} pxq_lookup_params;

/* A global sum pool: uint8 codes (batch, positions, channels) -> int64 sums (batch, channels). */
typedef struct {
    pxq_buffer codes;
    int64_t batch, positions, channels;
    pxq_output out;
    int32_t threads;
} pxq_pool_params;

/* ---- A network: the kernels in sequence, one call for a whole batch. ----
 *
 * A net holds steps; each reads values and writes one: value 0 is the images a run is given, value
 * k the output of step k - 1. pxq_net_add copies the step and every array it points to, so the
 * caller's arrays may go once it returns. A run computes each value's shape from the images', keeps
 * its buffers for the next run (reallocated only when a batch needs more) and leaves every value
 * readable (pxq_net_value) until the next run. A net runs one batch at a time. */
enum pxq_step_op {
    PXQ_STEP_CONV = 0,           /* uint8 codes (and a uint8 residual) -> int32 accumulators or uint8 codes */
    PXQ_STEP_THRESHOLD = 1,      /* int32 -> uint8 */
    PXQ_STEP_LOOKUP = 2,         /* uint8 -> uint8, channels * depth */
    PXQ_STEP_ADD_CLIP = 3,       /* uint8 + uint8 of one shape -> clip(a + b - shift, qmin, qmax), uint8 */
    PXQ_STEP_SUBSAMPLE_PAD = 4,  /* uint8 -> every stride-th row and column, extra_channels of 0 appended */
    PXQ_STEP_MAX_POOL = 5,       /* uint8 -> uint8, kernel x kernel windows at stride, no padding */
    PXQ_STEP_SUM_POOL = 6,       /* uint8 (N, H, W, C) -> int64 (N, C) */
    PXQ_STEP_LINEAR = 7,         /* int64 (N, cols) -> int64 (N, rows): x times the int32 weight (rows, cols) transposed */
    PXQ_STEP_LINEAR_FLOAT = 8,   /* int64 sums (N, cols) -> float32 logits (N, rows): (x * step / the pool's count)
                                    times the float32 weight (rows, cols) transposed, plus the float32 bias (rows) */
};

enum pxq_value_type { PXQ_UINT8 = 0, PXQ_INT32 = 1, PXQ_INT64 = 2, PXQ_FLOAT32 = 3 };

typedef struct {
    int32_t op;             /* enum pxq_step_op */
    int32_t inputs[2];      /* the values it reads (the second: CONV's residual, ADD_CLIP's other; -1 none) */
    /* CONV: the kernel's fields but those of a run (input, batch, height, width, out, residual and
     * its sizes, taken from the values). input_shift > 0: the input codes are shifted by it (the
     * pixels as they are, for a LOOKUP conv) and padded by shift_padding with the bytes
     * shift_border (channels,) uint8; conv.pad is then 0. offset (out_channels,) int32 comes off
     * accumulators (a conv without thresholds). */
    pxq_conv_params conv;
    int32_t input_shift, shift_padding;
    pxq_buffer shift_border, offset;
    pxq_threshold_params threshold;  /* THRESHOLD: direction, thresholds, levels, qmin, threads */
    pxq_lookup_params lookup;        /* LOOKUP: tables, tables_count, depth, threads */
    int32_t qmin, qmax, shift;       /* ADD_CLIP */
    int32_t kernel, stride, extra_channels;  /* MAX_POOL (kernel, stride), SUBSAMPLE_PAD (stride, extra_channels) */
    pxq_buffer weight;               /* LINEAR: int32 (rows, cols); LINEAR_FLOAT: float32 (rows, cols) */
    int64_t rows, cols;
    int32_t threads;                 /* SUM_POOL */
    pxq_buffer bias;                 /* LINEAR_FLOAT: float32 (rows) */
    double step;                     /* LINEAR_FLOAT: the pooled codes' step */
} pxq_step;

typedef struct pxq_net pxq_net;

/* A value as the last run left it: its data, type (enum pxq_value_type) and shape. */
typedef struct {
    const void *data;
    int32_t type, ndim;
    int64_t shape[4];
} pxq_value;

PXQ_API pxq_net *pxq_net_new(void);
/* Adds a step, checked against the values before it; its output's value number, or -1 (the error
 * in pxq_last_error). */
PXQ_API int32_t pxq_net_add(pxq_net *net, const pxq_step *step);
/* Runs every step on uint8 images (batch, height, width, channels). */
PXQ_API int pxq_net_run(pxq_net *net, pxq_buffer images, int64_t batch, int64_t height, int64_t width, int64_t channels);
/* Value `index` as the last run left it; PXQ_ERROR_ARGUMENT for one it has not written. */
PXQ_API int pxq_net_value(const pxq_net *net, int32_t index, pxq_value *value);
/* The positions the last run's sum pool summed over (its input's height x width), 0 without one. */
PXQ_API int64_t pxq_net_pool_count(const pxq_net *net);
PXQ_API void pxq_net_free(pxq_net *net);

/* ---- A node of a model's plan, made into a step ----
 *
 * A plan's node as the model file holds it (pixelq/integer/ops.py: its attributes and its tensors as
 * int32 codes). pxq_net_add_node chooses the kernel that runs it under an instruction set - for a
 * conv: table sums (a first conv over a lookup, <= 16 channels), bit-planes packed through the
 * lookup, dot products (where its plane pairs make them cheaper) or bit-planes - lays its weights
 * out for that kernel and appends the step. pxq_load builds its net this way, and so does the Python
 * runtime, from the same plan. */
enum pxq_node_op {
    PXQ_NODE_LUT = 0, PXQ_NODE_CONV = 1, PXQ_NODE_FUSED_CONV = 2, PXQ_NODE_THRESHOLD = 3, PXQ_NODE_ADD_CLIP = 4,
    PXQ_NODE_SUBSAMPLE_PAD = 5, PXQ_NODE_MAX_POOL = 6, PXQ_NODE_SUM_POOL = 7, PXQ_NODE_LINEAR = 8,
    PXQ_NODE_LINEAR_FLOAT = 9,
};

/* A tensor of float32 values, row-major; data NULL: none. */
typedef struct {
    const float *data;
    int32_t ndim;
    int64_t shape[4];
} pxq_floats;

/* A tensor of integer codes, row-major; data NULL: the node holds none. */
typedef struct {
    const int32_t *data;
    int32_t ndim;
    int64_t shape[4];
} pxq_codes;

typedef struct {
    int32_t op;          /* enum pxq_node_op */
    int32_t inputs[2];   /* value numbers (0: the images), -1 for none */
    /* Its attributes, named as in the file; 0 where it has none (groups 0 or 1: a dense conv;
     * residual_stride 0: no residual add; table_sums 1: a first conv over a lookup the plan runs as
     * table sums). */
    int64_t in_channels, out_channels, kernel, stride, padding, groups;
    int64_t weight_bits, weight_lowest, weight_stride, input_range[2], input_shift;
    int64_t qmin, qmax, shift, extra_channels;
    int64_t residual_stride, residual_qmax, residual_shift, table_sums;
    /* Its tensors: weight (O, kh, kw, I) or (O, I), lut (tables, 256, d), direction (O,),
     * thresholds (O, qmax - qmin), offset (O,). A conv with thresholds writes codes qmin.. . */
    pxq_codes weight, lut, direction, thresholds, offset;
    /* A float last layer (linear_float): its weight (classes, C) and bias (classes,), and the pooled
     * codes' step. */
    pxq_floats float_weight, bias;
    double step;
} pxq_node;

/* Appends the step that runs `node` with `threads` under `isa` (NULL: the best this CPU has); its
 * value number, or -1 with the error: PXQ_ERROR_UNSUPPORTED for a node no kernel runs yet (a grouped
 * conv, codes wider than a byte, a float layer). */
PXQ_API int32_t pxq_net_add_node(pxq_net *net, const pxq_node *node, const char *isa, int32_t threads);
/* How step k (0-based) runs: the conv kernel (enum pxq_conv_kind) and, for the bit-plane kernels,
 * its input planes and weight bits; kind -1 for a step that is no conv. The status. */
PXQ_API int pxq_net_step_kernel(const pxq_net *net, int32_t step, int32_t *kind, int32_t *planes, int32_t *bits);
/* Seconds each step took in the last run (steps values), timed when `profile` was set before it. */
PXQ_API int pxq_net_profile(pxq_net *net, int32_t profile);
PXQ_API int pxq_net_step_seconds(const pxq_net *net, double *seconds, int32_t steps);
/* The number of steps. */
PXQ_API int32_t pxq_net_steps(const pxq_net *net);

PXQ_API int pxq_conv(const pxq_conv_params *params);
PXQ_API int pxq_threshold(const pxq_threshold_params *params);
PXQ_API int pxq_lookup(const pxq_lookup_params *params);
PXQ_API int pxq_sum_pool(const pxq_pool_params *params);

/* The output rows (or columns) of a conv or pool: (size + 2 pad - kernel) / stride + 1, or 0 where
 * the window does not fit. */
PXQ_API int64_t pxq_conv_out_size(int64_t size, int32_t kernel, int32_t stride, int32_t pad);

/* The message of this thread's last error ("" when none), and its code (PXQ_ERROR_*). */
PXQ_API const char *pxq_last_error(void);
PXQ_API int pxq_last_status(void);
/* The instruction sets this CPU runs the kernels with, worst to best, comma-separated. */
PXQ_API const char *pxq_isas(void);
/* The instructions the DOT conv of build `isa` runs with ("portable", "avx2" or "avx512vnni"), NULL
 * for a build this CPU does not run. */
PXQ_API const char *pxq_dot_isa(const char *isa);
/* 1 if this CPU has `feature` (a __builtin_cpu_supports name, e.g. "avx512vnni"), else 0. */
PXQ_API int pxq_cpu_has(const char *feature);
/* The byte offset of `field` in struct `name` ("pxq_conv_params", ...), -1 for an unknown one;
 * for bindings to check their copy of the layout. */
PXQ_API int64_t pxq_field_offset(const char *name, const char *field);
/* sizeof struct `name`, -1 for an unknown one. */
PXQ_API int64_t pxq_struct_size(const char *name);

#ifdef __cplusplus
}
#endif
#endif
