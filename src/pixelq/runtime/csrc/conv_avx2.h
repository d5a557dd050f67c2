/* The AVX2 convs; kernels.c includes this under a `#pragma GCC target` for AVX2. The AVX-512 files
 * included after it reuse its byte transpose, table loads and lane-code store (AVX2 instructions,
 * which GCC inlines into AVX-512 code).
 *
 * AVX2 has no vector popcount. popcount(x & w) is counted per byte by VPSHUFB lookups of 4-bit
 * nibbles. The weights are prepared once per call (prepare_avx2) for the conv run_conv chose:
 *   - lanes convs (16 or 32 channels, 3x3, stride 1): an output row's positions in the lanes, each
 *     tap's plane words regrouped so a 128-bit lane holds one byte of every position, looked up in
 *     tables made per weight byte (split_lane_nibbles): no AND, 2 shuffles + 2 adds per 256 bits;
 *   - the gathered lanes conv (input channels in slices of 32): the same for 32 consecutive output
 *     positions anywhere, their plane words gathered per tap (split_gather_tables);
 *   - the tile conv (the rest): R positions x 8 output channels of int64 sums, x AND the weight
 *     words' nibbles (split_weight_nibbles), byte counts widened by VPSADBW.
 * Byte counts are widened (VPSADBW, or VPMADDUBSW + VPMADDWD) before they can reach 255. Layers
 * with more bits run as dot products (dot_avx2); the first conv over a lookup as table sums
 * (table_body.h). */

#define AVX2_POSITIONS 32  /* positions per work item of the tile conv: a multiple of AVX2_TILE */
#define AVX2_TILE 4        /* positions per tile, each x 8 output channels (3 measured slower) */

static inline __m256i nibble_counts(void) {
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}

/* acc + per-byte popcount(x & w), x and w given as nibbles: lo = v & 0x0f.., hi = (v >> 4) & 0x0f... */
static inline __m256i add_counts(__m256i acc, __m256i xlo, __m256i xhi, __m256i wlo, __m256i whi, __m256i table) {
    acc = _mm256_add_epi8(acc, _mm256_shuffle_epi8(table, _mm256_and_si256(xlo, wlo)));
    return _mm256_add_epi8(acc, _mm256_shuffle_epi8(table, _mm256_and_si256(xhi, whi)));
}

static void pack_row_avx2(const conv_t *c, ssize n, ssize y, int32_t *sums) {
    if (c->C % 8) {  /* channels not whole bytes: the byte-gather packer */
        pack_row_portable(c, n, y, sums);
        return;
    }
    /* As pack_row_avx512: bit p of 32 code bytes moved to each byte's top bit, collected by VPMOVMSKB. */
    const uint8_t *src = c->codes + (n * c->H + y) * c->W * c->C;
    uint8_t *dst = c->x + n * c->image_bytes + (y + c->pad) * c->row_bytes + c->pad * c->Cb;
    const ssize bytes = c->W * c->C;
    for (ssize k = 0; k < bytes; k += 32) {
        const ssize take = bytes - k < 32 ? bytes - k : 32;  /* a multiple of 8 */
        __m256i v;
        if (take == 32) {
            v = _mm256_loadu_si256((const __m256i *)(src + k));
        } else {
            uint8_t tail[32] = {0};
            memcpy(tail, src + k, take);
            v = _mm256_loadu_si256((const __m256i *)tail);
        }
        for (int p = 0; p < c->P; p++) {
            uint32_t bits = (uint32_t)_mm256_movemask_epi8(_mm256_sll_epi16(v, _mm_cvtsi32_si128(7 - p)));
            if (take == 32) memcpy(dst + p * c->plane_bytes + k / 8, &bits, 4);  /* a constant size: one store */
            else memcpy(dst + p * c->plane_bytes + k / 8, &bits, take / 8);
        }
    }
    if (sums) pixel_sums_sad(c, src, sums);
}

/* ---- The lanes convs' tables (made once per call, from the packed weights). ---- */

/* popcount(v & nib) for v = 0 .. 15: one shuffle table. */
static inline __m128i nibble_table(uint32_t nib) {
    const __m128i values = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm_shuffle_epi8(_mm256_castsi256_si128(nibble_counts()), _mm_and_si128(values, _mm_set1_epi8((char)nib)));
}

/* c->w_nib from c->lane_w for the lanes convs below: for each (j, tap, output
 * channel) and vector of byte groups (CH 16: [byte 0 | byte 1]; CH 32: [0 | 2], then [1 | 3]), two
 * 32-byte shuffle tables: in each 128-bit lane, entry v = popcount(v & the low nibble of that weight
 * byte), then the same for its high nibble. (J, 9, CH, CH / 16, 2, 32) bytes; 0 when out of memory. */
