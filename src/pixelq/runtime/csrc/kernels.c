/* pixelq integer runtime kernels.
 *
 * Activations are integer codes; a conv reads them as bit-planes. Plane p of an image is laid out
 * (H + 2 pad, W + 2 pad, Cb) bytes, Cb = ceil(C / 8): each pixel's channels as Cb bytes, pixels
 * side by side, a zero border for the padding. So the kw taps of one window row are kw * Cb
 * contiguous bytes, read as Kr = ceil(kw * Cb / 8) unaligned 64-bit words; with 16 channels, a
 * 3-tap row is 48 bits, one word. Bits a word reads past the window belong to the next pixels and
 * meet zero weight bits. Weights (code q = lowest + stride * u, plane j of u) are packed the same
 * way, as words (J, KH, Kr, Opad) with output channels innermost, so a vector holds 8 channels.
 *
 *   acc = lowest * S + stride * sum_{p, j} 2^(p+j) sum_{ky, r} popcount(W_j[ky, r] & X_p[ky, r])
 *
 * where S is the sum of the input codes in the window (from per-pixel sums). Binary weights are the
 * case lowest = -1, stride = 2, one plane: acc = 2 popcount(w & x) - popcount(x), the AND form of
 * the {-1,+1} decomposition; k-bit codes are sums of binary branches, one per plane pair.
 *
 * The AVX-512 VPOPCNTDQ conv keeps a tile of R output positions x V vectors of 8 channels in
 * registers; plane pairs are summed Horner-style (the tile doubles between shift levels), and the
 * batch norm + activation of the next layer is applied to the tile as integer thresholds. With
 * AVX-512 BITALG, 16- and 32-channel 3x3 stride-1 convs run with a row's positions in the lanes
 * instead (conv_lanes.h). AVX2 has both convs too, with popcounts by nibble table (conv_avx2.h).
 * On AArch64, NEON builds of the tile, table and dot-product convs (conv_neon.h, dot_sdot.h).
 * The portable conv is the same arithmetic, one position at a time. Each call runs the build its
 * `isa` keyword names (ISAS), by default the best this CPU has; the tests check every one.
 *
 * The first conv, when it reads a per-pixel lookup table (pixel embedding, int8 pixel codes), sums
 * per-(tap, colour, pixel value) tables of its output channels' partial sums (table_conv: 27 vector
 * adds per window for a 3x3 kernel on RGB, no bit-planes; int8 entries, or int16 where the sums
 * need them); where those tables do not fit (more than 16 channels, sums beyond int16), it packs
 * its planes straight from the pixel values (lut_conv): a pixel's plane is an OR of shifted table
 * words.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define PIXELQ_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__) && defined(__GNUC__)
#define PIXELQ_ARM64 1
#include <arm_neon.h>
#ifdef __linux__
#include <sys/auxv.h>
#endif
#endif

#include "pixelq.h"
#include "internal.h"

typedef ptrdiff_t ssize;

#define DOT_POSITIONS 32  /* output positions per work item of the dot-product convs */
#define NARROW_LEVELS 30    /* the int16 epilogue: activation codes of up to 4 bits, signed ones too, */
#define NARROW_CHANNELS 64  /* up to 64 output channels */
#define SEARCH_LEVELS 8     /* the lanes convs search sorted thresholds from this many levels on */

static inline uint64_t load_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Bit p of 8 code bytes -> 8 bits: mask the bit in each byte, then one multiply gathers them. */
static inline uint64_t gather_bits8(uint64_t eight_codes, int p) {
    return (((eight_codes >> p) & 0x0101010101010101ULL) * 0x0102040810204080ULL) >> 56;
}

/* ---- The conv's geometry, shared by every build. ---- */

typedef struct isa isa_t;

typedef struct {
    ssize N, H, W, C, HO, WO, O, Opad;
    int P, J, KH, KW, Kr, Cb, stride, pad, lowest, wstride;
    ssize Hp, Wp, row_bytes, plane_bytes, image_bytes;
    const uint8_t *codes;  /* (N, H, W, C) input codes (for a LUT conv: the uint8 image) */
    /* LUT conv (pack_row_lut): codes is the uint8 image (N, H, W, image_C), C = image_C * d. */
    const uint64_t *lut_bits;  /* (T, 256, P): plane p of the d codes a pixel value looks up, bit j = code j */
    const int32_t *lut_sums;   /* (T, 256): the sum of those d codes */
    int lut_tables, lut_d, image_C;
    int table16;           /* table_conv: int16 table entries (else int8) */
    const uint64_t *w;     /* (J, KH, Kr, Opad) weight words */
    uint8_t *x;            /* (N, P, Hp, Wp, Cb) packed planes, each image followed by 8 bytes of
                              slack (zero) that its last window word may read */
    int32_t *hsums;        /* (N, Hp, WO): row yp's code sum over the KW columns of each output column's
                              window, or NULL when lowest == 0 */
    int32_t *window;       /* (N, HO, WO): each window's code sum, KH rows of hsums, or NULL */
    int32_t *acc;          /* (N, HO, WO, O) accumulators, or NULL when fused */
    uint8_t *out;          /* (N, HO, WO, O) codes, when fused */
    const int8_t *dir;     /* (Opad,) +1 / -1 */
    const int32_t *thr;    /* (L, Opad) */
    int L, qmin, threads;
    /* Optional residual add after the thresholds: code = clip(code + res - res_shift, 0, res_qmax),
     * res read from uint8 codes (N, res_H, res_W, res_C) at (oy * res_stride, ox * res_stride);
     * channels from res_C on add 0 (the zero-padded shortcut of a downsampling block). res_shift:
     * the thresholds' codes are a signed branch's plus res_shift (fusion.unsign_residual_branch). */
    const uint8_t *res;
    ssize res_H, res_W, res_C;
    int res_stride, res_qmax, res_shift;
    /* Set where a fused conv's accumulators fit int16 (narrow_fits): the AVX-512 epilogue then
     * finishes 32 int16 lanes per vector, two positions of 16 channels or 32 channels of one, with
     * these thresholds (clamped to int16, exact since no accumulator reaches the clamp) and the
     * directions as a bit mask (bit o set where channel o's is negative). */
    int narrow;
    int16_t thr16[NARROW_LEVELS][NARROW_CHANNELS];
    uint64_t neg64;
    /* For the lanes convs (conv_lanes.h, 16 or 32 channels): the weight bits of output channel o at
     * tap (ky, kx) of plane j as a 32-bit lane (16 bits twice for 16 channels); set by run_conv. */
    uint32_t lane_w[8][9][32];
    /* The lanes convs' epilogue by halving (prepare_lane_search): where every channel's thresholds
     * are sorted and there are SEARCH_LEVELS or more, channel o's as a table of 32 entries, the
     * largest value past level L, searched in search_steps compares (0: compare every level). */
    int search_steps;
    int16_t search16[16][32];  /* 16 channels, int16 lanes: the clamped thresholds (thr16) */
    int32_t search32[32][32];  /* 32 channels, int32 lanes */
    uint64_t *w_nib;  /* the AVX2 convs' weights by nibble, made per call (prepare_avx2, conv_avx2.h) */
    /* The dot-product convs (dot_portable, dot_avx2, dot_vnni): codes as bytes (P = 1 "plane" of Cb = C rounded up to 4 bytes
     * per pixel), int8 weights (KH, KW, Cb / 4, Opad / 8, 8, 4); lowest = 0 and wstride = 1. */
    int dot;
    const int8_t *wdot;
    int64_t dot_bound;     /* the largest |accumulator| this call's codes and weights can reach */
    int64_t dot_pair_max;  /* the largest |code x w + code x w'| (a VPMADDUBSW pair) */
    int dot_top;           /* the largest input code (SDOT reads codes as signed bytes) */
    const isa_t *isa;               /* the build that runs this call */
} conv_t;

/* The code sum of each of the W pixels of a row of codes, into sums[0 .. W). */
static void pixel_sums_portable(const conv_t *c, const uint8_t *codes, int32_t *sums) {
    for (ssize px = 0; px < c->W; px++, codes += c->C) {
        uint32_t s = 0;
        for (ssize i = 0; i < c->C; i++) s += codes[i];
        sums[px] = (int32_t)s;
    }
}

