/* Weight-only int8 matmuls for decode (one activation row), built by engine/native.py.
 *
 * Decode reads every weight once per token, so its speed is the rate at which int8 rows stream from
 * memory, and at that rate widening every weight to fp32 costs more than loading it. So the
 * activation row is rounded once to 16-bit integers with one scale (max |x| / 32767: an error of at
 * most 1/65534 of the row's largest value per element, finer than bf16's 1/512 of each element's
 * own size for all but elements 128x smaller than the largest), and each weight row meets it in
 * exact integer multiply-adds (AVX-512 VNNI's vpdpwssd: 32 weights per instruction); the integer
 * sums move to fp32 every 2048 elements, before they could overflow, and are scaled by the two
 * scales at the end. Every vector width computes the same integer sums, so results do not depend on
 * the CPU beyond the fp32 order of those chunk sums.
 *
 * One call does a whole sparse-MoE layer for one token (gate/up of every chosen expert, SiLU(gate)
 * * up, down, the routing-weighted sum), so a layer is one parallel region instead of a few dozen
 * small library calls.
 *
 * Threads come from the OpenMP runtime already loaded by PyTorch (libgomp.so.1), with the count the
 * caller passes (torch.get_num_threads()). The vector width is chosen once, at first call, from what
 * the CPU reports: AVX-512 with VNNI, AVX2, or plain C.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"

#define CHUNK 2048 /* elements per int32 partial sum: 2048 * 127 * 32767 < 2^31 */
#define X_MAX 32767.0f

typedef float (*dot_fn)(const int8_t *q, const int16_t *x, int64_t k);

static float dot_plain(const int8_t *q, const int16_t *x, int64_t k) {
    float s = 0.0f;
    for (int64_t c = 0; c < k; c += CHUNK) {
        const int64_t end = c + CHUNK < k ? c + CHUNK : k;
        int32_t part = 0;
        for (int64_t i = c; i < end; i++) part += (int32_t)q[i] * x[i];
        s += (float)part;
    }
    return s;
}

__attribute__((target("avx2"))) static float dot_avx2(const int8_t *q, const int16_t *x, int64_t k) {
    __m256 total = _mm256_setzero_ps();
    int32_t tail = 0;
    for (int64_t c = 0; c < k; c += CHUNK) {
        const int64_t end = c + CHUNK < k ? c + CHUNK : k;
        __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
        int64_t i = c;
        for (; i + 32 <= end; i += 32) {
            __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + i)));
            __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + i + 16)));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i *)(x + i))));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i *)(x + i + 16))));
        }
        for (; i < end; i++) tail += (int32_t)q[i] * x[i];
        total = _mm256_add_ps(total, _mm256_cvtepi32_ps(_mm256_add_epi32(a0, a1)));
    }
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(total), _mm256_extractf128_ps(total, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h) + (float)tail;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static float dot_avx512(const int8_t *q, const int16_t *x,
                                                                                int64_t k) {
    __m512 total = _mm512_setzero_ps();
    int32_t tail = 0;
    for (int64_t c = 0; c < k; c += CHUNK) {
        const int64_t end = c + CHUNK < k ? c + CHUNK : k;
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        int64_t i = c;
        for (; i + 64 <= end; i += 64) {
            __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q + i)));
            __m512i w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q + i + 32)));
            a0 = _mm512_dpwssd_epi32(a0, w0, _mm512_loadu_si512((const void *)(x + i)));
            a1 = _mm512_dpwssd_epi32(a1, w1, _mm512_loadu_si512((const void *)(x + i + 32)));
        }
        for (; i < end; i++) tail += (int32_t)q[i] * x[i];
        total = _mm512_add_ps(total, _mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)));
    }
    return _mm512_reduce_add_ps(total) + (float)tail;
}

static dot_fn dot = 0;
static int level = -1;

/* 2: AVX-512 with VNNI, 1: AVX2, 0: plain C. ``most`` caps the choice (-1: no cap). */
int focal_int8_level(int most) {
    if (level < 0) {
        __builtin_cpu_init();
        level = 0;
        if (__builtin_cpu_supports("avx2")) level = 1;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vnni"))
            level = 2;
        if (most >= 0 && level > most) level = most;
        dot = level == 2 ? dot_avx512 : level == 1 ? dot_avx2 : dot_plain;
    }
    return level;
}

static inline float scale_at(const void *scale, int scale_bf16, int64_t i) {
    return scale_bf16 ? bf16_to_float(((const uint16_t *)scale)[i]) : ((const float *)scale)[i];
}