static int split_lane_nibbles(conv_t *c) {
    const int CH = (int)c->O, V = CH / 16;
    static const int lane_byte[2][2][2] = {{{0, 1}, {0, 1}}, {{0, 2}, {1, 3}}};  /* [CH 32][v][lane] */
    uint8_t *tables = aligned_alloc(64, (size_t)c->J * 9 * CH * V * 2 * 32);  /* whole lines: no 32-byte load splits one */
    if (!tables) return 0;
    uint8_t *at = tables;
    for (int j = 0; j < c->J; j++)
        for (int t = 0; t < 9; t++)
            for (int o = 0; o < CH; o++)
                for (int v = 0; v < V; v++)
                    for (int half = 0; half < 2; half++)  /* low nibble, high nibble */
                        for (int lane = 0; lane < 2; lane++, at += 16) {
                            const uint32_t byte = c->lane_w[j][t][o] >> (8 * lane_byte[CH == 32][v][lane]) & 0xFF;
                            const uint32_t nib = half ? byte >> 4 : byte & 0xF;
                            _mm_storeu_si128((__m128i *)at, nibble_table(nib));
                        }
    c->w_nib = (uint64_t *)tables;
    return 1;
}

/* The shuffle tables of the gathered lanes conv below: for each (j, tap, slice of 32
 * input channels, output channel), the lanes convs' CH 32 vectors [byte 0 | byte 2], [byte 1 | byte 3]
 * of the slice's weight bits, each as low- and high-nibble tables ((J, taps, C / 32, O, 2, 2, 32)
 * bytes). 0 when out of memory. */
static int split_gather_tables(conv_t *c) {
    static const int lane_byte[2][2] = {{0, 2}, {1, 3}};  /* [v][lane] */
    const int taps = c->KH * c->KW, slices = (int)(c->C / 32);
    uint8_t *tables = aligned_alloc(64, (size_t)c->J * taps * slices * c->O * 128);
    if (!tables) return 0;
    uint8_t *at = tables;
    for (int j = 0; j < c->J; j++)
        for (int t = 0; t < taps; t++)
            for (int h = 0; h < slices; h++)
                for (ssize o = 0; o < c->O; o++)
                    for (int v = 0; v < 2; v++)
                        for (int half = 0; half < 2; half++)
                            for (int lane = 0; lane < 2; lane++, at += 16) {
                                /* byte kx * Cb + 4 h + b of row ky's weight bits (tap kx's channels follow kx * Cb bytes) */
                                const ssize k = (ssize)(t % c->KW) * c->Cb + 4 * h + lane_byte[v][lane];
                                const uint64_t word = c->w[(((ssize)j * c->KH + t / c->KW) * c->Kr + k / 8) * c->Opad + o];
                                const uint32_t byte = (uint32_t)(word >> (8 * (k % 8))) & 0xFF;
                                const uint32_t nib = half ? byte >> 4 : byte & 0xF;
                                _mm_storeu_si128((__m128i *)at, nibble_table(nib));
                            }
    c->w_nib = (uint64_t *)tables;
    return 1;
}

/* c->w_nib from c->w: for each window word (j, ky, r) and block of 4 output channels, the 4 words'
 * low nibbles then their high nibbles ((J, KH, Kr, Opad / 4, 2, 4) words). 0 when out of memory. */
static int split_weight_nibbles(conv_t *c) {
    const ssize words = (ssize)c->J * c->KH * c->Kr, blocks = c->Opad / 4;
    uint64_t *nib = malloc(sizeof(uint64_t) * words * c->Opad * 2);
    if (!nib) return 0;
    for (ssize k = 0; k < words; k++)
        for (ssize b = 0; b < blocks; b++)
            for (int i = 0; i < 4; i++) {
                const uint64_t w = c->w[k * c->Opad + 4 * b + i];
                nib[(k * blocks + b) * 8 + i] = w & 0x0F0F0F0F0F0F0F0FULL;
                nib[(k * blocks + b) * 8 + 4 + i] = (w >> 4) & 0x0F0F0F0F0F0F0F0FULL;
            }
    c->w_nib = nib;
    return 1;
}

/* c->w_nib for the conv run_conv chose: the lanes convs' tables, the gathered one's, or the tile
 * conv's split weight words. */
static int prepare_avx2(conv_t *c, int lanes, int gather) {
    return lanes ? split_lane_nibbles(c) : gather ? split_gather_tables(c) : split_weight_nibbles(c);
}

/* ---- The tile conv. ---- */

/* R positions (window starts pos[0 .. R)) x output channels o0 .. o0 + 7: the int64 sums of the
 * 2^(p+j)-weighted popcounts, channels o0 .. o0 + 3 in res[2 i], o0 + 4 .. in res[2 i + 1]. Plane
 * pairs by shift level, Horner-style, as tile512; byte counts widen before 31 words (8 each). */
