/* The dot-product conv on SDOT (AArch64 with the ARMv8.2 dot-product extension); kernels.c includes
 * this under that target, after conv_neon.h (see there). */

/* dot_portable's arithmetic: per tile of NEON_DOT_TILE positions and block of 8 output channels, each
 * group of 4 input channels is one 32-bit lane of codes, broadcast, and SDOT adds its products with
 * the 8 x 4 weights (two vectors as stored) to the two int32 vectors of the 8 channels. */
static void dot_sdot(const conv_t *c, ssize n, ssize m0, ssize m1) {
    if (c->dot_top > 127) {  /* codes SDOT would read as negative bytes */
        dot_portable(c, n, m0, m1);
        return;
    }
    const uint8_t *xn = c->x + n * c->image_bytes;
    const ssize count = m1 - m0, groups = c->Cb / 4, blocks = c->Opad / 8;  /* Cb: a multiple of 4 */
    ssize pos[DOT_POSITIONS + NEON_DOT_TILE], roff[DOT_POSITIONS];
    window_positions(c, n, m0, count, pos, roff);
    for (ssize i = count; i < count + NEON_DOT_TILE; i++) pos[i] = pos[count - 1];
    for (ssize o0 = 0; o0 < c->O; o0 += 8)
        for (ssize i0 = 0; i0 < count; i0 += NEON_DOT_TILE) {
            int32x4_t lo[NEON_DOT_TILE], hi[NEON_DOT_TILE];
            for (int i = 0; i < NEON_DOT_TILE; i++) lo[i] = hi[i] = vdupq_n_s32(0);
            for (int ky = 0; ky < c->KH; ky++)
                for (int kx = 0; kx < c->KW; kx++) {
                    const uint8_t *xt = xn + ky * c->row_bytes + kx * c->Cb;
                    const int8_t *wt = c->wdot + (((ssize)ky * c->KW + kx) * groups * blocks + o0 / 8) * 32;
                    for (ssize g = 0; g < groups; g++) {
                        const int8x16_t w0 = vld1q_s8(wt + g * blocks * 32), w1 = vld1q_s8(wt + g * blocks * 32 + 16);
                        for (int i = 0; i < NEON_DOT_TILE; i++) {
                            uint32_t four;
                            memcpy(&four, xt + pos[i0 + i] + 4 * g, 4);
                            const int8x16_t x = vreinterpretq_s8_u32(vdupq_n_u32(four));
                            lo[i] = vdotq_s32(lo[i], w0, x), hi[i] = vdotq_s32(hi[i], w1, x);
                        }
                    }
                }
            for (int i = 0; i < NEON_DOT_TILE && i0 + i < count; i++)
                finish8_neon(c, n * c->HO * c->WO + m0 + i0 + i, o0, lo[i], hi[i], 0, c->res ? roff[i0 + i] : 0);
        }
}
