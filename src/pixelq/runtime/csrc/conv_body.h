/* The portable conv, one output position at a time; kernels.c includes this once per instruction
 * set with CONV_NAME set and a `#pragma GCC target` in force. Same arithmetic as conv_avx512.h. */
static void CONV_NAME(const conv_t *c, ssize n, ssize m0, ssize m1) {
    int64_t *tot = malloc(sizeof(int64_t) * c->O);
    if (!tot) return;  /* cannot happen for any real layer; the caller's buffers are far larger */
    const uint8_t *xn = c->x + n * c->image_bytes;
    for (ssize m = m0; m < m1; m++) {
        ssize oy = m / c->WO, ox = m % c->WO;
        memset(tot, 0, sizeof(int64_t) * c->O);
        for (int p = 0; p < c->P; p++)
            for (int j = 0; j < c->J; j++)
                for (int ky = 0; ky < c->KH; ky++) {
                    const uint8_t *row = xn + p * c->plane_bytes + (oy * c->stride + ky) * c->row_bytes +
                                         ox * c->stride * c->Cb;
                    for (int r = 0; r < c->Kr; r++) {
                        const uint64_t xv = load_u64(row + 8 * r);
                        if (!xv) continue;
                        const uint64_t *restrict wv = c->w + (((ssize)j * c->KH + ky) * c->Kr + r) * c->Opad;
                        for (ssize o = 0; o < c->O; o++) tot[o] += (int64_t)__builtin_popcountll(wv[o] & xv) << (p + j);
                    }
                }
        finish_portable(c, n * c->HO * c->WO + m, tot, window_sum(c, n * c->HO * c->WO + m),
                        c->res ? residual_offset(c, n, oy, ox) : 0);
    }
    free(tot);
}