static inline __attribute__((always_inline)) void tile_avx2(const conv_t *c, const uint8_t *xn, const ssize *pos,
                                                            ssize o0, __m256i *res, const int R) {
    const __m256i table = nibble_counts(), zero = _mm256_setzero_si256();
    const ssize blocks = c->Opad / 4;
    __m256i tot[AVX2_TILE][2], bytes[AVX2_TILE][2];
    #pragma GCC unroll 4
    for (int i = 0; i < R; i++) tot[i][0] = tot[i][1] = bytes[i][0] = bytes[i][1] = zero;
    const int top = c->P + c->J - 2;
    for (int e = top; e >= 0; e--) {
        #pragma GCC unroll 4
        for (int i = 0; i < R; i++) tot[i][0] = _mm256_slli_epi64(tot[i][0], 1), tot[i][1] = _mm256_slli_epi64(tot[i][1], 1);
        int words = 0;  /* added into the byte counts since they were last widened */
        int plo = e - (c->J - 1) > 0 ? e - (c->J - 1) : 0, phi = e < c->P - 1 ? e : c->P - 1;
        for (int p = plo; p <= phi; p++) {
            const uint8_t *xp = xn + p * c->plane_bytes;
            const uint64_t *wj = c->w_nib + ((ssize)(e - p) * c->KH * c->Kr * blocks + o0 / 4) * 8;
            for (int ky = 0; ky < c->KH; ky++)
                for (int r = 0; r < c->Kr; r++) {
                    const uint64_t *wr = wj + ((ssize)ky * c->Kr + r) * blocks * 8;
                    #pragma GCC unroll 4
                    for (int i = 0; i < R; i++) {
                        /* VPSHUFB reads bits 0-3 and 7 of an index: x & (w's low nibbles) needs no mask of
                         * its own, nor (x >> 4) & (w's high nibbles, shifted down) */
                        __m256i xlo = _mm256_set1_epi64x((long long)load_u64(xp + ky * c->row_bytes + pos[i] + 8 * r));
                        __m256i xhi = _mm256_srli_epi64(xlo, 4);
                        #pragma GCC unroll 2
                        for (int v = 0; v < 2; v++)
                            bytes[i][v] = add_counts(bytes[i][v], xlo, xhi, _mm256_loadu_si256((const __m256i *)(wr + 8 * v)),
                                                     _mm256_loadu_si256((const __m256i *)(wr + 8 * v + 4)), table);
                    }
                    if (++words == 31) {
                        #pragma GCC unroll 4
                        for (int i = 0; i < R; i++)
                            for (int v = 0; v < 2; v++)
                                tot[i][v] = _mm256_add_epi64(tot[i][v], _mm256_sad_epu8(bytes[i][v], zero)), bytes[i][v] = zero;
                        words = 0;
                    }
                }
        }
        #pragma GCC unroll 4
        for (int i = 0; i < R; i++)
            for (int v = 0; v < 2; v++)
                tot[i][v] = _mm256_add_epi64(tot[i][v], _mm256_sad_epu8(bytes[i][v], zero)), bytes[i][v] = zero;
    }
    #pragma GCC unroll 4
    for (int i = 0; i < R; i++) res[2 * i] = tot[i][0], res[2 * i + 1] = tot[i][1];
}

static void tile_avx2_r(const conv_t *c, const uint8_t *xn, const ssize *pos, ssize o0, __m256i *res) {
    tile_avx2(c, xn, pos, o0, res, AVX2_TILE);
}

/* Two vectors of 4 int64 sums (the low 32 bits of each count) as 8 int32 lanes. */
static inline __m256i join8(__m256i lo, __m256i hi) {
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    return _mm256_blend_epi32(_mm256_permutevar8x32_epi32(lo, even), _mm256_permutevar8x32_epi32(hi, even), 0xF0);
}

/* finish_portable for channels o .. o + 7 (those below O) of global position m, from their popcount
 * sums as int32 lanes: accumulators, or codes by thresholds plus the residual at offset r. */
static inline void finish8_avx2(const conv_t *c, ssize m, ssize o, __m256i tot, int64_t S, ssize r) {
    const int left = c->O - o < 8 ? (int)(c->O - o) : 8;
    __m256i a = _mm256_add_epi32(_mm256_mullo_epi32(tot, _mm256_set1_epi32(c->wstride)),
                                 _mm256_set1_epi32((int32_t)(c->lowest * S)));
    if (!c->out) {
        int32_t lanes[8];
        _mm256_storeu_si256((__m256i *)lanes, a);
        memcpy(c->acc + m * c->O + o, lanes, sizeof(int32_t) * left);
        return;
    }
    /* direction and thresholds hold Opad >= o + 8 channels; the direction is +1 or -1, never 0 */
    __m256i s = _mm256_sign_epi32(a, _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(c->dir + o))));
    /* code = qmin + #{l: s >= thr_l} = qmin + L - #{l: thr_l > s}; a true compare is -1 */
    __m256i code = _mm256_set1_epi32(c->qmin + c->L);
    for (int l = 0; l < c->L; l++)
        code = _mm256_add_epi32(code, _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)(c->thr + (ssize)l * c->Opad + o)), s));
    if (c->res) {  /* channels from res_C on add 0 */
        uint8_t shortcut[8] = {0};
        if (o < c->res_C) memcpy(shortcut, c->res + r + o, c->res_C - o < left ? c->res_C - o : left);
        code = _mm256_min_epi32(_mm256_sub_epi32(_mm256_add_epi32(code, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)shortcut))),
                                                 _mm256_set1_epi32(c->res_shift)),
                                _mm256_set1_epi32(c->res_qmax));  /* below 0: the unsigned pack below takes it to 0 */
    }
    __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
    uint64_t codes = (uint64_t)_mm_cvtsi128_si64(_mm_packus_epi16(words, words));
    memcpy(c->out + m * c->O + o, &codes, left);
}