/* x -> out as 16-bit integers with one scale (returned): x ~= out * scale. */
static float round_to_int16(const float *x, int64_t k, int16_t *out) {
    float largest = 0.0f;
    int finite = 1;
    for (int64_t i = 0; i < k; i++) {
        largest = fmaxf(largest, fabsf(x[i]));
        finite &= isfinite(x[i]) != 0;
    }
    if (largest == 0.0f || !finite) { /* all zero, or a NaN / infinity that the result must carry */
        for (int64_t i = 0; i < k; i++) out[i] = 0;
        return finite ? 0.0f : NAN;
    }
    const float inverse = X_MAX / largest;
    for (int64_t i = 0; i < k; i++) out[i] = (int16_t)lrintf(x[i] * inverse);
    return largest / X_MAX;
}

/* y[r] = scale[r] * dot(q[r, :], x) for r < n; x [k], q [n, k]; x and y are bf16 when ``bf16`` is set,
 * else fp32 (the scale's type is separate). Returns 0, or -1 if out of memory. */
int focal_int8_gemv(const void *x, int bf16, const int8_t *q, const void *scale, int scale_bf16, void *y, int64_t n,
                    int64_t k, int threads) {
    int16_t *xq = malloc(sizeof(int16_t) * k);
    float *widened = bf16 ? malloc(sizeof(float) * k) : 0;
    if (!xq || (bf16 && !widened)) {
        free(xq);
        free(widened);
        return -1;
    }
    if (bf16)
        for (int64_t i = 0; i < k; i++) widened[i] = bf16_to_float(((const uint16_t *)x)[i]);
    const float x_scale = round_to_int16(bf16 ? widened : (const float *)x, k, xq);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
        const float v = scale_at(scale, scale_bf16, r) * x_scale * dot(q + r * k, xq, k);
        if (bf16)
            ((uint16_t *)y)[r] = float_to_bf16(v);
        else
            ((float *)y)[r] = v;
    }
    free(xq);
    free(widened);
    return 0;
}

/* One token through a sparse-MoE layer: out[h] = sum_j weights[j] * down_e(SiLU(gate_e(x)) * up_e(x))
 * over the chosen experts e = experts[j]. gate_up_q [E, 2I, H] (gate rows first), down_q [E, H, I],
 * scales per output row. Returns 0, or -1 if out of memory. */
int focal_int8_moe(const float *x, int64_t topk, const int64_t *experts, const float *weights,
                   const int8_t *gate_up_q, const void *gate_up_scale, const int8_t *down_q, const void *down_scale,
                   int scale_bf16, int64_t inter, int64_t hidden, float *out, int threads) {
    const int64_t rows = 2 * inter;
    float *gate_up = malloc(sizeof(float) * topk * rows);       /* [topk, 2I] */
    int16_t *xq = malloc(sizeof(int16_t) * hidden);
    int16_t *act = malloc(sizeof(int16_t) * topk * inter);      /* [topk, I], one scale per expert */
    float *act_scale = malloc(sizeof(float) * topk);
    int failed = !gate_up || !xq || !act || !act_scale;
    if (!failed) {
        const float x_scale = round_to_int16(x, hidden, xq);
#pragma omp parallel num_threads(threads)
        {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < topk * rows; t++) {
                const int64_t row = experts[t / rows] * rows + t % rows;
                gate_up[t] = scale_at(gate_up_scale, scale_bf16, row) * x_scale * dot(gate_up_q + row * hidden, xq, hidden);
            }
            /* SiLU(gate) * up in place of the gate half, then each expert's row to int16. */
#pragma omp for schedule(static)
            for (int64_t j = 0; j < topk; j++) {
                float *g = gate_up + j * rows;
                for (int64_t i = 0; i < inter; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * g[inter + i];
                act_scale[j] = round_to_int16(g, inter, act + j * inter);
            }
            /* Each thread owns a range of output rows and walks the experts one after the other, so
             * it streams through one down matrix at a time. */
            const int64_t per = (hidden + omp_get_num_threads() - 1) / omp_get_num_threads();
            const int64_t first = per * omp_get_thread_num();
            const int64_t last = first + per < hidden ? first + per : hidden;
            for (int64_t h = first; h < last; h++) out[h] = 0.0f;
            for (int64_t j = 0; j < topk; j++) {
                const int64_t base = experts[j] * hidden;
                const float factor = weights[j] * act_scale[j];
                for (int64_t h = first; h < last; h++)
                    out[h] += factor * scale_at(down_scale, scale_bf16, base + h) *
                              dot(down_q + (base + h) * inter, act + j * inter, inter);
            }
        }
    }
    free(gate_up);
    free(xq);
    free(act);
    free(act_scale);
    return failed ? -1 : 0;
}
