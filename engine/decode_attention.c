/* Attention of one query per head (a decode step) over a layer's cached keys and values, built with
 * int8_kernels.c by engine/native.py.
 *
 * PyTorch runs this as two batched matmuls; on the CPU in bf16 each goes to oneDNN, which is slow for
 * eight query rows against a cold cache (hundreds of microseconds for what is a 1-2 MB read). Here
 * each (batch row, key/value head) is one task: every key row is widened to fp32 once and dotted with
 * the group's query heads, the softmax is in fp32, and every value row is read once and added to the
 * group's outputs. Positions whose mask is -inf (padding, outside the window) are not read at all.
 * Sums are fp32 throughout (the matmul route rounds the scores and the weights to bf16).
 *
 * The loops are plain C with ``omp simd`` reductions; GCC builds an AVX-512, an AVX2 and a baseline
 * copy of the task and picks one at load (target_clones).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"

static inline void widen(const void *src, int bf16, int64_t n, float *dst) {
    if (bf16) {
        const uint16_t *s = (const uint16_t *)src;
#pragma omp simd
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_float(s[i]);
    } else {
        const float *s = (const float *)src;
        for (int64_t i = 0; i < n; i++) dst[i] = s[i];
    }
}

static inline void narrow(const float *src, int bf16, int64_t n, void *dst) {
    if (bf16)
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = float_to_bf16(src[i]);
    else
        for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = src[i];
}

/* One (batch row, kv head): ``group`` query rows [group, dim] (fp32, scaled) against ``positions`` rows. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void attend_group(
    const float *queries, int64_t group, const char *keys, const char *values, int64_t key_row, int64_t value_row,
    int bf16, const float *mask, int64_t positions, int64_t dim, float *scores, float *row, float *out) {
    const int64_t element = bf16 ? 2 : 4;
    for (int64_t s = 0; s < positions; s++) {
        if (mask[s] == -INFINITY) {
            for (int64_t g = 0; g < group; g++) scores[g * positions + s] = -INFINITY;
            continue;
        }
        widen(keys + s * key_row * element, bf16, dim, row);
        for (int64_t g = 0; g < group; g++) {
            const float *q = queries + g * dim;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int64_t d = 0; d < dim; d++) sum += q[d] * row[d];
            scores[g * positions + s] = sum + mask[s];
        }
    }
    for (int64_t g = 0; g < group; g++) {
        float *sc = scores + g * positions;
        float largest = -INFINITY;
        for (int64_t s = 0; s < positions; s++) largest = fmaxf(largest, sc[s]);
        float total = 0.0f;
        for (int64_t s = 0; s < positions; s++) {
            sc[s] = largest == -INFINITY ? 0.0f : expf(sc[s] - largest);
            total += sc[s];
        }
        const float inverse = 1.0f / total; /* all masked: 0/0, NaN, as the matmul route gives */
        for (int64_t s = 0; s < positions; s++) sc[s] *= inverse;
    }
    for (int64_t i = 0; i < group * dim; i++) out[i] = 0.0f;
    for (int64_t s = 0; s < positions; s++) {
        if (mask[s] == -INFINITY) continue;
        widen(values + s * value_row * element, bf16, dim, row);
        for (int64_t g = 0; g < group; g++) {
            const float w = scores[g * positions + s];
            float *o = out + g * dim;
#pragma omp simd
            for (int64_t d = 0; d < dim; d++) o[d] += w * row[d];
        }
    }
}

/* q [batch, heads, dim] (strides in elements: q_batch, q_head; dim contiguous), keys and values
 * [batch, kv_heads, positions, dim] (strides k_batch, k_head, k_row and v_*; dim contiguous), mask
 * [positions] fp32 additive, shared by every row and head; out [batch, heads, dim] contiguous. All
 * tensors bf16 when ``bf16`` is set, else fp32. Returns 0, or -1 if out of memory. */
int focal_decode_attention(const void *q, const void *keys, const void *values, const float *mask, int bf16,
                           int64_t batch, int64_t heads, int64_t kv_heads, int64_t positions, int64_t dim,
                           int64_t q_batch, int64_t q_head, int64_t k_batch, int64_t k_head, int64_t k_row,
                           int64_t v_batch, int64_t v_head, int64_t v_row, float scale, void *out, int threads) {
    const int64_t group = heads / kv_heads, element = bf16 ? 2 : 4, tasks = batch * kv_heads;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *queries = malloc(sizeof(float) * group * dim);
        float *scores = malloc(sizeof(float) * group * positions);
        float *row = malloc(sizeof(float) * dim);
        float *result = malloc(sizeof(float) * group * dim);
        if (!queries || !scores || !row || !result) failed = 1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            if (failed) continue;
            const int64_t b = t / kv_heads, h = t % kv_heads;
            for (int64_t g = 0; g < group; g++) {
                const int64_t head = h * group + g;
                widen((const char *)q + (b * q_batch + head * q_head) * element, bf16, dim, queries + g * dim);
                for (int64_t d = 0; d < dim; d++) queries[g * dim + d] *= scale;
            }
            attend_group(queries, group, (const char *)keys + (b * k_batch + h * k_head) * element,
                         (const char *)values + (b * v_batch + h * v_head) * element, k_row, v_row, bf16, mask,
                         positions, dim, scores, row, result);
            narrow(result, bf16, group * dim, (char *)out + (b * heads + h * group) * dim * element);
        }
        free(queries);
        free(scores);
        free(row);
        free(result);
    }
    return failed ? -1 : 0;
}
