/* The dot-product conv (conv_t.dot): input codes as bytes, times int8 weight codes, no bit-planes.
 * kernels.c includes this once per instruction set with DOT_NAME naming the function and
 * DOT_MAC(acc, x, w) adding to 8 int32 lanes the dot products of the 4 codes in every dword of x
 * (one position's 4 input channels, broadcast) with each channel's 4 weights in w: VPDPBUSD with
 * VNNI, else VPMADDUBSW + VPMADDWD (exact: the caller keeps 2 x code x |weight| inside int16).
 * A tile is DOT_TILE positions x 8 output channels; each window tap and group of 4 input channels
 * loads one weight vector and broadcasts each position's 4 codes. */
static void DOT_NAME(const conv_t *c, ssize n, ssize m0, ssize m1) {
    const uint8_t *xn = c->x + n * c->image_bytes;
    const ssize count = m1 - m0, groups = c->Cb / 4, blocks = c->Opad / 8;  /* Cb: bytes per pixel, a multiple of 4 */
    ssize pos[DOT_POSITIONS + DOT_TILE], roff[DOT_POSITIONS];
    window_positions(c, n, m0, count, pos, roff);
    for (ssize i = count; i < count + DOT_TILE; i++) pos[i] = pos[count - 1];
    for (ssize o0 = 0; o0 < c->O; o0 += 8)
        for (ssize i0 = 0; i0 < count; i0 += DOT_TILE) {
            __m256i acc[DOT_TILE];
            #pragma GCC unroll 8
            for (int i = 0; i < DOT_TILE; i++) acc[i] = _mm256_setzero_si256();
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
                            acc[i] = DOT_MAC(acc[i], _mm256_set1_epi32((int)four), w);
                        }
                    }
                }
            for (int i = 0; i < DOT_TILE && i0 + i < count; i++)
                finish8_avx2(c, n * c->HO * c->WO + m0 + i0 + i, o0, acc[i], 0, c->res ? roff[i0 + i] : 0);
        }
}
