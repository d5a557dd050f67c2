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

/* How many of a channel's sorted thresholds each lane of `s` reaches, by halving (c->search_steps,
 * prepare_lane_search): n, the count of the table's entries <= s, grows by 2^k wherever entry
 * n + 2^k - 1 is <= s, for k from steps - 1 down to 0, and is then clipped to L. One permute,
 * compare and add per halving against one compare and add per level: 5 against 30 for a 4-bit
 * signed branch. */
static inline __m512i search_count16(__m512i s, __m512i table, int steps, int L) {
    __m512i n = _mm512_setzero_si512();
    for (int k = steps - 1; k >= 0; k--) {
        __m512i t = _mm512_permutexvar_epi16(_mm512_add_epi16(n, _mm512_set1_epi16((short)((1 << k) - 1))), table);
        n = _mm512_mask_add_epi16(n, _mm512_cmpge_epi16_mask(s, t), n, _mm512_set1_epi16((short)(1 << k)));
    }
    return _mm512_min_epi16(n, _mm512_set1_epi16((short)L));
}

/* search_count16 in int32 lanes, the 32-entry table as two vectors (entries 0-15, 16-31). */
static inline __m512i search_count32(__m512i s, __m512i lo, __m512i hi, int steps, int L) {
    __m512i n = _mm512_setzero_si512();
    for (int k = steps - 1; k >= 0; k--) {
        __m512i t = _mm512_permutex2var_epi32(lo, _mm512_add_epi32(n, _mm512_set1_epi32((1 << k) - 1)), hi);
        n = _mm512_mask_add_epi32(n, _mm512_cmpge_epi32_mask(s, t), n, _mm512_set1_epi32(1 << k));
    }
    return _mm512_min_epi32(n, _mm512_set1_epi32(L));
}

/* Output row oy of image n; CH (16 or 32) is a compile-time constant in each caller. */
static inline __attribute__((always_inline)) void rows_lanes(const conv_t *c, ssize n, ssize oy, const int CH) {
    const int LP = 512 / CH;  /* positions per vector */
    const uint8_t *xn = c->x + n * c->image_bytes + oy * c->row_bytes;
    const int top = c->P + c->J - 2;
    for (ssize ox0 = 0; ox0 < c->WO; ox0 += LP) {
        const int count = c->WO - ox0 < LP ? (int)(c->WO - ox0) : LP;
        const __mmask32 lanes = count == 32 ? ~0u : (1u << count) - 1;
        /* lowest * S for the row's positions, in the epilogue's lanes: S, each window's code sum, is
         * counted with the first block's popcounts (plane p's words once, at level e = p), so the
         * packing computes no window sums for these convs */
        __m512i low = _mm512_setzero_si512(), sums = low;
        const int count_sums = c->lowest != 0;
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
                    sums = CH == 16 ? _mm512_slli_epi16(sums, 1) : _mm512_slli_epi32(sums, 1);
                }
                int plo = e - (c->J - 1) > 0 ? e - (c->J - 1) : 0, phi = e < c->P - 1 ? e : c->P - 1;
                for (int p = plo; p <= phi; p++)
                    for (int t = 0; t < 9; t++) {
                        const uint8_t *src = xn + p * c->plane_bytes + (t / 3) * c->row_bytes + (ox0 + t % 3) * (CH / 8);
                        __m512i x = count == LP ? _mm512_loadu_si512(src)
                                    : CH == 16 ? _mm512_maskz_loadu_epi16(lanes, src)
                                               : _mm512_maskz_loadu_epi32((__mmask16)lanes, src);
                        if (count_sums && o0 == 0 && p == e)
                            sums = CH == 16 ? _mm512_add_epi16(sums, _mm512_popcnt_epi16(x)) : _mm512_add_epi32(sums, _mm512_popcnt_epi32(x));
                        const uint32_t *wt = c->lane_w[e - p][t] + o0;
                        #pragma GCC unroll 16
                        for (int o = 0; o < 16; o++) {
                            __m512i y = _mm512_and_si512(x, _mm512_set1_epi32((int)wt[o]));
                            acc[o] = CH == 16 ? _mm512_add_epi16(acc[o], _mm512_popcnt_epi16(y))
                                              : _mm512_add_epi32(acc[o], _mm512_popcnt_epi32(y));
                        }
                    }
            }
            if (o0 == 0 && count_sums)
                low = CH == 16 ? _mm512_mullo_epi16(sums, _mm512_set1_epi16((short)c->lowest))
                               : _mm512_mullo_epi32(sums, _mm512_set1_epi32(c->lowest));
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
                    if (c->search_steps)
                        code = _mm512_add_epi16(code, search_count16(a, _mm512_loadu_si512(c->search16[ch]), c->search_steps, c->L));
                    else
                        for (int l = 0; l < c->L; l++)
                            code = _mm512_mask_add_epi16(code, _mm512_cmpge_epi16_mask(a, _mm512_set1_epi16(c->thr16[l][ch])),
                                                         code, one);
                    r[o] = _mm512_cvtepi16_epi8(code);
                } else {
                    __m512i a = _mm512_add_epi32(_mm512_mullo_epi32(acc[o], _mm512_set1_epi32(c->wstride)), low);
                    if (c->dir[ch] < 0) a = _mm512_sub_epi32(_mm512_setzero_si512(), a);
                    code = _mm512_set1_epi32(c->qmin);
                    if (c->search_steps)
                        code = _mm512_add_epi32(code, search_count32(a, _mm512_loadu_si512(c->search32[ch]),
                                                                     _mm512_loadu_si512(c->search32[ch] + 16), c->search_steps, c->L));
                    else
                        for (int l = 0; l < c->L; l++)
                            code = _mm512_mask_add_epi32(code, _mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(c->thr[(ssize)l * c->Opad + ch])),
                                                         code, one);
                    codes[ch] = _mm512_cvtepi32_epi8(code);
                }
            }
        }
        if (CH == 32)  /* channel o's positions in lane 0, channel 16 + o's in lane 1 */
            for (int o = 0; o < 16; o++) r[o] = _mm256_inserti128_si256(_mm256_castsi128_si256(codes[o]), codes[16 + o], 1);
        store_lane_codes(c, r, n, oy, ox0, count, CH);
    }
}

static void conv_rows16(const conv_t *c, ssize n, ssize oy) { rows_lanes(c, n, oy, 16); }
static void conv_rows32(const conv_t *c, ssize n, ssize oy) { rows_lanes(c, n, oy, 32); }
