/* The AVX-512 VPOPCNTDQ conv; kernels.c includes this under a `#pragma GCC target` for it.
 *
 * A tile is R output positions x V vectors of 8 output channels, R * V 64-bit accumulator
 * vectors held in registers. For each window word: V weight loads, R broadcasts of the input
 * word, then AND + VPOPCNTQ + ADD per accumulator. Plane pairs (p, j) are visited by shift level
 * e = p + j from the top down and the tile doubles between levels (Horner), so the 2^(p+j)
 * weights cost R * V shifts per level rather than one per popcount. */
#define AVX512_POSITIONS 48  /* positions per work item: a multiple of every tile height below */

static void pack_row_avx512(const conv_t *c, ssize n, ssize y, int32_t *sums) {
    if (c->C % 8) {  /* channels not whole bytes: the byte-gather packer */
        pack_row_portable(c, n, y, sums);
        return;
    }
    /* With Cb = C / 8, a plane row is exactly one bit per code of the row's codes, in order:
     * bit p of 64 code bytes moved to each byte's top bit and collected by VPMOVB2M. */
    const uint8_t *src = c->codes + (n * c->H + y) * c->W * c->C;
    uint8_t *dst = c->x + n * c->image_bytes + (y + c->pad) * c->row_bytes + c->pad * c->Cb;
    ssize bytes = c->W * c->C;
    for (ssize k = 0; k < bytes; k += 64) {
        ssize take = bytes - k < 64 ? bytes - k : 64;
        __m512i v = take == 64 ? _mm512_loadu_si512(src + k) : _mm512_maskz_loadu_epi8((1ULL << take) - 1, src + k);
        for (int p = 0; p < c->P; p++) {
            uint64_t bits = _mm512_movepi8_mask(_mm512_sll_epi16(v, _mm_cvtsi32_si128(7 - p)));
            if (take == 64) memcpy(dst + p * c->plane_bytes + k / 8, &bits, 8);
            else memcpy(dst + p * c->plane_bytes + k / 8, &bits, take / 8);
        }
    }
    if (sums) pixel_sums_sad(c, src, sums);
}

static inline __attribute__((always_inline)) void tile512(const conv_t *c, const uint8_t *xn, const ssize *pos,
                                                          ssize o0, __m512i *res, const int R, const int V) {
    __m512i acc[16][4];  /* fixed bounds (R <= 16, V <= 4), so GCC keeps the used ones in registers */
    #pragma GCC unroll 16
    for (int i = 0; i < R; i++)
        #pragma GCC unroll 4
        for (int v = 0; v < V; v++) acc[i][v] = _mm512_setzero_si512();
    const int top = c->P + c->J - 2;
    for (int e = top; e >= 0; e--) {
        if (e < top) {
            #pragma GCC unroll 16
            for (int i = 0; i < R; i++)
                #pragma GCC unroll 4
                for (int v = 0; v < V; v++) acc[i][v] = _mm512_slli_epi64(acc[i][v], 1);
        }
        int plo = e - (c->J - 1) > 0 ? e - (c->J - 1) : 0, phi = e < c->P - 1 ? e : c->P - 1;
        for (int p = plo; p <= phi; p++) {
            const uint8_t *xp = xn + p * c->plane_bytes;
            const uint64_t *wj = c->w + (ssize)(e - p) * c->KH * c->Kr * c->Opad + o0;
            for (int ky = 0; ky < c->KH; ky++) {
                const uint8_t *xr = xp + ky * c->row_bytes;
                const uint64_t *wr = wj + (ssize)ky * c->Kr * c->Opad;
                for (int r = 0; r < c->Kr; r++) {
                    __m512i wv[4];
                    #pragma GCC unroll 4
                    for (int v = 0; v < V; v++) wv[v] = _mm512_loadu_si512(wr + r * c->Opad + 8 * v);
                    #pragma GCC unroll 16
                    for (int i = 0; i < R; i++) {
                        __m512i xb = _mm512_set1_epi64((long long)load_u64(xr + pos[i] + 8 * r));
                        #pragma GCC unroll 4
                        for (int v = 0; v < V; v++)
                            acc[i][v] = _mm512_add_epi64(acc[i][v], _mm512_popcnt_epi64(_mm512_and_si512(xb, wv[v])));
                    }
                }
            }
        }
    }
    #pragma GCC unroll 16
    for (int i = 0; i < R; i++)
        #pragma GCC unroll 4
        for (int v = 0; v < V; v++) res[i * V + v] = acc[i][v];
}

