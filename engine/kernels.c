/* kernels.c: matmul, LayerNorm, activations, RoPE's rotation (see
 * kernels.h; attention and its softmax: attention.c).
 *
 * The softmax and the activations spend their time in exp() and erf(), and
 * LayerNorm in its two reductions; all three have AVX-512 and AVX2 paths
 * (a context's kernel table picks one level: dispatch.h) besides plain C:
 *   exp: Cephes' expf polynomial (relative error about 1e-7, like libm's);
 *   erf (GELU): erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), the
 *        Chebyshev fit of Numerical Recipes (relative error of erfc below
 *        1.2e-7 for every z >= 0), so GELU's left tail keeps its precision;
 *   LayerNorm: mean and variance accumulated in double, two passes, as the
 *        plain C does (only the order of the additions differs).
 * Each value is computed the same way wherever it sits (tails are masked,
 * reductions depend only on the row length), so batches stay invariant. */
#include "kernels.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dispatch.h"
#include "simd.h"

/* Numerical Recipes' erfc(z) = t exp(-z^2 + P(t)), coefficients from the
 * highest power down (used by every path). */
static const float erfc_coef[10] = {0.17087277f,  -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                    -0.18628806f, 0.09678418f,  0.37409196f, 1.00002368f,  -1.26551223f};

/* ---- AVX-512: 16 floats at a time ---- */

/* GELU(v) = v/2 (1 + erf(v/sqrt2)) = v/2 erfc(-v/sqrt2) */
__attribute__((target("avx512f"))) static inline __m512 gelu512(__m512 v) {
    __m512 z = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(0.70710678118654752f));
    __m512 t =
        _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(z, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f)));
    __m512 p = _mm512_set1_ps(erfc_coef[0]);
    for (int i = 1; i < 10; i++) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(erfc_coef[i]));
    __m512 erfc = _mm512_mul_ps(t, exp512(_mm512_fnmadd_ps(z, z, p))); /* erfc(|v|/sqrt2) */
    __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ);
    __m512 c = _mm512_mask_sub_ps(erfc, pos, _mm512_set1_ps(2.0f), erfc);
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), c);
}

__attribute__((target("avx512f"))) static void activation_avx512(float *x, size_t n, activation act) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i), y;
        if (act == ACT_QUICK_GELU) {
            __m512 e = exp512(_mm512_mul_ps(v, _mm512_set1_ps(-1.702f)));
            y = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
        } else if (act == ACT_GELU) {
            y = gelu512(v);
        } else if (act == ACT_GELU_TANH) { /* 0.5 v (1 + tanh(u)), tanh(u) = 1 - 2 / (exp(2u) + 1) */
            __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
            __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.79788456080286536f),
                                     _mm512_fmadd_ps(v3, _mm512_set1_ps(0.044715f), v));
            __m512 e = exp512(_mm512_add_ps(u, u));
            __m512 t =
                _mm512_sub_ps(_mm512_set1_ps(1.0f),
                              _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
            y = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.0f), t));
        } else {
            y = _mm512_max_ps(v, _mm512_setzero_ps());
        }
        _mm512_mask_storeu_ps(x + i, m, y);
    }
}

__attribute__((target("avx512f"))) static void layernorm_avx512(float *out, const float *inp,
                                                                const float *weight, const float *bias, int T,
                                                                int C, float eps) {
    for (int t = 0; t < T; t++) {
        const float *x = inp + (size_t)t * C;
        float *o = out + (size_t)t * C;
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
        for (int i = 0; i < C; i += 16) {
            __m512 v = _mm512_maskz_loadu_ps(tail_mask((size_t)(C - i)), x + i);
            s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
            s1 = _mm512_add_pd(
                s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
        }
        double mean = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) / C;
        __m512d mv = _mm512_set1_pd(mean);
        s0 = s1 = _mm512_setzero_pd();
        for (int i = 0; i < C; i += 16) {
            __mmask16 m = tail_mask((size_t)(C - i));
            __m512 v = _mm512_maskz_loadu_ps(m, x + i);
            __m512d d0 = _mm512_maskz_sub_pd((__mmask8)m, _mm512_cvtps_pd(_mm512_castps512_ps256(v)), mv);
            __m512d d1 = _mm512_maskz_sub_pd(
                (__mmask8)(m >> 8),
                _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))), mv);
            s0 = _mm512_fmadd_pd(d0, d0, s0);
            s1 = _mm512_fmadd_pd(d1, d1, s1);
        }
        double var = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) / C;
        __m512 rstd = _mm512_set1_ps((float)(1.0 / sqrt(var + eps)));
        __m512 mf = _mm512_set1_ps((float)mean);
        for (int i = 0; i < C; i += 16) {
            __mmask16 m = tail_mask((size_t)(C - i));
            __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mf), rstd),
                                     _mm512_maskz_loadu_ps(m, weight + i));
            _mm512_mask_storeu_ps(o + i, m, _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, bias + i)));
        }
    }
}

