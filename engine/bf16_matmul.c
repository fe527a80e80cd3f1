/* bf16 matmuls on AVX-512 BF16 for every row count, built with the other kernels by engine/native.py.
 *
 * oneDNN's reordered weights (engine/packed.py) serve prefill well, but a decode step through them
 * streams the weights well below the rate the cores can read them: a one-row matmul is all
 * memory traffic. Here the weight has one layout for both: "tiles" of 64 output rows in which each
 * adjacent pair of inputs is stored together,
 *
 *     tiles[t][p][j][e] = W[64 t + j][2 p + e]      (W [N, K], K even, N padded to 64 with zeros),
 *
 * which is what vdpbf16ps multiplies: one 64-byte load holds a pair of inputs for 16 outputs, and one
 * instruction adds both products to 16 fp32 sums; GROUP such loads cover a tile's 64 outputs. A tile
 * is one contiguous run of memory read front to back, so a decode step is one sequential stream per
 * thread, and a prefill reuses a tile from the L2 cache for every ROWS activation rows. Sums are fp32
 * over the whole row (no intermediate rounding), rounded once to bf16 at the end (round to nearest
 * even) or stored as fp32.
 *
 * Threads split the output columns (whole tiles), with the count the caller passes. One call
 * also does a whole sparse-MoE layer for one decode token (focal_bf16_moe), so a layer is one parallel
 * region instead of a few dozen small calls.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

#define LANES 16 /* output columns per vector of fp32 sums */
#define GROUP 4  /* vectors per tile */
#define TILE_ROWS (GROUP * LANES) /* output rows per tile: 64 */
#define ROWS 6   /* activation rows per register block: ROWS x GROUP sums + GROUP weights + 1 in 32 registers */

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* 1 if this CPU has AVX-512 BF16 (and the AVX-512 parts the kernel uses), else 0. */
int focal_bf16_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

/* ``mr`` activation rows (``x``, ``k`` apart) against ``nr`` tiles over the whole of K, into the first
 * ``columns`` (at most nr * LANES) of ``mr`` output rows ``y`` (``ldy`` apart). mr and nr are constants
 * at every call site (see ``run_block``), so the sums stay in registers. */
BF16_TARGET static inline __attribute__((always_inline)) void block(
    const uint16_t *x, int64_t k, const uint16_t *w, const int mr, const int nr, void *y, int64_t ldy,
    int64_t columns, int out_fp32) {
    const int64_t pairs = k / 2;
    __m512 sums[ROWS][GROUP];
    for (int r = 0; r < mr; r++)
        for (int t = 0; t < nr; t++) sums[r][t] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; p++) {
        __m512i weights[GROUP];
        for (int t = 0; t < nr; t++) weights[t] = _mm512_loadu_si512((const void *)(w + (p * GROUP + t) * 2 * LANES));
        for (int r = 0; r < mr; r++) {
            int32_t pair;
            memcpy(&pair, x + r * k + 2 * p, sizeof pair);
            const __m512i both = _mm512_set1_epi32(pair);
            for (int t = 0; t < nr; t++) sums[r][t] = _mm512_dpbf16_ps(sums[r][t], (__m512bh)both, (__m512bh)weights[t]);
        }
    }
    for (int t = 0; t < nr; t++) {
        const int64_t first = (int64_t)t * LANES;
        const int64_t count = columns - first < LANES ? columns - first : LANES;
        const __mmask16 mask = (__mmask16)((1u << count) - 1u);
        for (int r = 0; r < mr; r++) {
            if (out_fp32)
                _mm512_mask_storeu_ps((float *)y + r * ldy + first, mask, sums[r][t]);
            else
                _mm256_mask_storeu_epi16((uint16_t *)y + r * ldy + first, mask,
                                         (__m256i)_mm512_cvtneps_pbh(sums[r][t]));
        }
    }
}

#define BLOCK_CASE(MR, NR) \
    case (MR) * 8 + (NR): block(x, k, w, MR, NR, y, ldy, columns, out_fp32); break;
#define BLOCK_ROW(MR) BLOCK_CASE(MR, 1) BLOCK_CASE(MR, 2) BLOCK_CASE(MR, 3) BLOCK_CASE(MR, 4)

BF16_TARGET static void run_block(const uint16_t *x, int64_t k, const uint16_t *w, int mr, int nr, void *y,
                                  int64_t ldy, int64_t columns, int out_fp32) {
    switch (mr * 8 + nr) {
        BLOCK_ROW(1) BLOCK_ROW(2) BLOCK_ROW(3) BLOCK_ROW(4) BLOCK_ROW(5) BLOCK_ROW(6)
    }
}

