/* kernels.c: matmul, LayerNorm, activations, attention (see kernels.h). */
#include "kernels.h"

#include <cblas.h>
#include <math.h>

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