/* ---- AVX2: 8 floats at a time (simd.h) ---- */

__attribute__((target("avx2,fma"))) static inline __m256 gelu256(__m256 v) {
    __m256 z =
        _mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v), _mm256_set1_ps(0.70710678118654752f));
    __m256 t =
        _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(z, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(erfc_coef[0]);
    for (int i = 1; i < 10; i++) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(erfc_coef[i]));
    __m256 erfc = _mm256_mul_ps(t, exp256(_mm256_fnmadd_ps(z, z, p)));
    __m256 pos = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ);
    __m256 c = _mm256_blendv_ps(erfc, _mm256_sub_ps(_mm256_set1_ps(2.0f), erfc), pos);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), c);
}

__attribute__((target("avx2,fma"))) static void activation_avx2(float *x, size_t n, activation act) {
    for (size_t i = 0; i < n; i += 8) {
        __m256 v = load8(x + i, n - i), y;
        if (act == ACT_QUICK_GELU) {
            __m256 e = exp256(_mm256_mul_ps(v, _mm256_set1_ps(-1.702f)));
            y = _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        } else if (act == ACT_GELU) {
            y = gelu256(v);
        } else if (act == ACT_GELU_TANH) {
            __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
            __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.79788456080286536f),
                                     _mm256_fmadd_ps(v3, _mm256_set1_ps(0.044715f), v));
            __m256 e = exp256(_mm256_add_ps(u, u));
            __m256 t =
                _mm256_sub_ps(_mm256_set1_ps(1.0f),
                              _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
            y = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(_mm256_set1_ps(1.0f), t));
        } else {
            y = _mm256_max_ps(v, _mm256_setzero_ps());
        }
        store8(x + i, n - i, y);
    }
}

/* RoPE's rotation of n / 2 pairs: (x[2i], x[2i+1]) by (cs[2i], cs[2i+1]) =
 * (cos, sin) into dst (dst may be x). The vector paths do four or eight
 * pairs at once: (x0 co - x1 si, x1 co + x0 si) is one fmaddsub of x by the
 * cosines and of x with its pairs swapped by the sines; what the vectors
 * leave over (n not a multiple of 8 or 16) goes through the plain C, so each
 * channel is always computed the same way. */
static void rotate_pairs_scalar(float *dst, const float *x, const float *cs, int n) {
    for (int i = 0; i < n; i += 2) {
        float x0 = x[i], x1 = x[i + 1], co = cs[i], si = cs[i + 1];
        dst[i] = co * x0 - si * x1;
        dst[i + 1] = si * x0 + co * x1;
    }
}

__attribute__((target("avx2,fma"))) static void rotate_pairs_avx2(float *dst, const float *x, const float *cs,
                                                                  int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), c = _mm256_loadu_ps(cs + i);
        __m256 s = _mm256_mul_ps(_mm256_permute_ps(v, 0xB1), _mm256_movehdup_ps(c));
        _mm256_storeu_ps(dst + i, _mm256_fmaddsub_ps(v, _mm256_moveldup_ps(c), s));
    }
    rotate_pairs_scalar(dst + i, x + i, cs + i, n - i);
}

__attribute__((target("avx512f"))) static void rotate_pairs_avx512(float *dst, const float *x,
                                                                   const float *cs, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i), c = _mm512_loadu_ps(cs + i);
        __m512 s = _mm512_mul_ps(_mm512_permute_ps(v, 0xB1), _mm512_movehdup_ps(c));
        _mm512_storeu_ps(dst + i, _mm512_fmaddsub_ps(v, _mm512_moveldup_ps(c), s));
    }
    rotate_pairs_avx2(dst + i, x + i, cs + i, n - i);
}