static void conv_avx2(const conv_t *c, ssize n, ssize m0, ssize m1) {
    const uint8_t *xn = c->x + n * c->image_bytes;
    const ssize count = m1 - m0;  /* <= AVX2_POSITIONS */
    ssize pos[AVX2_POSITIONS + AVX2_TILE], roff[AVX2_POSITIONS];
    static const int32_t no_sums[AVX2_POSITIONS];  /* S = 0 when the weights have no offset */
    const int32_t *S = c->window ? c->window + n * c->HO * c->WO + m0 : no_sums;
    window_positions(c, n, m0, count, pos, roff);
    for (ssize i = count; i < count + AVX2_TILE; i++) pos[i] = pos[count - 1];
    __m256i tiles[2 * AVX2_TILE];
    for (ssize o0 = 0; o0 < c->O; o0 += 8)
        for (ssize i0 = 0; i0 < count; i0 += AVX2_TILE) {
            tile_avx2_r(c, xn, pos + i0, o0, tiles);
            for (int i = 0; i < AVX2_TILE && i0 + i < count; i++)
                finish8_avx2(c, n * c->HO * c->WO + m0 + i0 + i, o0, join8(tiles[2 * i], tiles[2 * i + 1]), S[i0 + i],
                             c->res ? roff[i0 + i] : 0);
        }
}

/* ---- The dot-product conv. ---- */

#define DOT_TILE 8  /* DOT_POSITIONS (kernels.c) is a multiple of it */

/* The dot-product conv (conv_t.dot): input codes as bytes times int8 weight codes, no bit-planes. A
 * tile is DOT_TILE positions x 8 output channels; each window tap and group of 4 input channels
 * loads one weight vector (8 channels x 4 weights) and broadcasts each position's 4 codes.
 * VPMADDUBSW makes int16 pair sums (exact: the runtime keeps 2 x code x |weight| <= 32767), which
 * add up in int16 lanes for as many groups as cannot overflow (c->dot_pair_max bounds one group's
 * pair sum), then widen to int32 with VPMADDWD: 2 instructions per 32 products instead of 3. */
static void dot_avx2(const conv_t *c, ssize n, ssize m0, ssize m1) {
    const uint8_t *xn = c->x + n * c->image_bytes;
    const ssize count = m1 - m0, groups = c->Cb / 4, blocks = c->Opad / 8;  /* Cb: bytes per pixel, a multiple of 4 */
    const int flush_every = c->dot_pair_max > 0 ? (int)(32767 / c->dot_pair_max) : 1 << 30;
    const __m256i ones = _mm256_set1_epi16(1);
    ssize pos[DOT_POSITIONS + DOT_TILE], roff[DOT_POSITIONS];
    window_positions(c, n, m0, count, pos, roff);
    for (ssize i = count; i < count + DOT_TILE; i++) pos[i] = pos[count - 1];
    for (ssize o0 = 0; o0 < c->O; o0 += 8)
        for (ssize i0 = 0; i0 < count; i0 += DOT_TILE) {
            __m256i acc[DOT_TILE], pairs[DOT_TILE];
            #pragma GCC unroll 8
            for (int i = 0; i < DOT_TILE; i++) acc[i] = pairs[i] = _mm256_setzero_si256();
            int pending = 0;  /* groups added into the int16 pair sums since they were widened */
            for (int ky = 0; ky < c->KH; ky++)
                for (int kx = 0; kx < c->KW; kx++) {
                    const uint8_t *xt = xn + ky * c->row_bytes + kx * c->Cb;
                    const int8_t *wt = c->wdot + (((ssize)ky * c->KW + kx) * groups * blocks + o0 / 8) * 32;
                    for (ssize g = 0; g < groups; g++) {
                        const __m256i w = _mm256_loadu_si256((const __m256i *)(wt + g * blocks * 32));
                        #pragma GCC unroll 8
                        for (int i = 0; i < DOT_TILE; i++) {
                            uint32_t four;
                            memcpy(&four, xt + pos[i0 + i] + 4 * g, 4);
                            pairs[i] = _mm256_add_epi16(pairs[i], _mm256_maddubs_epi16(_mm256_set1_epi32((int)four), w));
                        }
                        if (++pending == flush_every) {
                            #pragma GCC unroll 8
                            for (int i = 0; i < DOT_TILE; i++)
                                acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(pairs[i], ones)), pairs[i] = _mm256_setzero_si256();
                            pending = 0;
                        }
                    }
                }
            #pragma GCC unroll 8
            for (int i = 0; i < DOT_TILE; i++) acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(pairs[i], ones));
            for (int i = 0; i < DOT_TILE && i0 + i < count; i++)
                finish8_avx2(c, n * c->HO * c->WO + m0 + i0 + i, o0, acc[i], 0, c->res ? roff[i0 + i] : 0);
        }
}

/* ---- The lanes convs (16 or 32 channels, 3x3, stride 1; see conv_lanes.h for the idea). ---- */

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

/* Store the codes of positions ox0 .. ox0 + count - 1 of output row oy from the transposed vectors
 * r (CH 16: positions q and 16 + q in r[q]'s 128-bit lanes; CH 32: position q's 32 codes in r[q]),
 * after the residual add (saturating, the shift taken off saturating at 0, then the clip) when there is one. */
