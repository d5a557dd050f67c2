/* The 16- and 32-channel convs with positions in lanes (AVX-512 BITALG); kernels.c includes this
 * after conv_avx512.h, under a `#pragma GCC target` that adds avx512bitalg, and runs it where
 * lanes_fits holds: as many input as output channels (16 or 32), 3x3, stride 1.
 *
 * The tile conv (conv_avx512.h) puts 8 output channels in a vector and a position's 3-tap window
 * row in 64-bit lanes; with 16 or 32 channels that row is 48 or 96 bits, so a quarter of every
 * popcount is waste, and each position costs its own broadcasts and epilogue. Here a vector holds
 * the positions of one output row, one lane of CH bits each (32 positions of 16-bit lanes, or 16
 * of 32-bit lanes): lane q of the load at pixel ox0 + kx is the plane word of position ox0 + q's
 * tap kx, so one 64-byte load serves a tap for every position, every popcount bit counts
 * (VPOPCNTW / VPOPCNTD), and 16 output channels at a time are 16 accumulators, each ANDed with its
 * channel's CH weight bits for the tap. Thresholds then compare a channel's positions at once, and
 * a byte transpose turns the channel vectors into positions of CH codes. */

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

/* Output row oy of image n; CH (16 or 32) is a compile-time constant in each caller. */
static inline __attribute__((always_inline)) void rows_lanes(const conv_t *c, ssize n, ssize oy, const int CH) {
    const int LP = 512 / CH;  /* positions per vector */
    const uint8_t *xn = c->x + n * c->image_bytes + oy * c->row_bytes;
    const int top = c->P + c->J - 2;
    const ssize m_row = (n * c->HO + oy) * c->WO;
    for (ssize ox0 = 0; ox0 < c->WO; ox0 += LP) {
        const int count = c->WO - ox0 < LP ? (int)(c->WO - ox0) : LP;
        const __mmask32 lanes = count == 32 ? ~0u : (1u << count) - 1;
        /* lowest * S for the row's positions, in the epilogue's lanes */
        __m512i low = _mm512_setzero_si512();
        if (c->window) {
            const int32_t *s = c->window + m_row + ox0;
            __m512i s0 = _mm512_maskz_loadu_epi32((__mmask16)lanes, s);
            if (CH == 16) {
                __m256i s1 = _mm512_cvtepi32_epi16(_mm512_maskz_loadu_epi32((__mmask16)(lanes >> 16), s + 16));
                low = _mm512_mullo_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(s0)), s1, 1),
                                         _mm512_set1_epi16((short)c->lowest));
            } else {
                low = _mm512_mullo_epi32(s0, _mm512_set1_epi32(c->lowest));
            }
        }
        __m128i codes[32];  /* CH 32: each output channel's 16 position codes */
        __m256i r[16];
        for (int o0 = 0; o0 < CH; o0 += 16) {
            __m512i acc[16];  /* every loop over o unrolled, so the 16 stay in registers */
            #pragma GCC unroll 16
            for (int o = 0; o < 16; o++) acc[o] = _mm512_setzero_si512();
            for (int e = top; e >= 0; e--) {  /* plane pairs (p, j) by shift level e = p + j, as in tile512 */
                if (e < top) {
                    #pragma GCC unroll 16
                    for (int o = 0; o < 16; o++)
                        acc[o] = CH == 16 ? _mm512_slli_epi16(acc[o], 1) : _mm512_slli_epi32(acc[o], 1);
                }
                int plo = e - (c->J - 1) > 0 ? e - (c->J - 1) : 0, phi = e < c->P - 1 ? e : c->P - 1;
                for (int p = plo; p <= phi; p++)
                    for (int t = 0; t < 9; t++) {
                        const uint8_t *src = xn + p * c->plane_bytes + (t / 3) * c->row_bytes + (ox0 + t % 3) * (CH / 8);
                        __m512i x = count == LP ? _mm512_loadu_si512(src)
                                    : CH == 16 ? _mm512_maskz_loadu_epi16(lanes, src)
                                               : _mm512_maskz_loadu_epi32((__mmask16)lanes, src);
                        const uint32_t *wt = c->lane_w[e - p][t] + o0;
                        #pragma GCC unroll 16
                        for (int o = 0; o < 16; o++) {
                            __m512i y = _mm512_and_si512(x, _mm512_set1_epi32((int)wt[o]));
                            acc[o] = CH == 16 ? _mm512_add_epi16(acc[o], _mm512_popcnt_epi16(y))
                                              : _mm512_add_epi32(acc[o], _mm512_popcnt_epi32(y));
                        }
                    }
            }
            /* Each channel's codes: wstride * tot + lowest * S against its thresholds. */
            const __m512i one = CH == 16 ? _mm512_set1_epi16(1) : _mm512_set1_epi32(1);
            #pragma GCC unroll 16
            for (int o = 0; o < 16; o++) {
                const int ch = o0 + o;
                __m512i code;
                if (CH == 16) {
                    __m512i a = _mm512_add_epi16(_mm512_mullo_epi16(acc[o], _mm512_set1_epi16((short)c->wstride)), low);
                    if (c->neg64 >> ch & 1) a = _mm512_sub_epi16(_mm512_setzero_si512(), a);
                    code = _mm512_set1_epi16((short)c->qmin);
                    for (int l = 0; l < c->L; l++)
                        code = _mm512_mask_add_epi16(code, _mm512_cmpge_epi16_mask(a, _mm512_set1_epi16(c->thr16[l][ch])),
                                                     code, one);
                    r[o] = _mm512_cvtepi16_epi8(code);
                } else {
                    __m512i a = _mm512_add_epi32(_mm512_mullo_epi32(acc[o], _mm512_set1_epi32(c->wstride)), low);
                    if (c->dir[ch] < 0) a = _mm512_sub_epi32(_mm512_setzero_si512(), a);
                    code = _mm512_set1_epi32(c->qmin);
                    for (int l = 0; l < c->L; l++)
                        code = _mm512_mask_add_epi32(code, _mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(c->thr[(ssize)l * c->Opad + ch])),
                                                     code, one);
                    codes[ch] = _mm512_cvtepi32_epi8(code);
                }
            }
        }
        if (CH == 32)  /* channel o's positions in lane 0, channel 16 + o's in lane 1 */
            for (int o = 0; o < 16; o++) r[o] = _mm256_inserti128_si256(_mm256_castsi128_si256(codes[o]), codes[16 + o], 1);
        transpose16x32(r);
        /* CH 16: positions q and 16 + q in r[q]'s lanes; CH 32: position q's 32 codes in r[q].
         * Residual add (saturating, then the clip), store. */
        uint8_t *out = c->out + (m_row + ox0) * CH;
        const uint8_t *res = c->res ? c->res + residual_offset(c, n, oy, ox0) : NULL;
        const ssize res_step = (ssize)c->res_stride * c->res_C;  /* res_C is CH, or 16 for CH 32 (lanes_fits) */
        for (int q = 0; q < 16; q++) {
            if (CH == 32) {
                if (q >= count) continue;
                __m256i v = r[q];
                if (res) {  /* channels from res_C on add 0 (a zero-padded shortcut) */
                    const uint8_t *sc = res + res_step * q;
                    __m256i s = c->res_C == 32 ? _mm256_loadu_si256((const __m256i *)sc)
                                               : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)sc));
                    v = _mm256_min_epu8(_mm256_adds_epu8(v, s), _mm256_set1_epi8((char)c->res_qmax));
                }
                _mm256_storeu_si256((__m256i *)(out + 32 * q), v);
                continue;
            }
            for (int half = 0; half < 2; half++) {
                const int k = 16 * half + q;  /* position ox0 + k */
                if (k >= count) continue;
                __m128i v = half ? _mm256_extracti128_si256(r[q], 1) : _mm256_castsi256_si128(r[q]);
                if (res)
                    v = _mm_min_epu8(_mm_adds_epu8(v, _mm_loadu_si128((const __m128i *)(res + res_step * k))),
                                     _mm_set1_epi8((char)c->res_qmax));
                _mm_storeu_si128((__m128i *)(out + 16 * k), v);
            }
        }
    }
}

static void conv_rows16(const conv_t *c, ssize n, ssize oy) { rows_lanes(c, n, oy, 16); }
static void conv_rows32(const conv_t *c, ssize n, ssize oy) { rows_lanes(c, n, oy, 32); }
