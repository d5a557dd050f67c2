/* The AArch64 NEON convs; kernels.c includes this on AArch64 (dot_sdot under the dot-product
 * extension's target). The same arithmetic as the portable kernels (kernels.c), vectorised:
 *   - the tile conv: a tile of NEON_TILE positions x 8 output channels; per window word, the
 *     position's word is ANDed with 8 channels' weight words (four 128-bit vectors) and counted
 *     byte by byte (CNT), the byte counts summed for up to 31 words, then widened by pairwise adds
 *     (UADDLP, UADALP) into 32-bit sums; plane pairs by shift level, Horner-style, as the x86 tiles;
 *   - the first conv as table sums: a window's 16 channels as two vectors of int16 sums (int8
 *     entries widened as they are added), as exact as int16 lanes are for sums the caller keeps
 *     inside +-32000;
 *   - the dot-product conv on SDOT (ARMv8.2 dot-product extension): 4 code bytes times 4 int8
 *     weights into each int32 lane, the weights' stored order (tap, group of 4 channels, block of 8
 *     outputs, 8 x 4 bytes) being two SDOT operands as they lie. SDOT multiplies signed bytes, so a
 *     call whose codes reach 128 runs the portable dot conv instead (the plan never sends it one:
 *     steps.c dot_holds);
 *   - the epilogue (finish8_neon): 8 channels' accumulators, direction, integer thresholds, the
 *     residual add and its clip, as finish_portable.
 * Verified under user-mode emulation (`make test-arm64`); its speed has not been measured on ARM
 * hardware. */

#define NEON_POSITIONS 16  /* positions per work item of the tile conv: a multiple of NEON_TILE */
#define NEON_TILE 2        /* positions per tile, each x 8 output channels (a guess: not measured) */
#define NEON_DOT_TILE 4    /* positions per tile of the dot conv */

/* finish_portable for channels o .. o + 7 (those below O) of global position m, from their sums t0
 * (channels o .. o + 3) and t1 (o + 4 .. o + 7): accumulators, or codes by thresholds plus the
 * residual at offset r. direction and thresholds hold Opad >= o + 8 channels. */
static inline void finish8_neon(const conv_t *c, ssize m, ssize o, int32x4_t t0, int32x4_t t1, int64_t S, ssize r) {
    const int left = c->O - o < 8 ? (int)(c->O - o) : 8;
    const int32x4_t wstride = vdupq_n_s32(c->wstride), offset = vdupq_n_s32((int32_t)(c->lowest * S));
    const int32x4_t a0 = vmlaq_s32(offset, t0, wstride), a1 = vmlaq_s32(offset, t1, wstride);
    if (!c->out) {
        int32_t lanes[8];
        vst1q_s32(lanes, a0), vst1q_s32(lanes + 4, a1);
        memcpy(c->acc + m * c->O + o, lanes, sizeof(int32_t) * left);
        return;
    }
    const int16x8_t dir = vmovl_s8(vld1_s8(c->dir + o));
    const int32x4_t s0 = vmulq_s32(a0, vmovl_s16(vget_low_s16(dir))), s1 = vmulq_s32(a1, vmovl_high_s16(dir));
    /* code = qmin + #{l: s >= thr_l}; a true compare is all ones, -1 */
    int32x4_t c0 = vdupq_n_s32(c->qmin), c1 = c0;
    for (int l = 0; l < c->L; l++) {
        const int32_t *thr = c->thr + (ssize)l * c->Opad + o;
        c0 = vsubq_s32(c0, vreinterpretq_s32_u32(vcgeq_s32(s0, vld1q_s32(thr))));
        c1 = vsubq_s32(c1, vreinterpretq_s32_u32(vcgeq_s32(s1, vld1q_s32(thr + 4))));
    }
    if (c->res) {  /* channels from res_C on add 0 */
        uint8_t shortcut[8] = {0};
        if (o < c->res_C) memcpy(shortcut, c->res + r + o, c->res_C - o < left ? c->res_C - o : left);
        const int16x8_t sc = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(shortcut)));
        const int32x4_t shift = vdupq_n_s32(c->res_shift), top = vdupq_n_s32(c->res_qmax), zero = vdupq_n_s32(0);
        c0 = vmaxq_s32(vminq_s32(vsubq_s32(vaddq_s32(c0, vmovl_s16(vget_low_s16(sc))), shift), top), zero);
        c1 = vmaxq_s32(vminq_s32(vsubq_s32(vaddq_s32(c1, vmovl_high_s16(sc)), shift), top), zero);
    }
    /* the low byte of each code, as finish_portable's (uint8_t) cast */
    uint8_t codes[8];
    vst1_u8(codes, vmovn_u16(vcombine_u16(vmovn_u32(vreinterpretq_u32_s32(c0)), vmovn_u32(vreinterpretq_u32_s32(c1)))));
    memcpy(c->out + m * c->O + o, codes, left);
}