/* Pack one image row of codes into its P plane rows (interior of the padded layout), and when
 * `sums` is given, write its pixels' code sums there. */
static void pack_row_portable(const conv_t *c, ssize n, ssize y, int32_t *sums) {
    const uint8_t *src = c->codes + (n * c->H + y) * c->W * c->C;
    for (ssize px = 0; px < c->W; px++) {
        const uint8_t *code = src + px * c->C;
        ssize at = (y + c->pad) * c->row_bytes + (px + c->pad) * c->Cb;
        for (int b = 0; b < c->Cb; b++) {
            uint64_t chunk = 0;
            ssize take = c->C - 8 * b < 8 ? c->C - 8 * b : 8;
            memcpy(&chunk, code + 8 * b, take);  /* little-endian: byte i is channel 8b + i */
            for (int p = 0; p < c->P; p++)
                c->x[n * c->image_bytes + p * c->plane_bytes + at + b] = (uint8_t)gather_bits8(chunk, p);
        }
    }
    if (sums) pixel_sums_portable(c, src, sums);
}

/* Pack one image row straight from pixel values through a lookup table (pixel embedding): colour
 * ch's d codes take channels ch*d .. ch*d + d - 1, so each plane of a pixel is an OR of shifted
 * table words; the pixel's code sum comes from the table too. Needs C = image_C * d <= 64. */
static void pack_row_lut(const conv_t *c, ssize n, ssize y, int32_t *sums) {
    const uint8_t *src = c->codes + (n * c->H + y) * c->W * c->image_C;
    uint8_t *dst = c->x + n * c->image_bytes + (y + c->pad) * c->row_bytes + c->pad * c->Cb;
    for (ssize px = 0; px < c->W; px++, src += c->image_C) {
        uint64_t planes[8] = {0};
        int32_t s = 0;
        for (int ch = 0; ch < c->image_C; ch++) {
            ssize row = (c->lut_tables == 1 ? 0 : ch) * 256 + src[ch];
            for (int p = 0; p < c->P; p++) planes[p] |= c->lut_bits[row * c->P + p] << (ch * c->lut_d);
            s += c->lut_sums[row];
        }
        for (int p = 0; p < c->P; p++) memcpy(dst + p * c->plane_bytes + px * c->Cb, &planes[p], c->Cb);
        if (sums) sums[px] = s;
    }
}

/* Padded row yp's horizontal window sums from its pixel sums `row` (Wp entries, zero padding
 * included); a border row (row == NULL) sums to zero. */
static void hsums_row(const conv_t *c, ssize n, ssize yp, const int32_t *row) {
    int32_t *out = c->hsums + (n * c->Hp + yp) * c->WO;
    if (!row) {
        memset(out, 0, sizeof(int32_t) * c->WO);
        return;
    }
    if (c->KW == 3 && c->stride == 1) {  /* the common case, as a loop the compiler vectorises */
        for (ssize ox = 0; ox < c->WO; ox++) out[ox] = row[ox] + row[ox + 1] + row[ox + 2];
        return;
    }
    for (ssize ox = 0; ox < c->WO; ox++) {
        int32_t s = 0;
        for (int kx = 0; kx < c->KW; kx++) s += row[ox * c->stride + kx];
        out[ox] = s;
    }
}

/* One output row of window code sums: KH rows of horizontal sums, a whole row per vector add. */
static void window_sums_row(const conv_t *c, ssize n, ssize oy) {
    int32_t *restrict out = c->window + (n * c->HO + oy) * c->WO;
    const int32_t *restrict h = c->hsums + (n * c->Hp + oy * c->stride) * c->WO;
    memcpy(out, h, sizeof(int32_t) * c->WO);
    for (int ky = 1; ky < c->KH; ky++)
        for (ssize ox = 0; ox < c->WO; ox++) out[ox] += h[ky * c->WO + ox];
}

/* S of global output position m, the code sum of its window (0 when the weights have no offset,
 * lowest == 0). */
static inline int64_t window_sum(const conv_t *c, ssize m) { return c->window ? c->window[m] : 0; }

/* Offset of position (n, oy, ox)'s shortcut codes in the residual input. */
static ssize residual_offset(const conv_t *c, ssize n, ssize oy, ssize ox) {
    return ((n * c->res_H + oy * c->res_stride) * c->res_W + ox * c->res_stride) * c->res_C;
}

/* Every channel of global position m: int32 accumulators, or codes by thresholds (plus the
 * residual at offset `r` when there is one). */
static void finish_portable(const conv_t *c, ssize m, const int64_t *tot, int64_t S, ssize r) {
    for (ssize o = 0; o < c->O; o++) {
        int64_t a = c->wstride * tot[o] + c->lowest * S;
        if (!c->out) {
            c->acc[m * c->O + o] = (int32_t)a;
            continue;
        }
        int64_t s = a * c->dir[o];
        int code = c->qmin;
        for (int l = 0; l < c->L; l++) code += s >= c->thr[(ssize)l * c->Opad + o];
        if (c->res) {
            code += (o < c->res_C ? c->res[r + o] : 0) - c->res_shift;
            code = code < 0 ? 0 : code < c->res_qmax ? code : c->res_qmax;
        }
        c->out[m * c->O + o] = (uint8_t)code;
    }
}

/* Where each of `count` positions from m0 of image n starts its window in the packed planes (and,
 * with a residual add, where its shortcut codes start in `roff`); past `count` the caller repeats
 * the last, so a partial tile reads valid memory. Stepped along the output row, reset at row starts. */
static void window_positions(const conv_t *c, ssize n, ssize m0, ssize count, ssize *pos, ssize *roff) {
    const ssize step = (ssize)c->stride * c->Cb, res_step = (ssize)c->res_stride * c->res_C;
    ssize oy = m0 / c->WO, ox = m0 % c->WO;
    for (ssize i = 0, p = oy * c->stride * c->row_bytes + ox * step; i < count; i++, p += step) {
        if (ox == c->WO) ox = 0, oy++, p = oy * c->stride * c->row_bytes;
        pos[i] = p, ox++;
    }
    if (!c->res) return;
    oy = m0 / c->WO, ox = m0 % c->WO;
    for (ssize i = 0, r = residual_offset(c, n, oy, ox); i < count; i++, r += res_step) {
        if (ox == c->WO) ox = 0, oy++, r = residual_offset(c, n, oy, 0);
        roff[i] = r, ox++;
    }
}

#ifdef PIXELQ_X86
/* The code sum of each of the W pixels of a row of codes (C a multiple of 8): PSADBW against zero
 * sums each 8 bytes (SSE2, so every x86 build shares it). */
static void pixel_sums_sad(const conv_t *c, const uint8_t *codes, int32_t *sums) {
    for (ssize px = 0; px < c->W; px++, codes += c->C) {
        __m128i acc = _mm_setzero_si128();
        ssize i = 0;
        for (; i + 16 <= c->C; i += 16)
            acc = _mm_add_epi64(acc, _mm_sad_epu8(_mm_loadu_si128((const __m128i *)(codes + i)), _mm_setzero_si128()));
        if (i < c->C) acc = _mm_add_epi64(acc, _mm_sad_epu8(_mm_loadl_epi64((const __m128i *)(codes + i)), _mm_setzero_si128()));
        sums[px] = (int32_t)(_mm_cvtsi128_si64(acc) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc)));
    }
}
#endif

/* ---- The first conv as table sums (pixel embedding, <= 16 output channels). ----
 * table (256, KH * KW * image_C, 16) int8 (int16 with table16): entry (v, t, ch) holds, for each
 * output channel, the sum over the d codes that pixel value v looks up in colour ch of code x weight
 * at tap t. Value-major, so a value's entries for every tap share a few cache lines (tap-major, the
 * entries of one value lay 4 KB apart, all in one L1 set: the fewer distinct values nearby, the
 * slower it ran; images of 8 distinct values 2.4x slower than random ones). A window's
 * accumulator is the sum of its KH * KW * image_C entries; taps in the zero padding add nothing
 * (their codes are 0). The export keeps the accumulators in int32; these stay inside +-32000
 * (checked by the caller), so the AVX-512 build adds 16 channels in one 256-bit vector and finishes
 * two positions per 512-bit vector. (int16 tables, with no widening per load, measured slower: they
 * serve only where int8 entries cannot hold the sums, as an int8 first layer's +128.) */