#define TILE512(R, V) \
    static void tile512_##R##x##V(const conv_t *c, const uint8_t *xn, const ssize *pos, ssize o0, __m512i *res) { \
        tile512(c, xn, pos, o0, res, R, V);                                                                        \
    }
TILE512(16, 1)
TILE512(12, 2)
TILE512(8, 3)
TILE512(6, 4)

/* The shortcut's codes of the lanes from channel o (o < res_C) at offset r, channels from res_C on 0. */
static inline __m128i residual_bytes16(const conv_t *c, __mmask16 lanes, ssize r, ssize o) {
    __mmask16 have = lanes & (__mmask16)(c->res_C - o >= 16 ? 0xFFFF : (1u << (c->res_C - o)) - 1);
    return have == 0xFFFF ? _mm_loadu_si128((const __m128i *)(c->res + r + o)) : _mm_maskz_loadu_epi8(have, c->res + r + o);
}

/* clip(code + shortcut - res_shift, 0, res_qmax) in 16 int32 lanes. */
static inline __m512i add_residual16(const conv_t *c, __m512i code, __m128i shortcut) {
    __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(code, _mm512_cvtepu8_epi32(shortcut)), _mm512_set1_epi32(c->res_shift));
    return _mm512_max_epi32(_mm512_min_epi32(sum, _mm512_set1_epi32(c->res_qmax)), _mm512_setzero_si512());
}

/* The first `count` (8 or 16) of the 16 channels from o of global position m, their popcount
 * sums as int32 lanes of `tot` (the export keeps accumulators in int32): int32 accumulators, or
 * codes by thresholds plus the residual at offset r. Loads and stores are masked to the channels
 * that exist only where some are missing: on Zen 4 a masked load costs far more than a plain one. */
static inline void finish16(const conv_t *c, ssize m, ssize o, int count, __m512i tot, int64_t S, ssize r) {
    const ssize left = c->O - o < count ? c->O - o : count;
    const int full = left == 16;  /* then o + 16 <= O <= Opad: every load below stays in its array */
    const __mmask16 lanes = (__mmask16)((1u << left) - 1);
    __m512i a = _mm512_add_epi32(_mm512_mullo_epi32(tot, _mm512_set1_epi32(c->wstride)),
                                 _mm512_set1_epi32((int32_t)(c->lowest * S)));
    if (!c->out) {
        if (full) _mm512_storeu_si512(c->acc + m * c->O + o, a);
        else _mm512_mask_storeu_epi32(c->acc + m * c->O + o, lanes, a);
        return;
    }
    __m128i dir = full ? _mm_loadu_si128((const __m128i *)(c->dir + o)) : _mm_maskz_loadu_epi8(lanes, c->dir + o);
    __mmask16 neg = _mm512_movepi32_mask(_mm512_cvtepi8_epi32(dir));
    __m512i s = _mm512_mask_sub_epi32(a, neg, _mm512_setzero_si512(), a);
    __m512i code = _mm512_set1_epi32(c->qmin), one = _mm512_set1_epi32(1);
    for (int l = 0; l < c->L; l++) {
        const int32_t *thr = c->thr + (ssize)l * c->Opad + o;
        __m512i t = full ? _mm512_loadu_si512(thr) : _mm512_maskz_loadu_epi32(lanes, thr);
        code = _mm512_mask_add_epi32(code, _mm512_cmpge_epi32_mask(s, t), code, one);
    }
    if (c->res)
        code = add_residual16(c, code, o < c->res_C ? residual_bytes16(c, lanes, r, o) : _mm_setzero_si128());
    if (full) _mm_storeu_si128((__m128i *)(c->out + m * c->O + o), _mm512_cvtepi32_epi8(code));
    else _mm512_mask_cvtepi32_storeu_epi8(c->out + m * c->O + o, lanes, code);
}

/* Two 8-channel tiles as one vector of 16 int32. */
static inline __m512i join16(__m512i lo, __m512i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)), _mm512_cvtepi64_epi32(hi), 1);
}

/* 32 int16 lanes from four vectors of 8 int64 lanes, the low word of each: lanes 0-15 from (a0, a1),
 * lanes 16-31 from (b0, b1). Two positions' 16 channels, or one position's 32. */
