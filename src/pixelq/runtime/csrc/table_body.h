/* The first conv as table sums with 16 int16 channel sums per 256-bit vector; kernels.c includes
 * this once per instruction set (AVX2, AVX-512), with TABLE_ROW and TABLE_CONV naming the functions
 * and TABLE_EMIT the epilogue that finishes a position's sums into codes. */

/* A stride-1 3x3 output row over an RGB image, its three input rows inside the image: sliding along
 * the input columns, each pixel's colour values are read once per kernel row, and each looks up its
 * three taps' entries (constant offsets apart), added to the three outputs it reaches: 9 byte loads
 * and 27 vector adds per output rather than 27 of each. The outputs to the left of column 0 and
 * right of column W - 1 see zero padding. Inlined with `wide` a constant: one loop per entry width. */
static inline __attribute__((always_inline)) void TABLE_ROW(const conv_t *c, const void *table, ssize n,
                                                                  ssize oy, ssize y0, int wide) {
    const ssize tap = 3 * 16;  /* from tap (ky, kx)'s entry to (ky, kx + 1)'s */
    const ssize m_row = (n * c->HO + oy) * c->WO;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, held = a0;  /* outputs j + pad - 2, - 1, - 0 */
    for (ssize j = 0; j < c->W + 2; j++) {
        if (j < c->W) {
            #pragma GCC unroll 3
            for (int ky = 0; ky < 3; ky++) {
                const uint8_t *px = c->codes + ((n * c->H + y0 + ky) * c->W + j) * 3;
                #pragma GCC unroll 3
                for (int ch = 0; ch < 3; ch++) {
                    const ssize e = ((ssize)px[ch] * 27 + ky * 9 + ch) * 16;  /* tap (ky, 0) */
                    a2 = _mm256_add_epi16(a2, table_entries(table, e, wide));
                    a1 = _mm256_add_epi16(a1, table_entries(table, e + tap, wide));
                    a0 = _mm256_add_epi16(a0, table_entries(table, e + 2 * tap, wide));
                }
            }
        }
        const ssize ox = j + c->pad - 2;  /* complete: its last tap was column j */
        if (ox >= 0 && ox < c->WO) TABLE_EMIT(c, m_row, ox, a0, &held);
        a0 = a1, a1 = a2, a2 = _mm256_setzero_si256();
    }
}

/* table_conv_portable's arithmetic (kernels.c) with the 16 channels' int16 sums in one vector;
 * stride-1 rows of a 3x3 kernel over 3 colours, inside the image, slide (TABLE_ROW). */
static void TABLE_CONV(const conv_t *c, const void *table, ssize n, ssize oy) {
    const ssize y0 = oy * c->stride - c->pad;
    if (y0 >= 0 && y0 + c->KH <= c->H && c->KH == 3 && c->KW == 3 && c->image_C == 3 && c->stride == 1 &&
        c->WO == c->W + 2 * c->pad - 2) {
        if (c->table16)
            TABLE_ROW(c, table, n, oy, y0, 1);
        else
            TABLE_ROW(c, table, n, oy, y0, 0);
        return;
    }
    const ssize m_row = (n * c->HO + oy) * c->WO, taps = (ssize)c->KH * c->KW * c->image_C;
    __m256i held = _mm256_setzero_si256();
    for (ssize ox = 0; ox < c->WO; ox++) {
        const ssize x0 = ox * c->stride - c->pad;
        __m256i acc = _mm256_setzero_si256();
        for (int ky = 0; ky < c->KH; ky++) {
            if (y0 + ky < 0 || y0 + ky >= c->H) continue;
            for (int kx = 0; kx < c->KW; kx++) {
                if (x0 + kx < 0 || x0 + kx >= c->W) continue;
                const uint8_t *px = c->codes + ((n * c->H + y0 + ky) * c->W + x0 + kx) * c->image_C;
                for (int ch = 0; ch < c->image_C; ch++) {
                    const ssize e = ((ssize)px[ch] * taps + (ky * c->KW + kx) * c->image_C + ch) * 16;
                    acc = _mm256_add_epi16(acc, table_entries(table, e, c->table16));
                }
            }
        }
        TABLE_EMIT(c, m_row, ox, acc, &held);
    }
}