static void table_conv_portable(const conv_t *c, const void *table, ssize n, ssize oy) {
    const ssize taps = (ssize)c->KH * c->KW * c->image_C;
    int64_t tot[16];
    for (ssize ox = 0; ox < c->WO; ox++) {
        memset(tot, 0, sizeof(tot));
        for (int ky = 0; ky < c->KH; ky++) {
            ssize y = oy * c->stride + ky - c->pad;
            if (y < 0 || y >= c->H) continue;
            for (int kx = 0; kx < c->KW; kx++) {
                ssize x = ox * c->stride + kx - c->pad;
                if (x < 0 || x >= c->W) continue;
                const uint8_t *px = c->codes + ((n * c->H + y) * c->W + x) * c->image_C;
                for (int ch = 0; ch < c->image_C; ch++) {
                    const ssize e = ((ssize)px[ch] * taps + (ky * c->KW + kx) * c->image_C + ch) * 16;
                    for (int o = 0; o < 16; o++)
                        tot[o] += c->table16 ? ((const int16_t *)table)[e + o] : ((const int8_t *)table)[e + o];
                }
            }
        }
        finish_portable(c, (n * c->HO + oy) * c->WO + ox, tot, 0, 0);
    }
}

/* The portable conv over the packed planes of image n, positions [m0, m1): one output position at a
 * time, the arithmetic of every build. */
static void conv_portable(const conv_t *c, ssize n, ssize m0, ssize m1) {
    int64_t *tot = malloc(sizeof(int64_t) * c->O);
    if (!tot) return;  /* cannot happen for any real layer; the caller's buffers are far larger */
    const uint8_t *xn = c->x + n * c->image_bytes;
    for (ssize m = m0; m < m1; m++) {
        ssize oy = m / c->WO, ox = m % c->WO;
        memset(tot, 0, sizeof(int64_t) * c->O);
        for (int p = 0; p < c->P; p++)
            for (int j = 0; j < c->J; j++)
                for (int ky = 0; ky < c->KH; ky++) {
                    const uint8_t *row = xn + p * c->plane_bytes + (oy * c->stride + ky) * c->row_bytes +
                                         ox * c->stride * c->Cb;
                    for (int r = 0; r < c->Kr; r++) {
                        const uint64_t xv = load_u64(row + 8 * r);
                        if (!xv) continue;
                        const uint64_t *restrict wv = c->w + (((ssize)j * c->KH + ky) * c->Kr + r) * c->Opad;
                        for (ssize o = 0; o < c->O; o++) tot[o] += (int64_t)__builtin_popcountll(wv[o] & xv) << (p + j);
                    }
                }
        finish_portable(c, n * c->HO * c->WO + m, tot, window_sum(c, n * c->HO * c->WO + m),
                        c->res ? residual_offset(c, n, oy, ox) : 0);
    }
    free(tot);
}

/* The dot-product conv, portable: codes times int8 weights, one output position at a time, the
 * weights read in their stored order (tap, group of 4 channels, block of 8 outputs). */
static void dot_portable(const conv_t *c, ssize n, ssize m0, ssize m1) {
    int64_t *tot = malloc(sizeof(int64_t) * c->Opad);
    if (!tot) return;  /* as conv_portable */
    const uint8_t *xn = c->x + n * c->image_bytes;
    const ssize groups = c->Cb / 4, blocks = c->Opad / 8;
    for (ssize m = m0; m < m1; m++) {
        ssize oy = m / c->WO, ox = m % c->WO;
        memset(tot, 0, sizeof(int64_t) * c->Opad);
        for (int ky = 0; ky < c->KH; ky++)
            for (int kx = 0; kx < c->KW; kx++) {
                const uint8_t *px = xn + (oy * c->stride + ky) * c->row_bytes + (ox * c->stride + kx) * c->Cb;
                const int8_t *w = c->wdot + ((ssize)ky * c->KW + kx) * groups * blocks * 32;
                for (ssize g = 0; g < groups; g++, px += 4)  /* channels past C are zero codes and weights */
                    for (ssize o = 0; o < c->Opad; o++, w += 4) tot[o] += px[0] * w[0] + px[1] * w[1] + px[2] * w[2] + px[3] * w[3];
            }
        finish_portable(c, n * c->HO * c->WO + m, tot, 0, c->res ? residual_offset(c, n, oy, ox) : 0);
    }
    free(tot);
}

/* One image row of codes into the dot conv's padded rows of Cb bytes per pixel (channels C .. Cb
 * zero). */
static void pack_row_bytes(const conv_t *c, ssize n, ssize y, int32_t *sums) {
    (void)sums;  /* the dot conv's weights have no offset: no window sums */
    const uint8_t *src = c->codes + (n * c->H + y) * c->W * c->C;
    uint8_t *dst = c->x + n * c->image_bytes + (y + c->pad) * c->row_bytes + c->pad * c->Cb;
    if (c->Cb == c->C) {
        memcpy(dst, src, c->W * c->C);
        return;
    }
    for (ssize px = 0; px < c->W; px++, src += c->C, dst += c->Cb) {
        memcpy(dst, src, c->C);
        memset(dst + c->C, 0, c->Cb - c->C);
    }
}


#ifdef PIXELQ_ARM64
#include "conv_neon.h"
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#include "dot_sdot.h"
#pragma GCC pop_options
#endif

#ifdef PIXELQ_X86
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
#include "conv_avx2.h"
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,popcnt")
#include "conv_avx512.h"
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,avx512vnni,popcnt")
#include "dot_vnni.h"
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,avx512bitalg,popcnt")
#include "conv_lanes.h"
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2")
/* Bytes through one 256-entry table, 32 at a time: a block of codes below 16 (a requantized 4-bit
 * residual stream's) by one byte shuffle of the table's first 16 entries, any other block byte by byte. */
static void lut_bytes_avx2(const uint8_t *restrict in, ssize count, const uint8_t *restrict table,
                           uint8_t *restrict out) {
    const __m256i low = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)table));
    const __m256i high = _mm256_set1_epi8((char)0xF0);
    ssize i = 0;
    for (; i + 32 <= count; i += 32) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(in + i));
        if (_mm256_testz_si256(x, high))
            _mm256_storeu_si256((__m256i *)(out + i), _mm256_shuffle_epi8(low, x));
        else
            for (int j = 0; j < 32; j++) out[i + j] = table[in[i + j]];
    }
    for (; i < count; i++) out[i] = table[in[i]];
}
#pragma GCC pop_options
#endif

typedef void (*positions_fn)(const conv_t *c, ssize n, ssize m0, ssize m1);
typedef void (*table_fn)(const conv_t *c, const void *table, ssize n, ssize oy);
typedef void (*pack_fn)(const conv_t *c, ssize n, ssize y, int32_t *sums);
typedef void (*row_fn)(const conv_t *c, ssize n, ssize oy);

/* One build of the kernels: a call runs with the one its `isa` names (default: the best this CPU has). */
struct isa {
    const char *name;
    const char *needs[8];  /* the CPU features it needs (__builtin_cpu_supports names), NULL after the last */
    positions_fn conv;     /* the tile conv over a chunk of output positions */
    ssize chunk;           /* output positions per work item of the parallel loop */
    pack_fn pack;
    table_fn table;
    row_fn rows16, rows32;  /* the 16- and 32-channel convs by output rows, where built */
    int rows32_narrow;      /* rows32 needs the int16 epilogue too */
    positions_fn gather;    /* the conv of gathered positions in lanes (gather_fits), where built */
    positions_fn dot;       /* the dot-product conv */
    const char *dot_name;   /* the instruction set it runs on */
    positions_fn dot_vnni;  /* the same with AVX-512 VNNI, where the CPU has it (else dot runs) */
    /* Makes c->w_nib for the conv run_conv chose (lanes, gather or tile); 0 when out of memory. */
    int (*prepare)(conv_t *c, int lanes, int gather);
};