static inline void store_lane_codes(const conv_t *c, __m256i r[16], ssize n, ssize oy, ssize ox0, int count, const int CH) {
    transpose16x32(r);
    const ssize m_row = (n * c->HO + oy) * c->WO;
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
                v = _mm256_min_epu8(_mm256_subs_epu8(_mm256_adds_epu8(v, s), _mm256_set1_epi8((char)c->res_shift)),
                                    _mm256_set1_epi8((char)c->res_qmax));
            }
            _mm256_storeu_si256((__m256i *)(out + 32 * q), v);
            continue;
        }
        for (int half = 0; half < 2; half++) {
            const int k = 16 * half + q;  /* position ox0 + k */
            if (k >= count) continue;
            __m128i v = half ? _mm256_extracti128_si256(r[q], 1) : _mm256_castsi256_si128(r[q]);
            if (res)
                v = _mm_min_epu8(_mm_subs_epu8(_mm_adds_epu8(v, _mm_loadu_si128((const __m128i *)(res + res_step * k))),
                                               _mm_set1_epi8((char)c->res_shift)),
                                 _mm_set1_epi8((char)c->res_qmax));
            _mm_storeu_si128((__m128i *)(out + 16 * k), v);
        }
    }
}

/* 16 positions' 4 bytes each (positions 0-7 in x0, 8-15 in x1) as g[0] = [byte 0 | byte 2] and
 * g[1] = [byte 1 | byte 3], positions in order in each 128-bit lane. */
static inline __attribute__((always_inline)) void regroup32(__m256i x0, __m256i x1, __m256i *g) {
    /* per 128-bit lane (4 positions): byte k of each as dword k; then per vector [b0, b1 | b2, b3]
     * of its 8 positions as qwords; then the two vectors' qwords interleaved */
    const __m256i by_byte = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                             0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i pairs = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    x0 = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(x0, by_byte), pairs);
    x1 = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(x1, by_byte), pairs);
    g[0] = _mm256_unpacklo_epi64(x0, x1);
    g[1] = _mm256_unpackhi_epi64(x0, x1);
}

/* Rearrange the plane words of 16 positions (CH bits each, 2 or 4 bytes, from `src`) so that each
 * 128-bit lane holds one byte of every position, positions in order: CH 16 -> g[0] = [byte 0 | byte 1];
 * CH 32 -> g[0] = [byte 0 | byte 2], g[1] = [byte 1 | byte 3]. Fewer than 16 positions (`have`)
 * are read through a zeroed copy, so nothing past the planes is read. */
static inline __attribute__((always_inline)) void byte_groups(const uint8_t *src, int have, __m256i *g, const int CH) {
    __m256i x0, x1 = _mm256_setzero_si256();
    if (have == 16) {
        x0 = _mm256_loadu_si256((const __m256i *)src);
        if (CH == 32) x1 = _mm256_loadu_si256((const __m256i *)(src + 32));
    } else {
        uint8_t part[64] = {0};
        memcpy(part, src, (size_t)have * CH / 8);
        x0 = _mm256_loadu_si256((const __m256i *)part);
        if (CH == 32) x1 = _mm256_loadu_si256((const __m256i *)(part + 32));
    }
    if (CH == 16) {  /* per 128-bit lane: even bytes then odd; then the lanes' halves regrouped */
        const __m256i even_odd = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                                  0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        g[0] = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(x0, even_odd), 0xD8);
        return;
    }
    regroup32(x0, x1, g);
}

/* Each position's count, as int16 lanes, from byte counts of its bytes in the two 128-bit lanes. */
static inline __m256i lane_counts(__m256i bytes) {
    return _mm256_add_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(bytes)),
                            _mm256_cvtepu8_epi16(_mm256_extracti128_si256(bytes, 1)));
}

/* Output row oy of image n with positions in lanes, 16 per vector: each tap's plane words of 16
 * positions regrouped by byte (byte_groups), so a 128-bit lane holds one byte of the weights' CH
 * bits and the popcount of x & w is a lookup of x's nibbles in tables made for that weight byte
 * (split_lane_nibbles): 2 shuffles and 2 adds per vector, no AND. Byte counts of one plane pair
 * (9 taps, at most 144 per byte) widen to int16 lanes; lanes_fits takes these convs only with the
 * int16 epilogue. The row goes by chunks of 32 (CH 16) or 16 (CH 32) positions, the store's. */
