/* The 16-channel conv with positions in lanes (AVX-512 BITALG); kernels.c includes this after
 * conv_avx512.h, under a `#pragma GCC target` that adds avx512bitalg, and runs it where
 * lanes16_fits holds: 16 input and 16 output channels, 3x3, stride 1, int16 epilogue.
 *
 * The tile conv (conv_avx512.h) puts 8 output channels in a vector and a position's 3-tap window
 * row in each 64-bit lane; with 16 channels that row is 48 bits, so a quarter of every popcount is
 * waste, and each position costs its own broadcasts and epilogue. Here a vector holds 32 output
 * positions of one row, one 16-bit lane each: lane q of the load at pixel ox0 + kx is the 16-channel
 * plane word of position ox0 + q's tap kx, so one 64-byte load serves a tap for 32 positions, every
 * popcount bit counts (VPOPCNTW), and the 16 output channels are 16 accumulators, each ANDed with
 * its channel's 16 weight bits for the tap. Thresholds then compare a channel's 32 positions at
 * once, and a byte transpose turns the 16 channel vectors into 32 positions of 16 codes. */

/* Transpose 16 vectors r[o] of 32 position bytes into positions: on return, 128-bit lane 0 of r[q]
 * holds the 16 channel bytes of position q and lane 1 those of position 16 + q. */
static inline void transpose16x32(__m256i r[16]) {
    __m256i t[16];
    for (int k = 0; k < 8; k++) {  /* channel pairs: byte pairs per position */
        t[k] = _mm256_unpacklo_epi8(r[2 * k], r[2 * k + 1]);      /* positions 0-7 (16-23) */
        t[8 + k] = _mm256_unpackhi_epi8(r[2 * k], r[2 * k + 1]);  /* positions 8-15 (24-31) */
    }
    for (int h = 0; h < 2; h++)  /* channel quads */
        for (int k = 0; k < 4; k++) {
            r[8 * h + k] = _mm256_unpacklo_epi16(t[8 * h + 2 * k], t[8 * h + 2 * k + 1]);     /* positions 8h + 0-3 */
            r[8 * h + 4 + k] = _mm256_unpackhi_epi16(t[8 * h + 2 * k], t[8 * h + 2 * k + 1]); /* 8h + 4-7 */
        }
    for (int g = 0; g < 4; g++)  /* channel octets */
        for (int k = 0; k < 2; k++) {
            t[4 * g + k] = _mm256_unpacklo_epi32(r[4 * g + 2 * k], r[4 * g + 2 * k + 1]);     /* 4g + 0-1 */
            t[4 * g + 2 + k] = _mm256_unpackhi_epi32(r[4 * g + 2 * k], r[4 * g + 2 * k + 1]); /* 4g + 2-3 */
        }
    for (int f = 0; f < 8; f++) {  /* all 16 channels */
        r[2 * f] = _mm256_unpacklo_epi64(t[2 * f], t[2 * f + 1]);
        r[2 * f + 1] = _mm256_unpackhi_epi64(t[2 * f], t[2 * f + 1]);
    }
}

