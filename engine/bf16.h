/* bf16 <-> fp32 for the engine's C kernels (int8_kernels.c, decode_attention.c). */
#ifndef FOCAL_BF16_H
#define FOCAL_BF16_H

#include <math.h>
#include <stdint.h>

static inline float bf16_to_float(uint16_t v) {
    union { uint32_t u; float f; } c;
    c.u = (uint32_t)v << 16;
    return c.f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as PyTorch does; NaN stays NaN */
    union { uint32_t u; float f; } c;
    c.f = f;
    if (isnan(f)) return 0x7fc0;
    return (uint16_t)((c.u + 0x7fff + ((c.u >> 16) & 1)) >> 16);
}

#endif
