/* The AVX2 lanes conv's tap loop on its own, against what the core's ports allow (docs/runtime.md, "AVX2").
 *
 *     cc -O3 -mavx2 experiments/avx2_loop.c -o /tmp/avx2_loop && /tmp/avx2_loop > results/bench/avx2-loop.json
 *
 * Measures, on one core (pause trainings first): the clock (a chain of dependent byte adds, one per
 * cycle), how many 256-bit shuffles and byte adds the core issues per cycle (independent ones, in asm
 * so the compiler cannot fold them), and one plane pass of the lanes conv (9 taps x 8 output channels
 * x 256 bit-products: per tap a load and regroup of the plane words, then per channel 2 table loads, 2
 * shuffles, 2 adds, as rows_lanes_avx2 in src/pixelq/runtime/csrc/conv_avx2.h), compiled as written and
 * with an empty asm after each tap that keeps GCC from reassociating the 9 taps' adds into one tree.
 * Prints JSON. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define N 100000000L
#define EIGHT(op) op " %%ymm15, %%ymm0, %%ymm0\n" op " %%ymm15, %%ymm1, %%ymm1\n" op " %%ymm15, %%ymm2, %%ymm2\n" \
    op " %%ymm15, %%ymm3, %%ymm3\n" op " %%ymm15, %%ymm4, %%ymm4\n" op " %%ymm15, %%ymm5, %%ymm5\n"                 \
    op " %%ymm15, %%ymm6, %%ymm6\n" op " %%ymm15, %%ymm7, %%ymm7\n"
#define CLOBBER "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7"

/* One plane pass; KEEP: the empty asm after each tap. */
#define PASS(NAME, KEEP)                                                                                         \
    __attribute__((noinline)) static void NAME(const uint8_t *src, long row_bytes, const __m256i *tab, __m256i *out) { \
        const __m256i low4 = _mm256_set1_epi8(0x0F);                                                             \
        const __m256i even_odd = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,          \
                                                  0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);         \
        __m256i acc[8];                                                                                          \
        for (int o = 0; o < 8; o++) acc[o] = _mm256_setzero_si256();                                             \
        _Pragma("GCC unroll 9") for (int t = 0; t < 9; t++, tab += 16) {                                         \
            __m256i x = _mm256_loadu_si256((const __m256i *)(src + (t / 3) * row_bytes + (t % 3) * 2));          \
            __m256i g = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(x, even_odd), 0xD8);                        \
            __m256i lo = _mm256_and_si256(g, low4), hi = _mm256_and_si256(_mm256_srli_epi16(g, 4), low4);        \
            _Pragma("GCC unroll 8") for (int o = 0; o < 8; o++)                                                  \
                acc[o] = _mm256_add_epi8(acc[o], _mm256_add_epi8(_mm256_shuffle_epi8(_mm256_load_si256(tab + 2 * o), lo), \
                                                                 _mm256_shuffle_epi8(_mm256_load_si256(tab + 2 * o + 1), hi))); \
            if (KEEP) {                                                                                          \
                _Pragma("GCC unroll 8") for (int o = 0; o < 8; o++) __asm__("" : "+x"(acc[o]));                  \
            }                                                                                                    \
        }                                                                                                        \
        for (int o = 0; o < 8; o++) out[o] = acc[o];                                                             \
    }
PASS(pass_as_written, 0)
PASS(pass_kept_per_tap, 1)

static double pass_ns(void (*pass)(const uint8_t *, long, const __m256i *, __m256i *), const uint8_t *src,
                      const __m256i *tab) {
    __m256i out[8], sink = _mm256_setzero_si256();
    const long n = 20000000;
    double best = 1e9;
    for (int round = 0; round < 3; round++) {
        double t = now();
        for (long i = 0; i < n; i++) {
            pass(src + (i & 7) * 2, 68, tab, out);
            sink = _mm256_add_epi8(sink, out[i & 7]);
        }
        t = (now() - t) / n * 1e9;
        if (t < best) best = t;
    }
    __asm__ volatile("" : : "x"(sink));
    return best;
}

int main(void) {
    double t = now();
    for (long i = 0; i < N; i++) __asm__ volatile("vpaddb %%ymm15, %%ymm0, %%ymm0\n vpaddb %%ymm15, %%ymm0, %%ymm0\n"
                                                  "vpaddb %%ymm15, %%ymm0, %%ymm0\n vpaddb %%ymm15, %%ymm0, %%ymm0\n" ::: "xmm0");
    const double ghz = 4.0 * N / (now() - t) / 1e9;
    t = now();
    for (long i = 0; i < N; i++) __asm__ volatile(EIGHT("vpshufb") ::: CLOBBER);
    const double shuffles = 8.0 * N / (now() - t) / 1e9 / ghz;
    t = now();
    for (long i = 0; i < N; i++) __asm__ volatile(EIGHT("vpaddb") ::: CLOBBER);
    const double adds = 8.0 * N / (now() - t) / 1e9 / ghz;
    uint8_t *src = aligned_alloc(64, 4096);
    __m256i *tab = aligned_alloc(64, 9 * 16 * sizeof(__m256i));
    for (int i = 0; i < 4096; i++) src[i] = (uint8_t)rand();
    for (int i = 0; i < 9 * 16 * 32; i++) ((uint8_t *)tab)[i] = (uint8_t)(rand() & 7);
    const double written = pass_ns(pass_as_written, src, tab), kept = pass_ns(pass_kept_per_tap, src, tab);
    const double bits = 9.0 * 8 * 256;  /* bit-products of one pass */
    /* per 256 bit-products 2 shuffles and 2 adds (the regroup's few per tap left out): the shuffles need
     * 2 / shuffles cycles, and all 4 at least 4 / adds (the shuffles issue on ports the adds use too) */
    const double bound = 256.0 / (2.0 / shuffles > 4.0 / adds ? 2.0 / shuffles : 4.0 / adds);
    printf("{\"clock_ghz\": %.3f, \"vpshufb_ymm_per_cycle\": %.3f, \"vpaddb_ymm_per_cycle\": %.3f, "
           "\"bound_bit_products_per_cycle\": %.1f, \"pass_ns\": {\"as_written\": %.2f, \"kept_per_tap\": %.2f}, "
           "\"pass_bit_products_per_cycle\": {\"as_written\": %.1f, \"kept_per_tap\": %.1f}}\n",
           ghz, shuffles, adds, bound, written, kept, bits / (written * ghz), bits / (kept * ghz));
    return 0;
}
