/* fope_ext: one-pass RoPE/FoPE rotation on CPU with OpenMP. The math and the reference are
 * fope.apply_rotary (eq. (1) of fope.py); the API is rotate.h; the kernels are rotate_kernels.h,
 * instantiated here once per dtype. Built by fope_ext/build.py (cffi, -O3 -fopenmp). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rotate.h"

/* bfloat16 is the top half of a float32: widen by a shift, narrow with round-to-nearest-even
 * (NaN stays NaN), as torch does. */
static inline float bf16_to_float(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Below this much work (elements) a parallel region costs more than it saves; torch's
 * at::internal::GRAIN_SIZE. It also spares tiny calls from waiting on a busy core. */
static int threads_for(int64_t work, int n_threads)
{
    int64_t useful = work / 32768;
    return useful < 1 ? 1 : useful < n_threads ? (int)useful : n_threads;
}

/* Rows of the batch that share one read of a table row (see fope_rotate). */
#define BATCH_CHUNK 8

#define SCALAR float
#define ACC float
#define SUFFIX f32
#define SQRT sqrtf
#define LOAD(v) (v)
#define STORE(v) (v)
#include "rotate_kernels.h"

#define SCALAR double
#define ACC double
#define SUFFIX f64
#define SQRT sqrt
#define LOAD(v) (v)
#define STORE(v) (v)
#include "rotate_kernels.h"

#define SCALAR uint16_t
#define ACC float
#define SUFFIX bf16
#define SQRT sqrtf
#define LOAD(v) bf16_to_float(v)
#define STORE(v) float_to_bf16(v)
#include "rotate_kernels.h"