static inline __m512i narrow32(__m512i a0, __m512i a1, __m512i b0, __m512i b1) {
    /* Lane j and lane 16 + j take word 4 j of the first vector (j < 8), word 4 (j - 8) of the second. */
    const __m512i idx = _mm512_set_epi16(60, 56, 52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0,
                                         60, 56, 52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0);
    return _mm512_mask_blend_epi16(0xFFFF0000, _mm512_permutex2var_epi16(a0, idx, a1),
                                   _mm512_permutex2var_epi16(b0, idx, b1));
}

/* The int16 epilogue's codes (c->narrow): accumulators `a` against the thresholds of lanes o0 ..
 * o0 + 31 (for a 16-channel conv, prepare_narrow repeats channels 0-15 in lanes 16-31). L is a
 * constant where the caller passes one, so the levels unroll. */
static inline __attribute__((always_inline)) __m512i narrow_levels(const conv_t *c, __m512i a, ssize o0, const int L) {
    __m512i s = _mm512_mask_sub_epi16(a, (__mmask32)(c->neg64 >> o0), _mm512_setzero_si512(), a);
    __m512i code = _mm512_set1_epi16((short)c->qmin), one = _mm512_set1_epi16(1);
    #pragma GCC unroll 8
    for (int l = 0; l < L; l++)
        code = _mm512_mask_add_epi16(code, _mm512_cmpge_epi16_mask(s, _mm512_loadu_si512(c->thr16[l] + o0)), code, one);
    return code;
}

static inline __m512i narrow_codes(const conv_t *c, __m512i a, ssize o0) {
    switch (c->L) {  /* 1- and 2-bit activations unrolled */
        case 1: return narrow_levels(c, a, o0, 1);
        case 3: return narrow_levels(c, a, o0, 3);
        default: return narrow_levels(c, a, o0, c->L);
    }
}

static inline __m512i clip_res_qmax(const conv_t *c, __m512i code, __m256i res) {
    __m512i sum = _mm512_sub_epi16(_mm512_add_epi16(code, _mm512_cvtepu8_epi16(res)), _mm512_set1_epi16((short)c->res_shift));
    return _mm512_max_epi16(_mm512_min_epi16(sum, _mm512_set1_epi16((short)c->res_qmax)), _mm512_setzero_si512());
}

/* finish16 for positions m and m + 1 of a 16-channel conv at once, from their accumulators as 32
 * int16 lanes (the first position in lanes 0-15) and their residual offsets; their codes are 32
 * consecutive bytes. */
static inline void finish_pair16(const conv_t *c, ssize m, __m512i a, const ssize *r) {
    __m512i code = narrow_codes(c, a, 0);
    if (c->res)  /* res_C == 16 (narrow_fits) */
        code = clip_res_qmax(c, code, _mm256_loadu2_m128i((const __m128i *)(c->res + r[1]), (const __m128i *)(c->res + r[0])));
    _mm256_storeu_si256((__m256i *)(c->out + m * 16), _mm512_cvtepi16_epi8(code));
}

/* finish16 for channels o0 .. o0 + 31 of position m, from their accumulators as 32 int16 lanes. */
static inline void finish_block32(const conv_t *c, ssize m, ssize o0, __m512i a, ssize r) {
    __m512i code = narrow_codes(c, a, o0);
    if (c->res) {  /* res_C is a multiple of 16 (narrow_fits); channels from it on add 0 */
        const uint8_t *res = c->res + r + o0;
        code = clip_res_qmax(c, code, o0 >= c->res_C ? _mm256_setzero_si256()
                                      : c->res_C - o0 >= 32 ? _mm256_loadu_si256((const __m256i *)res)
                                                            : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)res)));
    }
    _mm256_storeu_si256((__m256i *)(c->out + m * c->O + o0), _mm512_cvtepi16_epi8(code));
}

/* wstride * tot + lowest * S for int16 lanes of popcount sums `tot`: lanes 0-15 with S0, 16-31 with S1. */
static inline __m512i narrow_accumulators(const conv_t *c, __m512i tot, int64_t S0, int64_t S1) {
    __m512i low = _mm512_mask_blend_epi16(0xFFFF0000, _mm512_set1_epi16((short)(c->lowest * S0)),
                                          _mm512_set1_epi16((short)(c->lowest * S1)));
    return _mm512_add_epi16(_mm512_mullo_epi16(tot, _mm512_set1_epi16((short)c->wstride)), low);
}