static const isa_t ISAS[] = {  /* worst to best */
    {.name = "portable", .conv = conv_portable, .chunk = 16, .pack = pack_row_portable, .table = table_conv_portable,
     .dot = dot_portable, .dot_name = "portable"},
#ifdef PIXELQ_X86
    {.name = "avx2", .needs = {"avx2", "popcnt"}, .conv = conv_avx2, .chunk = AVX2_POSITIONS, .pack = pack_row_avx2,
     .table = table_conv_avx2, .rows16 = conv_rows16_avx2, .rows32 = conv_rows32_avx2, .rows32_narrow = 1,
     .gather = conv_gather_avx2, .dot = dot_avx2, .dot_name = "avx2", .prepare = prepare_avx2},
    {.name = "avx512vpopcntdq", .needs = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vpopcntdq", "popcnt"},
     .conv = conv_avx512, .chunk = AVX512_POSITIONS, .pack = pack_row_avx512, .table = table_conv_avx512,
     .dot = dot_avx2, .dot_name = "avx2", .dot_vnni = dot_vnni},
    {.name = "avx512bitalg",
     .needs = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vpopcntdq", "avx512bitalg", "popcnt"},
     .conv = conv_avx512, .chunk = AVX512_POSITIONS, .pack = pack_row_avx512, .table = table_conv_avx512,
     .rows16 = conv_rows16, .rows32 = conv_rows32, .dot = dot_avx2, .dot_name = "avx2", .dot_vnni = dot_vnni},
#endif
#ifdef PIXELQ_ARM64
    {.name = "neon", .needs = {"asimd"}, .conv = conv_neon, .chunk = NEON_POSITIONS, .pack = pack_row_portable,
     .table = table_conv_neon, .dot = dot_portable, .dot_name = "portable"},
    {.name = "neon-dotprod", .needs = {"asimd", "asimddp"}, .conv = conv_neon, .chunk = NEON_POSITIONS,
     .pack = pack_row_portable, .table = table_conv_neon, .dot = dot_sdot, .dot_name = "neon-dotprod"},
#endif
};
#define ISA_COUNT ((int)(sizeof(ISAS) / sizeof(ISAS[0])))

static int cpu_has(const char *feature) {
#ifdef PIXELQ_X86
    __builtin_cpu_init();
    /* __builtin_cpu_supports takes only string literals */
#define FEATURE(f) if (strcmp(feature, f) == 0) return __builtin_cpu_supports(f);
    FEATURE("avx2") FEATURE("popcnt") FEATURE("avx512f") FEATURE("avx512bw") FEATURE("avx512vl")
    FEATURE("avx512dq") FEATURE("avx512vpopcntdq") FEATURE("avx512bitalg") FEATURE("avx512vnni") FEATURE("avxvnni")
#undef FEATURE
#endif
#if defined(PIXELQ_ARM64) && defined(__linux__)
    /* AArch64 always has Advanced SIMD; the dot-product extension (ARMv8.2) is HWCAP bit 20 */
    if (strcmp(feature, "asimd") == 0) return 1;
    if (strcmp(feature, "asimddp") == 0) return (getauxval(AT_HWCAP) >> 20) & 1;
#elif defined(PIXELQ_ARM64)
    if (strcmp(feature, "asimd") == 0) return 1;
#endif
    (void)feature;
    return 0;
}

static int isa_available(const isa_t *isa) {
    for (int i = 0; isa->needs[i]; i++)
        if (!cpu_has(isa->needs[i])) return 0;
    return 1;
}

/* The build named `name` if this CPU runs it, else NULL. */
static const isa_t *find_isa(const char *name) {
    for (int i = 0; i < ISA_COUNT; i++)
        if (strcmp(ISAS[i].name, name) == 0) return isa_available(&ISAS[i]) ? &ISAS[i] : NULL;
    return NULL;
}

static const isa_t *best_isa(void) {
    for (int i = ISA_COUNT - 1; i > 0; i--)
        if (isa_available(&ISAS[i])) return &ISAS[i];
    return &ISAS[0];
}

const char *pxq_best_isa(void) { return best_isa()->name; }

/* Zero the padding of padded row yp of image n (all of it for a border row). */
static void clear_padding(const conv_t *c, ssize n, ssize yp, int interior) {
    ssize side = c->pad * c->Cb, right = (c->pad + c->W) * c->Cb;
    for (int p = 0; p < c->P; p++) {
        uint8_t *row = c->x + n * c->image_bytes + p * c->plane_bytes + yp * c->row_bytes;
        if (!interior) {
            memset(row, 0, c->row_bytes);
        } else {
            memset(row, 0, side);
            memset(row + right, 0, side);
        }
    }
}

/* The scratch memory of a conv call (planes and sums), kept between calls: a fresh buffer this
 * size comes from mmap, and its page faults cost a third of a whole network's time. A call takes
 * the cached buffer (or, when another call holds it or it is too small, allocates one) and puts
 * its buffer back when done, so at most one buffer stays cached. */
typedef struct {
    size_t bytes;
    max_align_t data[];
} scratch_t;
static scratch_t *scratch_cache = NULL;

static scratch_t *scratch_take(size_t bytes) {
    scratch_t *s = __atomic_exchange_n(&scratch_cache, NULL, __ATOMIC_ACQ_REL);
    if (s && s->bytes >= bytes) return s;
    free(s);
    s = malloc(sizeof(scratch_t) + bytes);
    if (s) s->bytes = bytes;
    return s;
}

static void scratch_give(scratch_t *s) { free(__atomic_exchange_n(&scratch_cache, s, __ATOMIC_ACQ_REL)); }

static size_t round64(size_t bytes) { return (bytes + 63) / 64 * 64; }

static int thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Whether a fused conv can finish in int16 lanes: 16, 32 or 64 channels (whole vectors of 32 lanes,
 * or pairs of 16-channel positions), a shortcut of whole 16-channel groups, and every accumulator
 * wstride * tot + lowest * S inside +-32000, each of its two terms too. */
static int narrow_fits(const conv_t *c) {
    if (!c->out || c->O != c->Opad || (c->O != 16 && c->O != 32 && c->O != 64) || c->L > NARROW_LEVELS ||
        (c->res && c->res_C % 16))
        return 0;
    if (c->dot) return c->dot_bound < 32000;
    int64_t codes = (int64_t)c->KH * c->KW * c->C * ((1 << c->P) - 1);  /* the largest window code sum S */
    int64_t top = (int64_t)c->wstride * ((1 << c->J) - 1);              /* the largest weight offset */
    int64_t low = c->lowest < 0 ? -(int64_t)c->lowest : c->lowest;
    return (top + low) * codes < 32000;
}

/* Set c->narrow to `fits` and, where it holds, the int16 thresholds and direction mask. */
static void prepare_narrow(conv_t *c, int fits) {
    c->narrow = fits;
    if (!fits) return;
    /* A 16-channel conv finishes two positions per vector: channels 0-15 again in lanes 16-31. */
    const int lanes = c->O == 16 ? 32 : (int)c->O;
    c->neg64 = 0;
    for (int k = 0; k < lanes; k++) c->neg64 |= (uint64_t)(c->dir[k % c->O] < 0) << k;
    for (int l = 0; l < c->L; l++)
        for (int k = 0; k < lanes; k++) {
            int32_t t = c->thr[(ssize)l * c->Opad + k % c->O];
            c->thr16[l][k] = (int16_t)(t < -32768 ? -32768 : t > 32767 ? 32767 : t);
        }
}

/* Padded row yp of image n: its padding zeroed, its planes packed, and (with `row`, a thread's
 * pixel-sum row) its horizontal window sums. */
static void pack_padded_row(const conv_t *c, ssize n, ssize yp, int32_t *row) {
    ssize y = yp - c->pad;
    int interior = y >= 0 && y < c->H;
    clear_padding(c, n, yp, interior);
    int32_t *sums = row ? row + c->pad : NULL;
    if (interior) (c->lut_bits ? pack_row_lut : c->dot ? pack_row_bytes : c->isa->pack)(c, n, y, sums);
    if (row) hsums_row(c, n, yp, interior ? row : NULL);
    if (yp == c->Hp - 1) memset(c->x + n * c->image_bytes + c->P * c->plane_bytes, 0, 8);  /* the slack */
}

/* The lanes conv (conv_lanes.h) that takes this conv, or NULL: as many input as output channels,
 * 16 (with the int16 epilogue) or 32 (AVX2: with it too), 3x3, stride 1, fused thresholds, a shortcut (if any) of as
 * many channels, or of 16 for 32 (a zero-padded downsampling shortcut). */
