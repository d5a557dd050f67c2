/* The integer conv over packed bit-planes; kernels.c includes this once per instruction set,
 * with CONV_NAME set and a `#pragma GCC target` in force. */
static void CONV_NAME(CONV_ARGS) {
    #pragma omp parallel for num_threads(threads) collapse(2) schedule(static)
    for (Py_ssize_t n = 0; n < N; n++) {
        for (Py_ssize_t oy = 0; oy < HO; oy++) {
            for (Py_ssize_t ox = 0; ox < WO; ox++) {
                int32_t *acc = out + ((n * HO + oy) * WO + ox) * O;
                memset(acc, 0, sizeof(int32_t) * O);
                int64_t window_sum = 0;
                for (int ky = 0; ky < KH; ky++) {
                    Py_ssize_t iy = oy * stride - pad + ky;
                    if (iy < 0 || iy >= H) continue;
                    for (int kx = 0; kx < KW; kx++) {
                        Py_ssize_t ix = ox * stride - pad + kx;
                        if (ix < 0 || ix >= W) continue;
                        const uint64_t *xp = x + ((n * H + iy) * W + ix) * P * Wd;
                        const uint64_t *wt = w + (size_t)(ky * KW + kx) * J * Wd * O;
                        for (int p = 0; p < P; p++)
                            for (Py_ssize_t k = 0; k < Wd; k++) {
                                uint64_t xv = xp[p * Wd + k];
                                if (!xv) continue;
                                window_sum += (int64_t)popcount64(xv) << p;
                                for (int j = 0; j < J; j++)
                                    and_popcount_accumulate(acc, wt + (j * Wd + k) * O, xv, j + p, O);
                            }
                    }
                }
                for (Py_ssize_t o = 0; o < O; o++) acc[o] = wstride * acc[o] + lowest * (int32_t)window_sum;
            }
        }
    }
}