static void conv_avx512(const conv_t *c, ssize n, ssize m0, ssize m1) {
    typedef void (*tile_fn)(const conv_t *, const uint8_t *, const ssize *, ssize, __m512i *);
    const ssize blocks = c->Opad / 8;
    const int V = blocks % 4 == 0 ? 4 : blocks % 3 == 0 ? 3 : blocks % 2 == 0 ? 2 : 1;
    const int R = V == 4 ? 6 : V == 3 ? 8 : V == 2 ? 12 : 16;
    const tile_fn tile = V == 4 ? tile512_6x4 : V == 3 ? tile512_8x3 : V == 2 ? tile512_12x2 : tile512_16x1;
    const uint8_t *xn = c->x + n * c->image_bytes;
    const ssize count = m1 - m0;  /* <= AVX512_POSITIONS */
    __m512i tiles[24];  /* R * V <= 24 for every tile */
    ssize pos[AVX512_POSITIONS + 16], roff[AVX512_POSITIONS];
    static const int32_t no_sums[AVX512_POSITIONS];  /* S = 0 when the weights have no offset */
    const int32_t *S = c->window ? c->window + n * c->HO * c->WO + m0 : no_sums;
    window_positions(c, n, m0, count, pos, roff);
    for (ssize i = count; i < count + R; i++) pos[i] = pos[count - 1];
    for (ssize o0 = 0; o0 < c->Opad; o0 += 8 * V) {
        for (ssize i0 = 0; i0 < count; i0 += R) {
            tile(c, xn, pos + i0, o0, tiles);
            int i = 0;
            const ssize m = n * c->HO * c->WO + m0 + i0;  /* global index of the tile's first position */
            if (c->narrow && V == 4) {  /* 32 or 64 channels: 32 of one position per vector */
                for (; i < R && i0 + i < count; i++) {
                    __m512i *t = tiles + 4 * i;
                    finish_block32(c, m + i, o0, narrow_accumulators(c, narrow32(t[0], t[1], t[2], t[3]), S[i0 + i],
                                                                    S[i0 + i]), roff[i0 + i]);
                }
            } else if (c->narrow) {  /* 16 channels (V == 2, o0 == 0): two positions per vector */
                for (; i + 1 < R && i0 + i + 1 < count; i += 2) {
                    __m512i *t = tiles + 2 * i;
                    finish_pair16(c, m + i, narrow_accumulators(c, narrow32(t[0], t[1], t[2], t[3]), S[i0 + i],
                                                               S[i0 + i + 1]), roff + i0 + i);
                }
            }
            for (; i < R && i0 + i < count; i++) {  /* int32 lanes, 16 channels at a time */
                int v = 0;
                for (; v + 1 < V && o0 + 8 * v + 8 < c->O; v += 2)
                    finish16(c, m + i, o0 + 8 * v, 16, join16(tiles[i * V + v], tiles[i * V + v + 1]), S[i0 + i],
                             roff[i0 + i]);
                if (v < V && o0 + 8 * v < c->O)
                    finish16(c, m + i, o0 + 8 * v, 8, join16(tiles[i * V + v], _mm512_setzero_si512()), S[i0 + i],
                             roff[i0 + i]);
            }
        }
    }
}

/* Output ox of row m_row (its global index) from its int16 sums: with the int16 epilogue, an even
 * position waits in *held for the next one and the two finish as one vector. */
static inline void table_emit(const conv_t *c, ssize m_row, ssize ox, __m256i acc, __m256i *held) {
    if (!c->narrow) {
        finish16(c, m_row + ox, 0, 16, _mm512_cvtepi16_epi32(acc), 0, 0);
    } else if (ox % 2 == 0 && ox + 1 < c->WO) {
        *held = acc;
    } else if (ox % 2 == 1) {
        finish_pair16(c, m_row + ox - 1, _mm512_inserti64x4(_mm512_castsi256_si512(*held), acc, 1), NULL);
    } else {  /* the last of an odd row */
        finish16(c, m_row + ox, 0, 16, _mm512_cvtepi16_epi32(acc), 0, 0);
    }
}

#define TABLE_ROW table_row_avx512
#define TABLE_CONV table_conv_avx512
#define TABLE_EMIT table_emit
#include "table_body.h"
#undef TABLE_ROW
#undef TABLE_CONV
#undef TABLE_EMIT