static row_fn lanes_fits(const conv_t *c) {
    if (c->dot || !c->out || c->C != c->O || c->Opad != c->O || c->KH != 3 || c->KW != 3 || c->stride != 1 || c->J > 8 ||
        (c->res && c->res_C != c->O && !(c->O == 32 && c->res_C == 16)))
        return NULL;
    if (c->O == 16) return c->narrow ? c->isa->rows16 : NULL;
    if (c->O == 32) return c->narrow || !c->isa->rows32_narrow ? c->isa->rows32 : NULL;
    return NULL;
}

/* c->lane_w from the packed weight words: tap kx's channels are bits CH * kx .. of row ky. */
static void prepare_lane_weights(conv_t *c) {
    const int CH = (int)c->O;
    for (int j = 0; j < c->J; j++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++)
                for (int o = 0; o < CH; o++) {
                    const uint64_t *row = c->w + ((ssize)j * 3 + ky) * c->Kr * c->Opad + o;
                    uint32_t bits = (uint32_t)(row[(CH * kx / 64) * c->Opad] >> (CH * kx % 64));
                    c->lane_w[j][3 * ky + kx][o] = CH == 16 ? (bits & 0xFFFF) * 0x10001u : bits;
                }
}

/* c->search_steps and the lanes convs' search tables: channel o's L thresholds (clamped to int16 for
 * 16 channels, which have the int16 epilogue), then the largest value up to entry 31. A search of k
 * halvings counts the entries <= s among the first 2^k - 1, so k is the least with 2^k - 1 >= L;
 * clipped to L, the count is exact even for an s at the pad value. Unsorted thresholds (no export
 * makes them, a hand-made file may) keep the compare per level, whose count needs no order. */
static void prepare_lane_search(conv_t *c) {
    const int CH = (int)c->O;
    c->search_steps = 0;
    if (c->L < SEARCH_LEVELS || c->L > 31) return;
    for (int o = 0; o < CH; o++)
        for (int l = 1; l < c->L; l++)
            if (c->thr[(ssize)l * c->Opad + o] < c->thr[(ssize)(l - 1) * c->Opad + o]) return;
    for (int o = 0; o < CH; o++)
        for (int l = 0; l < 32; l++) {
            if (CH == 16) c->search16[o][l] = l < c->L ? c->thr16[l][o] : INT16_MAX;
            else c->search32[o][l] = l < c->L ? c->thr[(ssize)l * c->Opad + o] : INT32_MAX;
        }
    while ((1 << c->search_steps) - 1 < c->L) c->search_steps++;
}

/* Whether the build's gathered lanes conv (conv_avx2.h) takes this conv: fused with the int16
 * epilogue, input channels in whole slices of 32, at most 15 taps (byte counts of a slice stay
 * under 256), its regrouped words and tables within their buffers (GATHER_SLICES_MAX, 256 KB). */
static int gather_fits(const conv_t *c) {
    const ssize taps = (ssize)c->KH * c->KW, slices = c->C / 32;
    return c->isa->gather && !c->dot && !c->lut_bits && c->out && c->narrow && c->C % 32 == 0 && taps <= 15 &&
           c->P * taps * slices <= 64 && c->J * taps * slices * c->O * 128 <= 256 * 1024;
}

/* Work item k of image n: output row k (lanes conv), or the k-th chunk of positions. */
static void conv_item(const conv_t *c, positions_fn positions, row_fn lanes, ssize n, ssize k, ssize chunk) {
    ssize M = c->HO * c->WO;
    if (lanes) lanes(c, n, k);
    else positions(c, n, k * chunk, (k + 1) * chunk < M ? (k + 1) * chunk : M);
}

/* The dot-product conv this call's build runs: with VNNI where the build has it and the CPU too. */
static positions_fn dot_conv_of(const isa_t *isa) {
    return isa->dot_vnni && cpu_has("avx512vnni") && cpu_has("avx512vl") ? isa->dot_vnni : isa->dot;
}

/* Pack, then conv, in one parallel region: the planes live only for this call. */
static int run_conv(conv_t *c) {
    prepare_narrow(c, narrow_fits(c));
    c->Hp = c->H + 2 * c->pad, c->Wp = c->W + 2 * c->pad;
    c->row_bytes = c->Wp * c->Cb, c->plane_bytes = c->Hp * c->row_bytes;
    c->image_bytes = c->P * c->plane_bytes + 8;
    /* Not zeroed: each thread zeroes the padding of the rows it packs, so no core writes lines
     * another core is about to fill (zeroing it all here made the other thread's stores slow). */
    /* The window code sums S (for weights with an offset, lowest != 0), from per-pixel sums at
     * packing; the lanes convs count S with their popcounts instead. */
    const row_fn lanes = lanes_fits(c);
    const int sums = c->lowest && !lanes;
    size_t x_bytes = round64(c->N * c->image_bytes);
    size_t hsums_bytes = sums ? round64(sizeof(int32_t) * c->N * c->Hp * c->WO) : 0;
    size_t window_bytes = sums ? round64(sizeof(int32_t) * c->N * c->HO * c->WO) : 0;
    size_t rows_bytes = sums ? sizeof(int32_t) * c->Wp * c->threads : 0;  /* a pixel-sum row per thread */
    scratch_t *scratch = scratch_take(x_bytes + hsums_bytes + window_bytes + rows_bytes);
    if (!scratch) return 0;
    c->x = (uint8_t *)scratch->data;
    c->hsums = sums ? (int32_t *)(c->x + x_bytes) : NULL;
    c->window = sums ? (int32_t *)(c->x + x_bytes + hsums_bytes) : NULL;
    int32_t *rows = sums ? (int32_t *)(c->x + x_bytes + hsums_bytes + window_bytes) : NULL;
    if (lanes) prepare_lane_weights(c), prepare_lane_search(c);
    const int gather = !lanes && gather_fits(c);
    c->w_nib = NULL;
    if (!c->dot && c->isa->prepare && !c->isa->prepare(c, lanes != NULL, gather)) {
        scratch_give(scratch);
        return 0;
    }
    const positions_fn positions = c->dot ? dot_conv_of(c->isa) : gather ? c->isa->gather : c->isa->conv;
    const ssize chunk = c->dot ? DOT_POSITIONS : c->isa->chunk, items = lanes ? c->HO : (c->HO * c->WO + chunk - 1) / chunk;
    /* With images enough to share out evenly, each thread takes whole images and runs pack, window
     * sums and conv on one image before the next, so its planes and sums are still in cache when
     * the conv reads them; else (a batch smaller than the threads) each step is shared by rows. */
    const int by_image = c->N % c->threads == 0 || c->N >= 4 * c->threads;
    #pragma omp parallel num_threads(c->threads)
    {
        /* This thread's padded row of pixel sums, zero at the sides, for the horizontal window sums. */
        int32_t *row = rows ? rows + (ssize)thread_num() * c->Wp : NULL;
        if (row) memset(row, 0, sizeof(int32_t) * c->Wp);
        if (by_image) {
            #pragma omp for schedule(static)
            for (ssize n = 0; n < c->N; n++) {
                for (ssize yp = 0; yp < c->Hp; yp++) pack_padded_row(c, n, yp, row);
                for (ssize oy = 0; c->window && oy < c->HO; oy++) window_sums_row(c, n, oy);
                for (ssize k = 0; k < items; k++) conv_item(c, positions, lanes, n, k, chunk);
            }
        } else {
            #pragma omp for collapse(2) schedule(static)
            for (ssize n = 0; n < c->N; n++)
                for (ssize yp = 0; yp < c->Hp; yp++) pack_padded_row(c, n, yp, row);
            if (c->window) {
                #pragma omp for collapse(2) schedule(static)
                for (ssize n = 0; n < c->N; n++)
                    for (ssize oy = 0; oy < c->HO; oy++) window_sums_row(c, n, oy);
            }
            /* Static, split by image like the packing above: a thread reads the planes it packed, and
             * writes the output rows the next layer's same thread will read. */
            #pragma omp for collapse(2) schedule(static)
            for (ssize n = 0; n < c->N; n++)
                for (ssize k = 0; k < items; k++) conv_item(c, positions, lanes, n, k, chunk);
        }
    }
    scratch_give(scratch);
    free(c->w_nib);
    return 1;
}