/* R positions (window starts pos[0 .. R)) x output channels o0 .. o0 + 7: each channel's sum of the
 * 2^(p+j)-weighted popcounts. tot[i][v] holds channels o0 + 2v and o0 + 2v + 1, two 32-bit halves
 * each (the popcounts of a word's low and high 4 bytes); the caller adds the halves. */
static inline __attribute__((always_inline)) void tile_neon(const conv_t *c, const uint8_t *xn, const ssize *pos,
                                                            ssize o0, uint32x4_t tot[][4], const int R) {
    uint8x16_t bytes[NEON_TILE][4];
    for (int i = 0; i < R; i++)
        for (int v = 0; v < 4; v++) tot[i][v] = vdupq_n_u32(0), bytes[i][v] = vdupq_n_u8(0);
    const int top = c->P + c->J - 2;
    for (int e = top; e >= 0; e--) {
        for (int i = 0; i < R; i++)
            for (int v = 0; v < 4; v++) tot[i][v] = vshlq_n_u32(tot[i][v], 1);
        int words = 0;  /* added into the byte counts since they were last widened (8 at most each) */
        const int plo = e - (c->J - 1) > 0 ? e - (c->J - 1) : 0, phi = e < c->P - 1 ? e : c->P - 1;
        for (int p = plo; p <= phi; p++) {
            const uint8_t *xp = xn + p * c->plane_bytes;
            const uint64_t *wj = c->w + (ssize)(e - p) * c->KH * c->Kr * c->Opad + o0;
            for (int ky = 0; ky < c->KH; ky++)
                for (int r = 0; r < c->Kr; r++) {
                    const uint64_t *wr = wj + ((ssize)ky * c->Kr + r) * c->Opad;
                    const uint64x2_t w0 = vld1q_u64(wr), w1 = vld1q_u64(wr + 2), w2 = vld1q_u64(wr + 4),
                                     w3 = vld1q_u64(wr + 6);
                    for (int i = 0; i < R; i++) {
                        const uint64x2_t x = vdupq_n_u64(load_u64(xp + ky * c->row_bytes + pos[i] + 8 * r));
                        bytes[i][0] = vaddq_u8(bytes[i][0], vcntq_u8(vreinterpretq_u8_u64(vandq_u64(w0, x))));
                        bytes[i][1] = vaddq_u8(bytes[i][1], vcntq_u8(vreinterpretq_u8_u64(vandq_u64(w1, x))));
                        bytes[i][2] = vaddq_u8(bytes[i][2], vcntq_u8(vreinterpretq_u8_u64(vandq_u64(w2, x))));
                        bytes[i][3] = vaddq_u8(bytes[i][3], vcntq_u8(vreinterpretq_u8_u64(vandq_u64(w3, x))));
                    }
                    if (++words == 31) {
                        for (int i = 0; i < R; i++)
                            for (int v = 0; v < 4; v++)
                                tot[i][v] = vpadalq_u16(tot[i][v], vpaddlq_u8(bytes[i][v])), bytes[i][v] = vdupq_n_u8(0);
                        words = 0;
                    }
                }
        }
        for (int i = 0; i < R; i++)
            for (int v = 0; v < 4; v++)
                tot[i][v] = vpadalq_u16(tot[i][v], vpaddlq_u8(bytes[i][v])), bytes[i][v] = vdupq_n_u8(0);
    }
}