static inline __attribute__((always_inline)) void rows_lanes_avx2(const conv_t *c, ssize n, ssize oy, const int CH) {
    const int V = CH / 16, LP = CH == 16 ? 32 : 16;
    const uint8_t *xn = c->x + n * c->image_bytes + oy * c->row_bytes;
    const int top = c->P + c->J - 2;
    const __m256i low4 = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    const __m256i *tables = (const __m256i *)c->w_nib;
    for (ssize ox0 = 0; ox0 < c->WO; ox0 += LP) {
        const int count = c->WO - ox0 < LP ? (int)(c->WO - ox0) : LP;
        __m256i codes[32][2];  /* output channel o's int16 codes of 16 positions, in the chunk's halves */
        for (int h = 0; h < LP / 16; h++) {
            const ssize first = ox0 + 16 * h;
            const int have = count - 16 * h < 16 ? count - 16 * h : 16;
            if (have <= 0) {
                for (int o = 0; o < CH; o++) codes[o][h] = zero;
                continue;
            }
            /* lowest * S of each position: S, the window's code sum, is counted with the first block's
             * popcounts (plane p's words once, at level e = p), so the packing computes no window sums */
            __m256i low = zero, sums = zero;
            const int count_sums = c->lowest != 0;
            for (int o0 = 0; o0 < CH; o0 += 8) {
                __m256i wide[8];
                #pragma GCC unroll 8
                for (int o = 0; o < 8; o++) wide[o] = zero;
                for (int e = top; e >= 0; e--) {
                    #pragma GCC unroll 8
                    for (int o = 0; o < 8; o++) wide[o] = _mm256_slli_epi16(wide[o], 1);
                    sums = _mm256_slli_epi16(sums, 1);
                    int plo = e - (c->J - 1) > 0 ? e - (c->J - 1) : 0, phi = e < c->P - 1 ? e : c->P - 1;
                    for (int p = plo; p <= phi; p++) {
                        const int with_sums = count_sums && o0 == 0 && p == e;
                        __m256i bytes[8], sum_bytes = zero;
                        #pragma GCC unroll 8
                        for (int o = 0; o < 8; o++) bytes[o] = zero;
                        #pragma GCC unroll 9
                        for (int t = 0; t < 9; t++) {
                            __m256i g[2], lo[2], hi[2];
                            byte_groups(xn + p * c->plane_bytes + (t / 3) * c->row_bytes + (first + t % 3) * (CH / 8), have, g, CH);
                            #pragma GCC unroll 2
                            for (int v = 0; v < V; v++)
                                lo[v] = _mm256_and_si256(g[v], low4), hi[v] = _mm256_and_si256(_mm256_srli_epi16(g[v], 4), low4);
                            if (with_sums) {
                                const __m256i counts = nibble_counts();
                                #pragma GCC unroll 2
                                for (int v = 0; v < V; v++)
                                    sum_bytes = _mm256_add_epi8(_mm256_add_epi8(sum_bytes, _mm256_shuffle_epi8(counts, lo[v])),
                                                                _mm256_shuffle_epi8(counts, hi[v]));
                            }
                            const __m256i *tab = tables + (((ssize)(e - p) * 9 + t) * CH + o0) * 2 * V;
                            #pragma GCC unroll 8
                            for (int o = 0; o < 8; o++)
                                #pragma GCC unroll 2
                                for (int v = 0; v < V; v++) {
                                    const __m256i *tv = tab + (o * V + v) * 2;
                                    bytes[o] = _mm256_add_epi8(bytes[o], _mm256_shuffle_epi8(_mm256_loadu_si256(tv), lo[v]));
                                    bytes[o] = _mm256_add_epi8(bytes[o], _mm256_shuffle_epi8(_mm256_loadu_si256(tv + 1), hi[v]));
                                }
                        }
                        #pragma GCC unroll 8
                        for (int o = 0; o < 8; o++)  /* a position's count: its bytes in the two lanes */
                            wide[o] = _mm256_add_epi16(wide[o], lane_counts(bytes[o]));
                        if (with_sums) sums = _mm256_add_epi16(sums, lane_counts(sum_bytes));
                    }
                }
                if (o0 == 0 && count_sums) low = _mm256_mullo_epi16(sums, _mm256_set1_epi16((short)c->lowest));
                /* wstride * tot + lowest * S against the channel's int16 thresholds (as finish8_avx2) */
                #pragma GCC unroll 8
                for (int o = 0; o < 8; o++) {
                    const int ch = o0 + o;
                    __m256i a = _mm256_add_epi16(_mm256_mullo_epi16(wide[o], _mm256_set1_epi16((short)c->wstride)), low);
                    if (c->dir[ch] < 0) a = _mm256_sub_epi16(zero, a);
                    __m256i code = _mm256_set1_epi16((short)(c->qmin + c->L));
                    for (int l = 0; l < c->L; l++)
                        code = _mm256_add_epi16(code, _mm256_cmpgt_epi16(_mm256_set1_epi16(c->thr16[l][ch]), a));
                    codes[ch][h] = code;
                }
            }
        }
        /* Bytes in the AVX-512 lanes conv's order: r[o] = channel o's 32 positions (CH 16), or channel
         * o's 16 positions then channel 16 + o's (CH 32). VPACK works per 128-bit lane: VPERMQ 0xD8
         * puts the halves back in order. */
        __m256i r[16];
        for (int o = 0; o < 16; o++)
            r[o] = _mm256_permute4x64_epi64(CH == 16 ? _mm256_packus_epi16(codes[o][0], codes[o][1])
                                                     : _mm256_packus_epi16(codes[o][0], codes[16 + o][0]), 0xD8);
        store_lane_codes(c, r, n, oy, ox0, count, CH);
    }
}

/* ---- The gathered lanes conv: any geometry, input channels a multiple of 32. ----
 * The lanes convs' arithmetic for output positions that are not one row's stride-1 neighbours
 * (strided convs, 8 x 8 maps, more channels): 32 consecutive output positions at a time, as two
 * vectors of 16, each tap's plane words gathered from their window starts (VPGATHERDD), 32 input
 * channels (4 bytes) a slice, regrouped by byte once into a stack buffer that every block of 4
 * output channels then reads; each table load serves both vectors (the tables, a few hundred KB
 * for 64 channels, come from L2). Tables per (j, tap, slice, channel) as the lanes convs' CH 32
 * ones (split_gather_tables); the int16 epilogue (gather_fits), a transpose to positions, the store. */