static void threshold_impl(const int32_t *restrict acc, ssize M, ssize O, const int8_t *restrict dir,
                           const int32_t *restrict thr, int L, int qmin, uint8_t *restrict out, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (ssize m = 0; m < M; m++) {
        for (ssize o = 0; o < O; o++) {
            int64_t a = (int64_t)acc[m * O + o] * dir[o];
            int code = qmin;
            for (int l = 0; l < L; l++) code += a >= thr[o * L + l];
            out[m * O + o] = (uint8_t)code;
        }
    }
}

/* Pixel embedding as a lookup: colour ch of each pixel -> d codes from its table (shared: T = 1). */
static void lut_impl(const uint8_t *restrict image, ssize M, ssize C, const uint8_t *restrict tables, int T, int d,
                     uint8_t *restrict out, int threads) {
    if (d == 1) {  /* codes requantized (one code per channel): a plain byte lookup, no call per code */
#ifdef PIXELQ_X86
        if (T == 1 && cpu_has("avx2")) {
            const ssize block = 1 << 16, count = M * C;
            #pragma omp parallel for num_threads(threads) schedule(static)
            for (ssize b = 0; b < (count + block - 1) / block; b++)
                lut_bytes_avx2(image + b * block, count - b * block < block ? count - b * block : block, tables,
                               out + b * block);
            return;
        }
#endif
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (ssize m = 0; m < M; m++)
            for (ssize ch = 0; ch < C; ch++)
                out[m * C + ch] = tables[(T == 1 ? 0 : ch) * 256 + image[m * C + ch]];
        return;
    }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (ssize m = 0; m < M; m++)
        for (ssize ch = 0; ch < C; ch++)
            memcpy(out + (m * C + ch) * d, tables + ((T == 1 ? 0 : ch) * 256 + image[m * C + ch]) * d, d);
}

/* ---- The public entry points (pixelq_kernels.h): a struct in, every size checked, then the run. ---- */

static _Thread_local char last_error[256];

const char *pxq_last_error(void) { return last_error; }

static _Thread_local int last_status;

int pxq_last_status(void) { return last_status; }

int pxq_fail(int code, const char *format, ...) {
    last_status = code;
    va_list args;
    va_start(args, format);
    vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
    return code;
}

/* The product of `count` non-negative factors, or -1 where one is negative or it overflows int64. */
static int64_t product(const int64_t *factors, size_t count) {
    int64_t total = 1;
    for (size_t i = 0; i < count; i++)
        if (factors[i] < 0 || __builtin_mul_overflow(total, factors[i], &total)) return -1;
    return total;
}
#define PRODUCT(...) product((const int64_t[]){__VA_ARGS__}, sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t))

/* 1 when `b` holds `bytes` bytes (bytes >= 0), else 0 with the error naming it. */
static int sized(const char *kernel, const char *name, pxq_buffer b, int64_t bytes) {
    if (bytes >= 0 && b.data && b.bytes == bytes) return 1;
    if (bytes < 0) pxq_fail(PXQ_ERROR_ARGUMENT, "%s: the %s's size overflows", kernel, name);
    else if (!b.data) pxq_fail(PXQ_ERROR_ARGUMENT, "%s: %s is missing", kernel, name);
    else pxq_fail(PXQ_ERROR_ARGUMENT, "%s: %s has %lld bytes, expected %lld", kernel, name, (long long)b.bytes,
              (long long)bytes);
    return 0;
}

static int sized_out(const char *kernel, pxq_output b, int64_t bytes) {
    return sized(kernel, "out", (pxq_buffer){b.data, b.bytes}, bytes);
}

/* The build `name` names (NULL: the best this CPU has); NULL with the error set for an unknown one. */
static const isa_t *isa_named(const char *name) {
    if (!name) return best_isa();
    const isa_t *isa = find_isa(name);
    if (!isa) pxq_fail(PXQ_ERROR_ISA, "instruction set %s is not available on this CPU", name);
    return isa;
}

int64_t pxq_conv_out_size(int64_t size, int32_t kernel, int32_t stride, int32_t pad) {
    if (size < 1 || kernel < 1 || stride < 1 || pad < 0 || size + 2 * (int64_t)pad < kernel) return 0;
    return (size + 2 * (int64_t)pad - kernel) / stride + 1;
}

static const char *const CONV_KINDS[] = {"planes conv", "lookup conv", "table conv", "dot conv"};