static void conv_neon(const conv_t *c, ssize n, ssize m0, ssize m1) {
    const uint8_t *xn = c->x + n * c->image_bytes;
    const ssize count = m1 - m0;  /* <= NEON_POSITIONS */
    ssize pos[NEON_POSITIONS + NEON_TILE], roff[NEON_POSITIONS];
    static const int32_t no_sums[NEON_POSITIONS];  /* S = 0 when the weights have no offset */
    const int32_t *S = c->window ? c->window + n * c->HO * c->WO + m0 : no_sums;
    window_positions(c, n, m0, count, pos, roff);
    for (ssize i = count; i < count + NEON_TILE; i++) pos[i] = pos[count - 1];
    uint32x4_t tot[NEON_TILE][4];
    for (ssize o0 = 0; o0 < c->O; o0 += 8)
        for (ssize i0 = 0; i0 < count; i0 += NEON_TILE) {
            tile_neon(c, xn, pos + i0, o0, tot, NEON_TILE);
            for (int i = 0; i < NEON_TILE && i0 + i < count; i++)
                finish8_neon(c, n * c->HO * c->WO + m0 + i0 + i, o0,
                             vreinterpretq_s32_u32(vpaddq_u32(tot[i][0], tot[i][1])),
                             vreinterpretq_s32_u32(vpaddq_u32(tot[i][2], tot[i][3])), S[i0 + i],
                             c->res ? roff[i0 + i] : 0);
        }
}

/* table_conv_portable's arithmetic (kernels.c) with the 16 channels' sums in two int16 vectors. */
static void table_conv_neon(const conv_t *c, const void *table, ssize n, ssize oy) {
    const ssize taps = (ssize)c->KH * c->KW * c->image_C, y0 = oy * c->stride - c->pad;
    for (ssize ox = 0; ox < c->WO; ox++) {
        const ssize x0 = ox * c->stride - c->pad;
        int16x8_t lo = vdupq_n_s16(0), hi = lo;
        for (int ky = 0; ky < c->KH; ky++) {
            if (y0 + ky < 0 || y0 + ky >= c->H) continue;
            for (int kx = 0; kx < c->KW; kx++) {
                if (x0 + kx < 0 || x0 + kx >= c->W) continue;
                const uint8_t *px = c->codes + ((n * c->H + y0 + ky) * c->W + x0 + kx) * c->image_C;
                for (int ch = 0; ch < c->image_C; ch++) {
                    const ssize e = ((ssize)px[ch] * taps + (ky * c->KW + kx) * c->image_C + ch) * 16;
                    if (c->table16) {
                        lo = vaddq_s16(lo, vld1q_s16((const int16_t *)table + e));
                        hi = vaddq_s16(hi, vld1q_s16((const int16_t *)table + e + 8));
                    } else {
                        const int8x16_t entries = vld1q_s8((const int8_t *)table + e);
                        lo = vaddw_s8(lo, vget_low_s8(entries)), hi = vaddw_high_s8(hi, entries);
                    }
                }
            }
        }
        const ssize m = (n * c->HO + oy) * c->WO + ox;
        finish8_neon(c, m, 0, vmovl_s16(vget_low_s16(lo)), vmovl_high_s16(lo), 0, 0);
        if (c->O > 8) finish8_neon(c, m, 8, vmovl_s16(vget_low_s16(hi)), vmovl_high_s16(hi), 0, 0);
    }
}