#define GATHER_SLICES_MAX 64  /* regrouped words per group of positions: planes x taps x slices */

static void conv_gather_avx2(const conv_t *c, ssize n, ssize m0, ssize m1) {
    const uint8_t *xn = c->x + n * c->image_bytes;
    const int taps = c->KH * c->KW, slices = (int)(c->C / 32), top = c->P + c->J - 2;
    const __m256i low4 = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    const __m256i *tables = (const __m256i *)c->w_nib;
    ssize pos[AVX2_POSITIONS], roff[AVX2_POSITIONS];
    const int count = (int)(m1 - m0);  /* <= AVX2_POSITIONS = 32 */
    window_positions(c, n, m0, count, pos, roff);
    for (int i = count; i < AVX2_POSITIONS; i++) pos[i] = pos[count - 1];
    /* plane p, tap t, slice h: the regrouped words' nibbles [vector of 16 positions][v][lo, hi] */
    __m256i words[GATHER_SLICES_MAX][2][2][2];
    __m256i at[2];
    for (int k = 0; k < 2; k++)
        at[k] = _mm256_setr_epi32((int)pos[16 * k], (int)pos[16 * k + 1], (int)pos[16 * k + 2], (int)pos[16 * k + 3],
                                  (int)pos[16 * k + 4], (int)pos[16 * k + 5], (int)pos[16 * k + 6], (int)pos[16 * k + 7]);
    __m256i at_hi[2];
    for (int k = 0; k < 2; k++)
        at_hi[k] = _mm256_setr_epi32((int)pos[16 * k + 8], (int)pos[16 * k + 9], (int)pos[16 * k + 10], (int)pos[16 * k + 11],
                                     (int)pos[16 * k + 12], (int)pos[16 * k + 13], (int)pos[16 * k + 14], (int)pos[16 * k + 15]);
    for (int p = 0; p < c->P; p++)
        for (int t = 0; t < taps; t++)
            for (int h = 0; h < slices; h++) {
                const int *base = (const int *)(xn + p * c->plane_bytes + (t / c->KW) * c->row_bytes + (t % c->KW) * c->Cb + 4 * h);
                for (int k = 0; k < 2; k++) {
                    __m256i g[2];
                    regroup32(_mm256_i32gather_epi32(base, at[k], 1), _mm256_i32gather_epi32(base, at_hi[k], 1), g);
                    for (int v = 0; v < 2; v++) {
                        words[(p * taps + t) * slices + h][k][v][0] = _mm256_and_si256(g[v], low4);
                        words[(p * taps + t) * slices + h][k][v][1] = _mm256_and_si256(_mm256_srli_epi16(g[v], 4), low4);
                    }
                }
            }
    __m256i codes[64][2];  /* output channel o's int16 codes of each vector of 16 positions */
    __m256i low[2] = {zero, zero}, sums[2] = {zero, zero};
    const int count_sums = c->lowest != 0;
    for (int o0 = 0; o0 < c->O; o0 += 4) {
        __m256i wide[4][2];
        #pragma GCC unroll 4
        for (int o = 0; o < 4; o++) wide[o][0] = wide[o][1] = zero;
        for (int e = top; e >= 0; e--) {
            #pragma GCC unroll 4
            for (int o = 0; o < 4; o++) wide[o][0] = _mm256_slli_epi16(wide[o][0], 1), wide[o][1] = _mm256_slli_epi16(wide[o][1], 1);
            sums[0] = _mm256_slli_epi16(sums[0], 1), sums[1] = _mm256_slli_epi16(sums[1], 1);
            int plo = e - (c->J - 1) > 0 ? e - (c->J - 1) : 0, phi = e < c->P - 1 ? e : c->P - 1;
            for (int p = plo; p <= phi; p++)
                for (int h = 0; h < slices; h++) {  /* byte counts widened per slice: at most 16 x taps */
                    const int with_sums = count_sums && o0 == 0 && p == e;
                    __m256i bytes[4][2], sum_bytes[2] = {zero, zero};
                    #pragma GCC unroll 4
                    for (int o = 0; o < 4; o++) bytes[o][0] = bytes[o][1] = zero;
                    for (int t = 0; t < taps; t++) {
                        __m256i(*wv)[2][2] = words[(p * taps + t) * slices + h];
                        const __m256i *tab = tables + ((((ssize)(e - p) * taps + t) * slices + h) * c->O + o0) * 4;
                        if (with_sums) {
                            const __m256i counts = nibble_counts();
                            for (int k = 0; k < 2; k++)
                                for (int v = 0; v < 2; v++)
                                    sum_bytes[k] = _mm256_add_epi8(_mm256_add_epi8(sum_bytes[k], _mm256_shuffle_epi8(counts, wv[k][v][0])),
                                                                   _mm256_shuffle_epi8(counts, wv[k][v][1]));
                        }
                        #pragma GCC unroll 2
                        for (int v = 0; v < 2; v++)
                            #pragma GCC unroll 4
                            for (int o = 0; o < 4; o++) {
                                const __m256i tlo = _mm256_loadu_si256(tab + (o * 2 + v) * 2);
                                const __m256i thi = _mm256_loadu_si256(tab + (o * 2 + v) * 2 + 1);
                                #pragma GCC unroll 2
                                for (int k = 0; k < 2; k++)
                                    bytes[o][k] = _mm256_add_epi8(_mm256_add_epi8(bytes[o][k], _mm256_shuffle_epi8(tlo, wv[k][v][0])),
                                                                  _mm256_shuffle_epi8(thi, wv[k][v][1]));
                            }
                    }
                    #pragma GCC unroll 4
                    for (int o = 0; o < 4; o++)
                        for (int k = 0; k < 2; k++) wide[o][k] = _mm256_add_epi16(wide[o][k], lane_counts(bytes[o][k]));
                    if (with_sums)
                        for (int k = 0; k < 2; k++) sums[k] = _mm256_add_epi16(sums[k], lane_counts(sum_bytes[k]));
                }
        }
        if (o0 == 0 && count_sums)
            for (int k = 0; k < 2; k++) low[k] = _mm256_mullo_epi16(sums[k], _mm256_set1_epi16((short)c->lowest));
        #pragma GCC unroll 4
        for (int o = 0; o < 4; o++)  /* as rows_lanes_avx2 */
            for (int k = 0; k < 2; k++) {
                const int ch = o0 + o;
                __m256i a = _mm256_add_epi16(_mm256_mullo_epi16(wide[o][k], _mm256_set1_epi16((short)c->wstride)), low[k]);
                if (c->dir[ch] < 0) a = _mm256_sub_epi16(zero, a);
                __m256i code = _mm256_set1_epi16((short)(c->qmin + c->L));
                for (int l = 0; l < c->L; l++)
                    code = _mm256_add_epi16(code, _mm256_cmpgt_epi16(_mm256_set1_epi16(c->thr16[l][ch]), a));
                codes[ch][k] = code;
            }
    }
    /* 16 channels at a time: the 32 positions' bytes per channel, transposed to positions */
    const ssize m = n * c->HO * c->WO + m0;
    for (int o16 = 0; o16 < c->O; o16 += 16) {
        __m256i r[16];
        for (int o = 0; o < 16; o++)
            r[o] = _mm256_permute4x64_epi64(_mm256_packus_epi16(codes[o16 + o][0], codes[o16 + o][1]), 0xD8);
        transpose16x32(r);  /* position q in r[q & 15]'s 128-bit lane q / 16 */
        for (int q = 0; q < count; q++) {
            __m128i v = q < 16 ? _mm256_castsi256_si128(r[q]) : _mm256_extracti128_si256(r[q - 16], 1);
            if (c->res && o16 < c->res_C)  /* res_C is a multiple of 16 (narrow_fits) */
                v = _mm_adds_epu8(v, _mm_loadu_si128((const __m128i *)(c->res + roff[q] + o16)));
            if (c->res) v = _mm_min_epu8(_mm_subs_epu8(v, _mm_set1_epi8((char)c->res_shift)), _mm_set1_epi8((char)c->res_qmax));
            _mm_storeu_si128((__m128i *)(c->out + (m + q) * c->O + o16), v);
        }
    }
}