/* conv_t from the parameters, each checked; PXQ_OK or the error. */
static int conv_of(const pxq_conv_params *p, conv_t *c) {
    if (p->kind < PXQ_CONV_PLANES || p->kind > PXQ_CONV_DOT)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "conv: unknown kind %d", (int)p->kind);
    const char *k = CONV_KINDS[p->kind];
    if (!(c->isa = isa_named(p->isa))) return PXQ_ERROR_ISA;
    const int64_t limit = INT32_MAX;
    if (p->batch < 1 || p->height < 1 || p->width < 1 || p->channels < 1 || p->out_channels < 1 ||
        p->batch > limit || p->height > limit || p->width > limit || p->channels > limit || p->out_channels > limit)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "%s: batch, height, width and channels must be in 1 .. 2^31 - 1", k);
    if (p->kernel_h < 1 || p->kernel_w < 1 || p->stride < 1 || p->pad < 0 || p->pad > limit / 4)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "%s: kernel %dx%d, stride %d, pad %d: need kernel >= 1, stride >= 1 "
                    "and pad >= 0", k, p->kernel_h, p->kernel_w, p->stride, p->pad);
    if (p->out_channels_padded < p->out_channels || p->out_channels_padded % 8 || p->out_channels_padded > limit)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "%s: out_channels_padded %lld must be a multiple of 8 >= out_channels %lld",
                    k, (long long)p->out_channels_padded, (long long)p->out_channels);
    if (p->threads < 1) return pxq_fail(PXQ_ERROR_ARGUMENT, "%s: threads must be >= 1, got %d", k, p->threads);
    c->N = p->batch, c->H = p->height, c->W = p->width, c->C = p->channels;
    c->KH = p->kernel_h, c->KW = p->kernel_w, c->stride = p->stride, c->pad = p->pad;
    c->O = p->out_channels, c->Opad = p->out_channels_padded, c->threads = p->threads;
    c->HO = pxq_conv_out_size(p->height, p->kernel_h, p->stride, p->pad);
    c->WO = pxq_conv_out_size(p->width, p->kernel_w, p->stride, p->pad);
    if (c->HO < 1 || c->WO < 1)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "%s: a %dx%d kernel does not fit a %lldx%lld input padded by %d", k,
                    p->kernel_h, p->kernel_w, (long long)p->height, (long long)p->width, p->pad);
    if (!sized(k, "input", p->input, PRODUCT(p->batch, p->height, p->width, p->channels))) return PXQ_ERROR_ARGUMENT;
    c->codes = p->input.data;
    switch (p->kind) {
    case PXQ_CONV_LOOKUP:
        if (p->lookup_depth < 1 || p->channels * p->lookup_depth > 64 ||
            (p->lookup_tables != 1 && p->lookup_tables != p->channels))
            return pxq_fail(PXQ_ERROR_ARGUMENT, "lookup conv: needs channels * lookup_depth <= 64 and 1 or channels tables");
        if (p->input_planes < 1 || p->input_planes > 8)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "lookup conv: input_planes must be in 1 .. 8, got %d", p->input_planes);
        if (!sized(k, "lookup_bits", p->lookup_bits, PRODUCT(p->lookup_tables, 256, p->input_planes, 8)) ||
            !sized(k, "lookup_sums", p->lookup_sums, PRODUCT(p->lookup_tables, 256, 4)))
            return PXQ_ERROR_ARGUMENT;
        c->image_C = (int)p->channels, c->lut_tables = p->lookup_tables, c->lut_d = p->lookup_depth;
        c->lut_bits = p->lookup_bits.data, c->lut_sums = p->lookup_sums.data;
        c->C = p->channels * p->lookup_depth;  /* then the planes and weights as for PLANES */
        /* fall through */
    case PXQ_CONV_PLANES:
        if (p->input_planes < 1 || p->input_planes > 8)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "%s: input_planes must be in 1 .. 8, got %d", k, p->input_planes);
        if (p->weight_bits < 1 || p->weight_bits > 8 || p->weight_stride < 1)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "%s: weight_bits must be in 1 .. 8 and weight_stride >= 1", k);
        c->P = p->input_planes, c->J = p->weight_bits, c->lowest = p->weight_lowest, c->wstride = p->weight_stride;
        c->Cb = (int)((c->C + 7) / 8);
        c->Kr = (int)((c->KW * (int64_t)c->Cb + 7) / 8);
        if (!sized(k, "weights", p->weights, PRODUCT(c->J, c->KH, c->Kr, c->Opad, 8))) return PXQ_ERROR_ARGUMENT;
        c->w = p->weights.data;
        break;
    case PXQ_CONV_DOT:
        c->dot = 1, c->P = 1, c->J = 1, c->lowest = 0, c->wstride = 1;
        c->Cb = (int)((c->C + 3) / 4 * 4);  /* bytes per pixel: whole groups of 4 channels */
        if (!sized(k, "weights", p->weights, PRODUCT(c->KH, c->KW, c->Cb, c->Opad))) return PXQ_ERROR_ARGUMENT;
        c->wdot = p->weights.data;
        break;
    case PXQ_CONV_TABLE:
        if (c->O > 16 || (p->table_entry_bytes != 1 && p->table_entry_bytes != 2))
            return pxq_fail(PXQ_ERROR_ARGUMENT, "table conv: at most 16 output channels, entries of 1 or 2 bytes");
        if (!p->thresholds.data) return pxq_fail(PXQ_ERROR_ARGUMENT, "table conv: needs thresholds");
        if (!sized(k, "weights", p->weights, PRODUCT(c->KH, c->KW, c->C, 256 * 16, p->table_entry_bytes)))
            return PXQ_ERROR_ARGUMENT;
        c->image_C = (int)c->C, c->wstride = 1, c->lowest = 0, c->table16 = p->table_entry_bytes == 2;
        break;
    }
    const int fused = p->thresholds.data || p->direction.data;  /* then both must be there */
    if (!sized_out(k, p->out, PRODUCT(c->N, c->HO, c->WO, c->O, fused ? 1 : 4))) return PXQ_ERROR_ARGUMENT;
    if (fused) {
        if (p->levels < 0 || p->levels > 255 || p->qmin < -255 || p->qmin > 255)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "%s: levels must be in 0 .. 255 and qmin in -255 .. 255", k);
        if (!sized(k, "direction", p->direction, c->Opad) ||
            !sized(k, "thresholds", p->thresholds, PRODUCT(p->levels, c->Opad, 4)))
            return PXQ_ERROR_ARGUMENT;
        c->dir = p->direction.data, c->thr = p->thresholds.data, c->L = p->levels, c->qmin = p->qmin;
        c->out = p->out.data;
    } else {
        c->acc = p->out.data;
    }
    if (p->residual.data) {
        if (!fused || p->kind == PXQ_CONV_LOOKUP || p->kind == PXQ_CONV_TABLE)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "%s: a residual add needs thresholds and a planes or dot conv", k);
        const int64_t rs = p->residual_stride;
        if (p->residual_channels < 1 || p->residual_channels > c->O || rs < 1 || p->residual_shift < 0 ||
            p->residual_shift > 255 || p->residual_qmax < 0 || p->residual_qmax > 255 ||
            (c->HO - 1) * rs >= p->residual_height || (c->WO - 1) * rs >= p->residual_width)
            return pxq_fail(PXQ_ERROR_ARGUMENT, "%s: the residual input does not fit the output", k);
        if (!sized(k, "residual", p->residual,
                   PRODUCT(c->N, p->residual_height, p->residual_width, p->residual_channels)))
            return PXQ_ERROR_ARGUMENT;
        c->res = p->residual.data, c->res_H = p->residual_height, c->res_W = p->residual_width;
        c->res_C = p->residual_channels, c->res_stride = p->residual_stride, c->res_qmax = p->residual_qmax;
        c->res_shift = p->residual_shift;
    }
    if (p->kind == PXQ_CONV_DOT) {  /* a bound on the accumulators, for the int16 epilogue (narrow_fits) */
        uint8_t top = 0;
        int wmax = 0;
        const uint8_t *x = c->codes;
        for (int64_t i = 0; i < p->input.bytes; i++) top = x[i] > top ? x[i] : top;
        const int8_t *wv = c->wdot;
        for (int64_t i = 0; i < p->weights.bytes; i++) wmax = abs(wv[i]) > wmax ? abs(wv[i]) : wmax;
        c->dot_bound = (int64_t)c->KH * c->KW * c->C * top * wmax;
        c->dot_pair_max = 2 * (int64_t)top * wmax;
        c->dot_top = top;
    }
    return PXQ_OK;
}

int pxq_conv(const pxq_conv_params *params) {
    conv_t *c = calloc(1, sizeof(conv_t));  /* a few KB of lane tables: not on the caller's stack */
    if (!c) return pxq_fail(PXQ_ERROR_MEMORY, "conv: out of memory");
    int status = conv_of(params, c);
    if (status == PXQ_OK && params->kind == PXQ_CONV_TABLE) {
        /* The caller keeps every accumulator inside +-32000 (fusion.conv_table), so int16 lanes hold them. */
        prepare_narrow(c, c->O == 16 && c->Opad == 16 && c->L <= NARROW_LEVELS);
        const void *table = params->weights.data;
        #pragma omp parallel for collapse(2) num_threads(c->threads) schedule(static)
        for (ssize n = 0; n < c->N; n++)
            for (ssize oy = 0; oy < c->HO; oy++) c->isa->table(c, table, n, oy);
    } else if (status == PXQ_OK && !run_conv(c)) {
        status = pxq_fail(PXQ_ERROR_MEMORY, "conv: out of memory for its scratch");
    }
    free(c);
    return status;
}

int pxq_threshold(const pxq_threshold_params *p) {
    if (p->positions < 0 || p->channels < 1 || p->levels < 0 || p->levels > 255 || p->threads < 1)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "threshold: needs positions >= 0, channels >= 1, levels in 0 .. 255, threads >= 1");
    if (!sized("threshold", "acc", p->acc, PRODUCT(p->positions, p->channels, 4)) ||
        !sized("threshold", "direction", p->direction, p->channels) ||
        !sized("threshold", "thresholds", p->thresholds, PRODUCT(p->channels, (int64_t)p->levels, 4)) ||
        !sized_out("threshold", p->out, PRODUCT(p->positions, p->channels)))
        return PXQ_ERROR_ARGUMENT;
    threshold_impl(p->acc.data, p->positions, p->channels, p->direction.data, p->thresholds.data, p->levels, p->qmin,
                   p->out.data, p->threads);
    return PXQ_OK;
}

int pxq_lookup(const pxq_lookup_params *p) {
    if (p->positions < 0 || p->channels < 1 || p->depth < 1 || p->threads < 1 ||
        (p->tables_count != 1 && p->tables_count != p->channels))
        return pxq_fail(PXQ_ERROR_ARGUMENT, "lookup: needs one table, or one per colour, depth >= 1 and threads >= 1");
    if (!sized("lookup", "image", p->image, PRODUCT(p->positions, p->channels)) ||
        !sized("lookup", "tables", p->tables, PRODUCT(p->tables_count, 256, p->depth)) ||
        !sized_out("lookup", p->out, PRODUCT(p->positions, p->channels, p->depth)))
        return PXQ_ERROR_ARGUMENT;
    lut_impl(p->image.data, p->positions, p->channels, p->tables.data, p->tables_count, p->depth, p->out.data,
             p->threads);
    return PXQ_OK;
}

/* Global sum pool, an image per work item (numpy's sum of this, single-threaded, took 3 % of the
 * network at 2 threads). */