/* Tiles that hold n output rows (the last padded with zeros). */
static inline int64_t tiles_for(int64_t n) { return (n + TILE_ROWS - 1) / TILE_ROWS; }

/* The tile of output columns [first, first + TILE_ROWS) of an [n]-column result: how many of its
 * columns exist (``columns``) and how many vectors cover them (returned). */
static inline int tile_vectors(int64_t n, int64_t first, int64_t *columns) {
    *columns = n - first < TILE_ROWS ? n - first : TILE_ROWS;
    return (int)((*columns + LANES - 1) / LANES);
}

/* y [m, n] = x [m, k] @ W^T with W in tiles (above); x bf16, y bf16 or (``out_fp32``) fp32. k must be
 * even. */
BF16_TARGET void focal_bf16_matmul(const uint16_t *x, int64_t m, int64_t k, const uint16_t *tiles, int64_t n, void *y,
                                   int out_fp32, int threads) {
    const int64_t count = tiles_for(n);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < count; g++) {
        int64_t columns;
        const int nr = tile_vectors(n, g * TILE_ROWS, &columns);
        const uint16_t *w = tiles + g * TILE_ROWS * k;
        for (int64_t r = 0; r < m; r += ROWS) {
            const int mr = m - r < ROWS ? (int)(m - r) : ROWS;
            void *out = out_fp32 ? (void *)((float *)y + r * n + g * TILE_ROWS)
                                 : (void *)((uint16_t *)y + r * n + g * TILE_ROWS);
            run_block(x + r * k, k, w, mr, nr, out, n, columns, out_fp32);
        }
    }
}

/* One token through a sparse-MoE layer, as int8_kernels.c's focal_int8_moe: out[h] = sum_j weights[j] *
 * down_e(SiLU(gate_e(x)) * up_e(x)) over the chosen experts e = experts[j], with gate_up [E] of tiles
 * for [2I, H] (gate rows first) and down [E] of tiles for [H, I], every expert's tiles one after the
 * other. Gate and up stay fp32 sums; SiLU(gate) * up is rounded to bf16 once (the down matmul's
 * input); the weighted sum is fp32, rounded to bf16 at the end. Returns 0, or -1 if out of memory. */
BF16_TARGET int focal_bf16_moe(const uint16_t *x, int64_t topk, const int64_t *experts, const float *weights,
                               const uint16_t *gate_up, const uint16_t *down, int64_t inter, int64_t hidden,
                               uint16_t *out, int threads) {
    const int64_t rows = 2 * inter;
    const int64_t gate_up_tiles = tiles_for(rows);
    const int64_t down_tiles = tiles_for(hidden);
    const int64_t gate_up_size = gate_up_tiles * TILE_ROWS * hidden; /* elements per expert */
    const int64_t down_size = down_tiles * TILE_ROWS * inter;
    float *sums = malloc(sizeof(float) * topk * rows); /* [topk, 2I] */
    uint16_t *act = malloc(sizeof(uint16_t) * topk * inter);
    if (!sums || !act) {
        free(sums);
        free(act);
        return -1;
    }
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t task = 0; task < topk * gate_up_tiles; task++) {
            const int64_t j = task / gate_up_tiles, g = task % gate_up_tiles;
            int64_t columns;
            const int nr = tile_vectors(rows, g * TILE_ROWS, &columns);
            run_block(x, hidden, gate_up + experts[j] * gate_up_size + g * TILE_ROWS * hidden, 1, nr,
                      sums + j * rows + g * TILE_ROWS, rows, columns, 1);
        }
#pragma omp for schedule(static)
        for (int64_t j = 0; j < topk; j++) {
            const float *g = sums + j * rows;
            for (int64_t i = 0; i < inter; i++)
                act[j * inter + i] = float_to_bf16(g[i] / (1.0f + expf(-g[i])) * g[inter + i]);
        }
        /* Each task owns a block of output columns and walks the experts one after the other. */
#pragma omp for schedule(static)
        for (int64_t g = 0; g < down_tiles; g++) {
            int64_t columns;
            const int nr = tile_vectors(hidden, g * TILE_ROWS, &columns);
            float total[TILE_ROWS] = {0}, part[TILE_ROWS];
            for (int64_t j = 0; j < topk; j++) {
                run_block(act + j * inter, inter, down + experts[j] * down_size + g * TILE_ROWS * inter, 1, nr,
                          part, TILE_ROWS, columns, 1);
                for (int64_t c = 0; c < columns; c++) total[c] += weights[j] * part[c];
            }
            for (int64_t c = 0; c < columns; c++) out[g * TILE_ROWS + c] = float_to_bf16(total[c]);
        }
    }
    free(sums);
    free(act);
    return 0;
}