static void conv_rows16_avx2(const conv_t *c, ssize n, ssize oy) { rows_lanes_avx2(c, n, oy, 16); }
static void conv_rows32_avx2(const conv_t *c, ssize n, ssize oy) { rows_lanes_avx2(c, n, oy, 32); }

/* ---- The first conv as table sums. ---- */

/* Table row e's 16 entries as int16 lanes: e counts entries (16 per row) of int8, or with `wide` int16. */
static inline __attribute__((always_inline)) __m256i table_entries(const void *table, ssize e, int wide) {
    return wide ? _mm256_loadu_si256((const __m256i *)((const int16_t *)table + e))
                : _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)((const int8_t *)table + e)));
}


/* Output ox of row m_row from its 16 channels' int16 sums: codes by int16 thresholds where they
 * fit (c->narrow: 16 channels), else 8 channels at a time in int32. */
static inline void table_emit_avx2(const conv_t *c, ssize m_row, ssize ox, __m256i acc, __m256i *held) {
    (void)held;  /* the AVX-512 epilogue pairs positions; this one finishes each as it comes */
    const ssize m = m_row + ox;
    if (c->narrow) {
        __m256i s = _mm256_sign_epi16(acc, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)c->dir)));
        __m256i code = _mm256_set1_epi16((short)(c->qmin + c->L));
        for (int l = 0; l < c->L; l++)
            code = _mm256_add_epi16(code, _mm256_cmpgt_epi16(_mm256_loadu_si256((const __m256i *)c->thr16[l]), s));
        _mm_storeu_si128((__m128i *)(c->out + m * 16),
                         _mm_packus_epi16(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1)));
        return;
    }
    finish8_avx2(c, m, 0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc)), 0, 0);
    if (c->O > 8) finish8_avx2(c, m, 8, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc, 1)), 0, 0);
}

#define TABLE_ROW table_row_avx2
#define TABLE_CONV table_conv_avx2
#define TABLE_EMIT table_emit_avx2
#include "table_body.h"
#undef TABLE_ROW
#undef TABLE_CONV
#undef TABLE_EMIT