int pxq_sum_pool(const pxq_pool_params *p) {
    if (p->batch < 0 || p->positions < 1 || p->channels < 1 || p->threads < 1)
        return pxq_fail(PXQ_ERROR_ARGUMENT, "sum_pool: needs batch >= 0, positions >= 1, channels >= 1, threads >= 1");
    if (p->positions > 16000000) return pxq_fail(PXQ_ERROR_ARGUMENT, "sum_pool: at most 16M positions (uint32 sums)");
    if (!sized("sum_pool", "codes", p->codes, PRODUCT(p->batch, p->positions, p->channels)) ||
        !sized_out("sum_pool", p->out, PRODUCT(p->batch, p->channels, 8)))
        return PXQ_ERROR_ARGUMENT;
    const uint8_t *codes = p->codes.data;
    int64_t *sums = p->out.data;
    const ssize N = p->batch, HW = p->positions, C = p->channels;
    #pragma omp parallel for num_threads(p->threads) schedule(static)
    for (ssize n = 0; n < N; n++) {
        /* 64 channels at a time in uint32 (exact: HW * 255 < 2^32 above), a loop the compiler vectorises */
        for (ssize k0 = 0; k0 < C; k0 += 64) {
            uint32_t acc[64] = {0};
            const ssize width = C - k0 < 64 ? C - k0 : 64;
            const uint8_t *v = codes + n * HW * C + k0;
            for (ssize q = 0; q < HW; q++, v += C)
                for (ssize k = 0; k < width; k++) acc[k] += v[k];
            for (ssize k = 0; k < width; k++) sums[n * C + k0 + k] = acc[k];
        }
    }
    return PXQ_OK;
}

const char *pxq_isas(void) {
    static _Thread_local char names[128];
    names[0] = 0;
    for (int i = 0; i < ISA_COUNT; i++) {
        if (!isa_available(&ISAS[i])) continue;
        if (names[0]) strcat(names, ",");
        strcat(names, ISAS[i].name);
    }
    return names;
}

const char *pxq_dot_isa(const char *name) {
    const isa_t *isa = name ? find_isa(name) : NULL;
    if (!isa) return NULL;
    positions_fn dot = dot_conv_of(isa);
    return isa->dot_vnni && dot == isa->dot_vnni ? "avx512vnni" : isa->dot_name;
}

int pxq_cpu_has(const char *feature) { return feature ? cpu_has(feature) : 0; }

/* The layout the bindings check theirs against. */
#define FIELD(s, f) {#s, #f, (int64_t)offsetof(s, f)}
static const struct { const char *name, *field; int64_t offset; } FIELDS[] = {
    FIELD(pxq_buffer, data), FIELD(pxq_buffer, bytes), FIELD(pxq_output, data), FIELD(pxq_output, bytes),
    FIELD(pxq_conv_params, kind), FIELD(pxq_conv_params, input), FIELD(pxq_conv_params, batch),
    FIELD(pxq_conv_params, height), FIELD(pxq_conv_params, width), FIELD(pxq_conv_params, channels),
    FIELD(pxq_conv_params, input_planes), FIELD(pxq_conv_params, weights), FIELD(pxq_conv_params, kernel_h),
    FIELD(pxq_conv_params, kernel_w), FIELD(pxq_conv_params, weight_bits), FIELD(pxq_conv_params, weight_lowest),
    FIELD(pxq_conv_params, weight_stride), FIELD(pxq_conv_params, table_entry_bytes),
    FIELD(pxq_conv_params, out_channels), FIELD(pxq_conv_params, out_channels_padded),
    FIELD(pxq_conv_params, lookup_bits), FIELD(pxq_conv_params, lookup_sums), FIELD(pxq_conv_params, lookup_tables),
    FIELD(pxq_conv_params, lookup_depth), FIELD(pxq_conv_params, stride), FIELD(pxq_conv_params, pad),
    FIELD(pxq_conv_params, direction), FIELD(pxq_conv_params, thresholds), FIELD(pxq_conv_params, levels),
    FIELD(pxq_conv_params, qmin), FIELD(pxq_conv_params, residual), FIELD(pxq_conv_params, residual_height),
    FIELD(pxq_conv_params, residual_width), FIELD(pxq_conv_params, residual_channels),
    FIELD(pxq_conv_params, residual_stride), FIELD(pxq_conv_params, residual_qmax),
    FIELD(pxq_conv_params, residual_shift), FIELD(pxq_conv_params, out), FIELD(pxq_conv_params, threads),
    FIELD(pxq_conv_params, isa),
    FIELD(pxq_threshold_params, acc), FIELD(pxq_threshold_params, positions), FIELD(pxq_threshold_params, channels),
    FIELD(pxq_threshold_params, direction), FIELD(pxq_threshold_params, thresholds),
    FIELD(pxq_threshold_params, levels), FIELD(pxq_threshold_params, qmin), FIELD(pxq_threshold_params, out),
    FIELD(pxq_threshold_params, threads),
    FIELD(pxq_lookup_params, image), FIELD(pxq_lookup_params, positions), FIELD(pxq_lookup_params, channels),
    FIELD(pxq_lookup_params, tables), FIELD(pxq_lookup_params, tables_count), FIELD(pxq_lookup_params, depth),
    FIELD(pxq_lookup_params, out), FIELD(pxq_lookup_params, threads),
    FIELD(pxq_pool_params, codes), FIELD(pxq_pool_params, batch), FIELD(pxq_pool_params, positions),
    FIELD(pxq_pool_params, channels), FIELD(pxq_pool_params, out), FIELD(pxq_pool_params, threads),
    FIELD(pxq_step, op), FIELD(pxq_step, inputs), FIELD(pxq_step, conv), FIELD(pxq_step, input_shift),
    FIELD(pxq_step, shift_padding), FIELD(pxq_step, shift_border), FIELD(pxq_step, offset), FIELD(pxq_step, threshold),
    FIELD(pxq_step, lookup), FIELD(pxq_step, qmin), FIELD(pxq_step, qmax), FIELD(pxq_step, shift),
    FIELD(pxq_step, kernel), FIELD(pxq_step, stride), FIELD(pxq_step, extra_channels), FIELD(pxq_step, weight),
    FIELD(pxq_step, rows), FIELD(pxq_step, cols), FIELD(pxq_step, threads), FIELD(pxq_step, bias),
    FIELD(pxq_step, step), FIELD(pxq_floats, data), FIELD(pxq_floats, ndim), FIELD(pxq_floats, shape),
    FIELD(pxq_value, data), FIELD(pxq_value, type), FIELD(pxq_value, ndim), FIELD(pxq_value, shape),
    FIELD(pxq_codes, data), FIELD(pxq_codes, ndim), FIELD(pxq_codes, shape),
    FIELD(pxq_node, op), FIELD(pxq_node, inputs), FIELD(pxq_node, in_channels), FIELD(pxq_node, out_channels),
    FIELD(pxq_node, kernel), FIELD(pxq_node, stride), FIELD(pxq_node, padding), FIELD(pxq_node, groups),
    FIELD(pxq_node, weight_bits), FIELD(pxq_node, weight_lowest), FIELD(pxq_node, weight_stride),
    FIELD(pxq_node, input_range), FIELD(pxq_node, input_shift), FIELD(pxq_node, qmin), FIELD(pxq_node, qmax),
    FIELD(pxq_node, shift), FIELD(pxq_node, extra_channels), FIELD(pxq_node, residual_stride),
    FIELD(pxq_node, residual_qmax), FIELD(pxq_node, residual_shift), FIELD(pxq_node, table_sums),
    FIELD(pxq_node, weight), FIELD(pxq_node, lut),
    FIELD(pxq_node, direction), FIELD(pxq_node, thresholds), FIELD(pxq_node, offset),
    FIELD(pxq_node, float_weight), FIELD(pxq_node, bias), FIELD(pxq_node, step),
    FIELD(pxq_options, threads), FIELD(pxq_options, isa),
};
#undef FIELD

int64_t pxq_field_offset(const char *name, const char *field) {
    for (size_t i = 0; name && field && i < sizeof FIELDS / sizeof FIELDS[0]; i++)
        if (strcmp(FIELDS[i].name, name) == 0 && strcmp(FIELDS[i].field, field) == 0) return FIELDS[i].offset;
    return -1;
}

int64_t pxq_struct_size(const char *name) {
#define SIZE(s) if (name && strcmp(name, #s) == 0) return (int64_t)sizeof(s);
    SIZE(pxq_buffer) SIZE(pxq_output) SIZE(pxq_conv_params) SIZE(pxq_threshold_params) SIZE(pxq_lookup_params)
    SIZE(pxq_pool_params) SIZE(pxq_step) SIZE(pxq_value) SIZE(pxq_codes) SIZE(pxq_node) SIZE(pxq_options) SIZE(pxq_floats)
#undef SIZE
    return -1;
}