/* Output row oy of image n. */
static void conv_rows16(const conv_t *c, ssize n, ssize oy) {
    const uint8_t *xn = c->x + n * c->image_bytes + oy * c->row_bytes;
    /* Weight bits of output channel o at tap (ky, kx), plane j, as a 32-bit lane holding them twice. */
    uint32_t w[8][9][16];
    for (int j = 0; j < c->J; j++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++)
                for (int o = 0; o < 16; o++) {
                    uint32_t bits = (uint32_t)(c->w[((ssize)j * 3 + ky) * c->Opad + o] >> (16 * kx)) & 0xFFFF;
                    w[j][3 * ky + kx][o] = bits | bits << 16;
                }
    const int top = c->P + c->J - 2;
    const ssize m_row = (n * c->HO + oy) * c->WO;
    for (ssize ox0 = 0; ox0 < c->WO; ox0 += 32) {
        const int count = c->WO - ox0 < 32 ? (int)(c->WO - ox0) : 32;
        const __mmask32 lanes = count == 32 ? ~0u : (1u << count) - 1;
        __m512i acc[16];  /* every loop over o unrolled, so the 16 stay in registers */
        #pragma GCC unroll 16
        for (int o = 0; o < 16; o++) acc[o] = _mm512_setzero_si512();
        for (int e = top; e >= 0; e--) {  /* plane pairs (p, j) by shift level e = p + j, as in tile512 */
            if (e < top) {
                #pragma GCC unroll 16
                for (int o = 0; o < 16; o++) acc[o] = _mm512_slli_epi16(acc[o], 1);
            }
            int plo = e - (c->J - 1) > 0 ? e - (c->J - 1) : 0, phi = e < c->P - 1 ? e : c->P - 1;
            for (int p = plo; p <= phi; p++)
                for (int t = 0; t < 9; t++) {
                    const uint8_t *src = xn + p * c->plane_bytes + (t / 3) * c->row_bytes + (ox0 + t % 3) * 2;
                    __m512i x = count == 32 ? _mm512_loadu_si512(src) : _mm512_maskz_loadu_epi16(lanes, src);
                    const uint32_t *wt = w[e - p][t];
                    #pragma GCC unroll 16
                    for (int o = 0; o < 16; o++)
                        acc[o] = _mm512_add_epi16(acc[o], _mm512_popcnt_epi16(_mm512_and_si512(x, _mm512_set1_epi32((int)wt[o]))));
                }
        }
        /* lowest * S for the 32 positions, then each channel's codes by its thresholds. */
        __m512i low = _mm512_setzero_si512();
        if (c->window) {
            const int32_t *s = c->window + m_row + ox0;
            __m256i s0 = _mm512_cvtepi32_epi16(_mm512_maskz_loadu_epi32((__mmask16)lanes, s));
            __m256i s1 = _mm512_cvtepi32_epi16(_mm512_maskz_loadu_epi32((__mmask16)(lanes >> 16), s + 16));
            low = _mm512_mullo_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(s0), s1, 1),
                                     _mm512_set1_epi16((short)c->lowest));
        }
        __m256i r[16];
        #pragma GCC unroll 16
        for (int o = 0; o < 16; o++) {
            __m512i a = _mm512_add_epi16(_mm512_mullo_epi16(acc[o], _mm512_set1_epi16((short)c->wstride)), low);
            if (c->neg64 >> o & 1) a = _mm512_sub_epi16(_mm512_setzero_si512(), a);
            __m512i code = _mm512_set1_epi16((short)c->qmin), one = _mm512_set1_epi16(1);
            for (int l = 0; l < c->L; l++)
                code = _mm512_mask_add_epi16(code, _mm512_cmpge_epi16_mask(a, _mm512_set1_epi16(c->thr16[l][o])), code, one);
            r[o] = _mm512_cvtepi16_epi8(code);
        }
        transpose16x32(r);
        /* Position q and 16 + q: residual add (saturating, then the clip), store. */
        uint8_t *out = c->out + (m_row + ox0) * 16;
        const uint8_t *res = c->res ? c->res + residual_offset(c, n, oy, ox0) : NULL;  /* res_C 16, stride 1 */
        for (int q = 0; q < 16; q++) {
            for (int half = 0; half < 2; half++) {
                const int k = 16 * half + q;  /* position ox0 + k */
                if (k >= count) continue;
                __m128i v = half ? _mm256_extracti128_si256(r[q], 1) : _mm256_castsi256_si128(r[q]);
                if (res)
                    v = _mm_min_epu8(_mm_adds_epu8(v, _mm_loadu_si128((const __m128i *)(res + 16 * k))),
                                     _mm_set1_epi8((char)c->res_qmax));
                _mm_storeu_si128((__m128i *)(out + 16 * k), v);
            }
        }
    }
}
