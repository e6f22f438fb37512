/* kernels.c: matmul, LayerNorm, activations, attention (see kernels.h).
 *
 * The softmax and the activations spend their time in exp(): with AVX-512
 * they use exp512 below (Cephes' expf polynomial, relative error about
 * 1e-7, like libm's), 16 values at a time; elsewhere libm. Each value is
 * computed the same way wherever it sits, so batches stay invariant. */
#include "kernels.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>

static int use_avx512(void) { return __builtin_cpu_supports("avx512f"); }

/* exp(x) for 16 floats: x = n*ln2 + r, |r| <= ln2/2, exp(r) by a degree-7
 * polynomial, then scaled by 2^n (scalef handles overflow to inf and
 * underflow to 0). */
__attribute__((target("avx512f"))) static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(x, _mm512_set1_ps(88.72283905206835f));
    x = _mm512_max_ps(x, _mm512_set1_ps(-103.97207708f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static __mmask16 tail_mask(size_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

__attribute__((target("avx512f"))) static void quick_gelu_avx512(float *x, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 e = exp512(_mm512_mul_ps(v, _mm512_set1_ps(-1.702f)));
        __m512 y = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
        _mm512_mask_storeu_ps(x + i, m, y);
    }
}

/* 0.5 v (1 + tanh(u)) with tanh(u) = 1 - 2 / (exp(2u) + 1) */
__attribute__((target("avx512f"))) static void gelu_tanh_avx512(float *x, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
        __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.79788456080286536f),
                                 _mm512_fmadd_ps(v3, _mm512_set1_ps(0.044715f), v));
        __m512 e = exp512(_mm512_add_ps(u, u));
        __m512 t = _mm512_sub_ps(_mm512_set1_ps(1.0f),
                                 _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
        __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.0f), t));
        _mm512_mask_storeu_ps(x + i, m, y);
    }
}

__attribute__((target("avx512f"))) static void softmax_rows_avx512(float *s, int T) {
    for (int i = 0; i < T; i++) {
        float *row = s + (size_t)i * T;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j < T; j += 16)
            mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY),
                                                        tail_mask((size_t)(T - j)), row + j));
        __m512 maxv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        __m512 sum = _mm512_setzero_ps();
        for (int j = 0; j < T; j += 16) {
            __mmask16 m = tail_mask((size_t)(T - j));
            __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), maxv));
            e = _mm512_maskz_mov_ps(m, e);
            sum = _mm512_add_ps(sum, e);
            _mm512_mask_storeu_ps(row + j, m, e);
        }
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
        for (int j = 0; j < T; j += 16) {
            __mmask16 m = tail_mask((size_t)(T - j));
            _mm512_mask_storeu_ps(row + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), inv));
        }
    }
}

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                    int T, int C, int OC) {
    // out is (T,OC), inp is (T,C), weight is (OC,C)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, OC, C, 1.0f, inp, C, weight, C,
                0.0f, out, OC);
    if (bias)
        for (int t = 0; t < T; t++) {
            float *o = out + (size_t)t * OC;
            for (int i = 0; i < OC; i++) o[i] += bias[i];
        }
}

void layernorm_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int T, int C, float eps) {
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

void activation_forward(float *x, size_t n, activation act) {
    if (use_avx512() && act == ACT_QUICK_GELU) {
        quick_gelu_avx512(x, n);
        return;
    }
    if (use_avx512() && act == ACT_GELU_TANH) {
        gelu_tanh_avx512(x, n);
        return;
    }
    switch (act) {
    case ACT_QUICK_GELU:
        for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
        break;
    case ACT_GELU:
        for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
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

/* Row-wise softmax of a (T, T) matrix, in place. */
static void softmax_rows(float *s, int T) {
    if (use_avx512()) {
        softmax_rows_avx512(s, T);
        return;
    }
    for (int i = 0; i < T; i++) {
        float *row = s + (size_t)i * T;
        float maxv = row[0];
        for (int j = 1; j < T; j++) if (row[j] > maxv) maxv = row[j];
        float sum = 0;
        for (int j = 0; j < T; j++) {
            row[j] = expf(row[j] - maxv);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < T; j++) row[j] *= inv;
    }
}

void attention_forward(float *out, int ld_out, const float *qkv, float *scores, int T,
                       int heads, int head_dim, int h0, int h1) {
    int D = heads * head_dim, ld = 3 * D;
    for (int h = h0; h < h1; h++) {
        const float *q = qkv + h * head_dim;
        const float *k = qkv + D + h * head_dim;
        const float *v = qkv + 2 * D + h * head_dim;
        // scores (T,T) = q (T,hd) @ k^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, head_dim, 1.0f, q, ld, k, ld,
                    0.0f, scores, T);
        softmax_rows(scores, T);
        // out (T,hd) = scores (T,T) @ v (T,hd)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, head_dim, T, 1.0f, scores, T,
                    v, ld, 0.0f, out + h * head_dim, ld_out);
    }
}
