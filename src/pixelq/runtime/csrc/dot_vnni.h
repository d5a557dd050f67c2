/* The dot-product conv with AVX-512 VNNI; kernels.c includes this after conv_avx512.h (whose
 * epilogue it shares) under a `#pragma GCC target` that adds avx512vnni. The AVX-512 builds run it
 * where the CPU has VNNI (dot_conv_of).
 *
 * As dot_avx2 (conv_avx2.h), with 16 output channels per 512-bit vector (two of the weights' 8-channel blocks,
 * side by side in memory): VPDPBUSD adds 64 code x weight products per instruction; an odd last
 * block of 8 channels runs on 256-bit vectors. */
#define VNNI_TILE 16  /* the most positions per tile (16 with one vector of channels, 8 with two); DOT_POSITIONS is a multiple */

/* Positions pos[0 .. R) x V vectors of 16 output channels from o0 (the last may hold 8: `last`
 * lanes of its vector are real), their int32 sums into acc[i * V + v]. */
static inline __attribute__((always_inline)) void vnni_tile(const conv_t *c, const uint8_t *xn, const ssize *pos,
                                                            ssize o0, int last, __m512i *acc, const int V, const int R) {
    const ssize groups = c->Cb / 4, blocks = c->Opad / 8;
    #pragma GCC unroll 16
    for (int k = 0; k < R * V; k++) acc[k] = _mm512_setzero_si512();
    for (int ky = 0; ky < c->KH; ky++)
        for (int kx = 0; kx < c->KW; kx++) {
            const uint8_t *xt = xn + ky * c->row_bytes + kx * c->Cb;
            const int8_t *wt = c->wdot + (((ssize)ky * c->KW + kx) * groups * blocks + o0 / 8) * 32;
            for (ssize g = 0; g < groups; g++) {
                const int8_t *wg = wt + g * blocks * 32;
                __m512i w[2];
                #pragma GCC unroll 2
                for (int v = 0; v < V; v++)
                    w[v] = v < V - 1 || last == 16 ? _mm512_loadu_si512(wg + 64 * v)
                                                   : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(wg + 64 * v)));
                #pragma GCC unroll 16
                for (int i = 0; i < R; i++) {
                    uint32_t four;
                    memcpy(&four, xt + pos[i] + 4 * g, 4);
                    const __m512i x = _mm512_set1_epi32((int)four);
                    #pragma GCC unroll 2
                    for (int v = 0; v < V; v++) acc[i * V + v] = _mm512_dpbusd_epi32(acc[i * V + v], x, w[v]);
                }
            }
        }
}

/* finish16 for the tile's positions at once (npos of them real): each threshold vector is loaded
 * once and compared with every position's sums, where finish16 reloads all L per position (with
 * 4-bit codes, 15 levels, that was as much work as the products). */
static inline __attribute__((always_inline)) void finish16_tile(const conv_t *c, ssize m, ssize o, int count,
                                                                const __m512i *acc, const int V, const int R,
                                                                int npos, const ssize *roff) {
    if (!c->out) {
        for (int i = 0; i < npos; i++) finish16(c, m + i, o, count, acc[i * V], 0, 0);
        return;
    }
    const ssize left = c->O - o < count ? c->O - o : count;
    const int full = left == 16;
    const __mmask16 lanes = (__mmask16)((1u << left) - 1);
    __m128i dir = full ? _mm_loadu_si128((const __m128i *)(c->dir + o)) : _mm_maskz_loadu_epi8(lanes, c->dir + o);
    const __mmask16 neg = _mm512_movepi32_mask(_mm512_cvtepi8_epi32(dir));
    const __m512i one = _mm512_set1_epi32(1);
    __m512i s[VNNI_TILE], code[VNNI_TILE];
    #pragma GCC unroll 16
    for (int i = 0; i < R; i++)
        s[i] = _mm512_mask_sub_epi32(acc[i * V], neg, _mm512_setzero_si512(), acc[i * V]), code[i] = _mm512_set1_epi32(c->qmin);
    for (int l = 0; l < c->L; l++) {
        const int32_t *thr = c->thr + (ssize)l * c->Opad + o;
        const __m512i t = full ? _mm512_loadu_si512(thr) : _mm512_maskz_loadu_epi32(lanes, thr);
        #pragma GCC unroll 16
        for (int i = 0; i < R; i++) code[i] = _mm512_mask_add_epi32(code[i], _mm512_cmpge_epi32_mask(s[i], t), code[i], one);
    }
    for (int i = 0; i < npos; i++) {
        if (c->res)
            code[i] = add_residual16(c, code[i], o < c->res_C ? residual_bytes16(c, lanes, roff[i], o) : _mm_setzero_si128());
        if (full) _mm_storeu_si128((__m128i *)(c->out + (m + i) * c->O + o), _mm512_cvtepi32_epi8(code[i]));
        else _mm512_mask_cvtepi32_storeu_epi8(c->out + (m + i) * c->O + o, lanes, code[i]);
    }
}

static void dot_vnni(const conv_t *c, ssize n, ssize m0, ssize m1) {
    const uint8_t *xn = c->x + n * c->image_bytes;
    const ssize count = m1 - m0;
    ssize pos[DOT_POSITIONS + VNNI_TILE], roff[DOT_POSITIONS];
    window_positions(c, n, m0, count, pos, roff);
    for (ssize i = count; i < count + VNNI_TILE; i++) pos[i] = pos[count - 1];
    __m512i acc[VNNI_TILE];
    for (ssize o0 = 0; o0 < c->O;) {
        /* two vectors of 16 channels while 32 remain (each broadcast code then serves both) x 8
         * positions, else one x 16 positions: 16 accumulators either way */
        const int V = o0 + 32 <= c->Opad ? 2 : 1, R = V == 2 ? 8 : 16, last = o0 + 16 * V <= c->Opad ? 16 : 8;
        for (ssize i0 = 0; i0 < count; i0 += R) {
            if (V == 2) vnni_tile(c, xn, pos + i0, o0, last, acc, 2, 8);
            else vnni_tile(c, xn, pos + i0, o0, last, acc, 1, 16);
            const int npos = count - i0 < R ? (int)(count - i0) : R;
            const ssize m = n * c->HO * c->WO + m0 + i0;
            if (c->narrow && c->O == 16) {  /* int16 lanes: two positions per vector (narrow_fits) */
                for (int i = 0; i < npos; i += 2) {
                    __m512i a = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(acc[i])),
                                                   _mm512_cvtepi32_epi16(acc[i + 1]), 1);
                    if (i + 1 < npos) finish_pair16(c, m + i, a, roff + i0 + i);
                    else finish16(c, m + i, 0, 16, acc[i], 0, c->res ? roff[i0 + i] : 0);
                }
            } else if (c->narrow && V == 2) {  /* int16 lanes: 32 channels of one position per vector */
                for (int i = 0; i < npos; i++)
                    finish_block32(c, m + i, o0, _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(acc[2 * i])),
                                                                    _mm512_cvtepi32_epi16(acc[2 * i + 1]), 1),
                                   c->res ? roff[i0 + i] : 0);
            } else if (V == 2) {
                finish16_tile(c, m, o0, 16, acc, 2, 8, npos, roff + i0);
                if (o0 + 16 < c->O) finish16_tile(c, m, o0 + 16, last, acc + 1, 2, 8, npos, roff + i0);
            } else {
                finish16_tile(c, m, o0, last, acc, 1, 16, npos, roff + i0);
            }
        }
        o0 += 16 * V;
    }
}
