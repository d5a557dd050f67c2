/* The integer conv over packed bit-planes; kernels.c includes this once per instruction set,
 * with CONV_NAME set and a `#pragma GCC target` in force.
 *
 * For each output position, one int64 accumulator row per (input plane p, weight plane j) pair
 * collects popcount(W_j & X_p) over the window; shifts and the offset term come once at the end,
 * so the hot loop is load, AND, POPCNT, ADD over output channels, nothing else. With thresholds
 * given, the accumulator is turned into a code right away (fused), else it is written as int32. */
static void CONV_NAME(CONV_ARGS) {
    const int planes = P * J;
    #pragma omp parallel num_threads(threads)
    {
        int64_t *rows = malloc(sizeof(int64_t) * planes * O);
        #pragma omp for collapse(2) schedule(static)
        for (Py_ssize_t n = 0; n < N; n++) {
            for (Py_ssize_t oy = 0; oy < HO; oy++) {
                for (Py_ssize_t ox = 0; ox < WO; ox++) {
                    memset(rows, 0, sizeof(int64_t) * planes * O);
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
                                    const uint64_t xv = xp[p * Wd + k];
                                    if (!xv) continue;
                                    window_sum += (int64_t)popcount64(xv) << p;
                                    for (int j = 0; j < J; j++) {
                                        int64_t *restrict r = rows + (p * J + j) * O;
                                        const uint64_t *restrict wv = wt + (j * Wd + k) * O;
                                        for (Py_ssize_t o = 0; o < O; o++) r[o] += popcount64(wv[o] & xv);
                                    }
                                }
                        }
                    }
                    Py_ssize_t m = (n * HO + oy) * WO + ox;
                    for (Py_ssize_t o = 0; o < O; o++) {
                        int64_t a = 0;
                        for (int p = 0; p < P; p++)
                            for (int j = 0; j < J; j++) a += rows[(p * J + j) * O + o] << (p + j);
                        a = wstride * a + lowest * window_sum;
                        if (thr) {
                            int64_t s = a * dir[o];
                            int code = qmin;
                            for (int l = 0; l < L; l++) code += s >= thr[o * L + l];
                            codes[m * O + o] = (uint8_t)code;
                        } else {
                            acc[m * O + o] = (int32_t)a;
                        }
                    }
                }
            }
        }
        free(rows);
    }
}