__attribute__((target("avx2,fma"))) static void layernorm_avx2(float *out, const float *inp,
                                                               const float *weight, const float *bias, int T,
                                                               int C, float eps) {
    for (int t = 0; t < T; t++) {
        const float *x = inp + (size_t)t * C;
        float *o = out + (size_t)t * C;
        __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
        for (int i = 0; i < C; i += 8) {
            __m256 v = load8(x + i, (size_t)(C - i));
            s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
            s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
        }
        double mean = hsum256d(_mm256_add_pd(s0, s1)) / C;
        __m256d mv = _mm256_set1_pd(mean);
        s0 = s1 = _mm256_setzero_pd();
        for (int i = 0; i < C; i += 8) {
            __m256i m = mask8((size_t)(C - i));
            __m256 v = load8(x + i, (size_t)(C - i));
            /* masked lanes must add 0, not (0 - mean)^2 */
            __m256d k0 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(m)));
            __m256d k1 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(m, 1)));
            __m256d d0 = _mm256_and_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), mv), k0);
            __m256d d1 = _mm256_and_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), mv), k1);
            s0 = _mm256_fmadd_pd(d0, d0, s0);
            s1 = _mm256_fmadd_pd(d1, d1, s1);
        }
        double var = hsum256d(_mm256_add_pd(s0, s1)) / C;
        __m256 rstd = _mm256_set1_ps((float)(1.0 / sqrt(var + eps)));
        __m256 mf = _mm256_set1_ps((float)mean);
        for (int i = 0; i < C; i += 8) {
            size_t left = (size_t)(C - i);
            __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(load8(x + i, left), mf), rstd),
                                     load8(weight + i, left));
            store8(o + i, left, _mm256_add_ps(y, load8(bias + i, left)));
        }
    }
}

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int T, int C,
                    int OC) {
    // out is (T,OC), inp is (T,C), weight is (OC,C)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC);
    if (bias)
        for (int t = 0; t < T; t++) {
            float *o = out + (size_t)t * OC;
            for (int i = 0; i < OC; i++) o[i] += bias[i];
        }
}

static void layernorm_scalar(float *out, const float *inp, const float *weight, const float *bias, int T,
                             int C, float eps) {
    for (int t = 0; t < T; t++) {
        const float *x = inp + (size_t)t * C;
        float *o = out + (size_t)t * C;
        /* mean and variance in double: two passes, no cancellation */
        double mean = 0, var = 0;
        for (int i = 0; i < C; i++) mean += x[i];
        mean /= C;
        for (int i = 0; i < C; i++) {
            double d = x[i] - mean;
            var += d * d;
        }
        var /= C;
        float rstd = (float)(1.0 / sqrt(var + eps));
        float m = (float)mean;
        for (int i = 0; i < C; i++) o[i] = (x[i] - m) * rstd * weight[i] + bias[i];
    }
}

static void activation_scalar(float *x, size_t n, activation act) {
    switch (act) {
    case ACT_QUICK_GELU:
        for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
        break;
    case ACT_GELU:
        /* v/2 (1 + erf(v/sqrt2)) = v/2 erfc(-v/sqrt2): exact in the left tail */
        for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * erfcf(-x[i] * 0.70710678118654752f);
        break;
    case ACT_GELU_TANH:
        for (size_t i = 0; i < n; i++) {
            float v = x[i];
            x[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
        }
        break;
    case ACT_RELU:
        for (size_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0;
        break;
    }
}

void kernels_fill_table(kernel_table *kt, cpu_isa isa) {
    switch (isa) {
    case CPU_ISA_AVX512:
        kt->layernorm = layernorm_avx512;
        kt->activation = activation_avx512;
        kt->rotate_pairs = rotate_pairs_avx512;
        break;
    case CPU_ISA_AVX2:
        kt->layernorm = layernorm_avx2;
        kt->activation = activation_avx2;
        kt->rotate_pairs = rotate_pairs_avx2;
        break;
    case CPU_ISA_SCALAR:
        kt->layernorm = layernorm_scalar;
        kt->activation = activation_scalar;
        kt->rotate_pairs = rotate_pairs_scalar;
        break;
    }
}
