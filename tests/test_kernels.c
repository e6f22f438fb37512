/* test_kernels.c: the vectorized softmax and activations against libm in
 * double, for every tail length (the AVX-512 paths work 16 values at a
 * time and mask the rest), and over the whole range exp() meets. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels.h"
#include "check_run.h"

static double ref_act(double x, activation a) {
    switch (a) {
    case ACT_QUICK_GELU: return x / (1 + exp(-1.702 * x));
    case ACT_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case ACT_GELU_TANH: return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    case ACT_RELU: return x > 0 ? x : 0;
    }
    return 0;
}

START_TEST(test_activations_match_libm) {
    activation acts[] = {ACT_QUICK_GELU, ACT_GELU, ACT_GELU_TANH, ACT_RELU};
    for (size_t a = 0; a < 4; a++)
        for (size_t n = 1; n <= 40; n++) {
            float *x = malloc(sizeof(float) * n);
            for (size_t i = 0; i < n; i++) x[i] = (float)(-30.0 + 60.0 * (double)i / (double)n + 0.013 * (double)n);
            float *y = malloc(sizeof(float) * n);
            for (size_t i = 0; i < n; i++) y[i] = x[i];
            activation_forward(y, n, acts[a]);
            for (size_t i = 0; i < n; i++) {
                double want = ref_act(x[i], acts[a]);
                ck_assert_msg(fabs(y[i] - want) <= 2e-6 * (1 + fabs(want)), "%s(%g) = %g, want %g",
                              activation_name(acts[a]), x[i], y[i], want);
            }
            free(x);
            free(y);
        }
}
END_TEST

/* attention_forward on one head with q = k = 0 except a few: the softmax
 * of each row is checked through the output with v = identity columns. */
START_TEST(test_softmax_rows) {
    for (int T = 1; T <= 37; T++) {
        int hd = T; /* v = identity, so out = softmax(q k^T) */
        int D = hd, ld = 3 * D;
        float *qkv = calloc((size_t)T * ld, sizeof(float));
        float *out = calloc((size_t)T * D, sizeof(float));
        float *scores = calloc((size_t)T * T, sizeof(float));
        for (int t = 0; t < T; t++)
            for (int c = 0; c < hd; c++) {
                qkv[t * ld + c] = (float)(0.3 * sin(t + 2.0 * c) * (1 + t % 7));      /* q */
                qkv[t * ld + D + c] = (float)(0.5 * cos(3.0 * t - c) * (1 + c % 5));  /* k */
                qkv[t * ld + 2 * D + c] = (float)(t == c);                            /* v */
            }
        attention_forward(out, D, qkv, scores, T, 1, hd, 0, 1);
        for (int i = 0; i < T; i++) {
            double s[64], mx = -1e300, sum = 0;
            for (int j = 0; j < T; j++) {
                s[j] = 0;
                for (int c = 0; c < hd; c++) s[j] += (double)qkv[i * ld + c] * qkv[j * ld + D + c];
                if (s[j] > mx) mx = s[j];
            }
            for (int j = 0; j < T; j++) sum += exp(s[j] - mx);
            for (int j = 0; j < T; j++) {
                double want = exp(s[j] - mx) / sum;
                ck_assert_msg(fabs(out[i * D + j] - want) < 1e-6, "T=%d row %d col %d: %g vs %g", T, i, j,
                              out[i * D + j], want);
            }
        }
        free(qkv);
        free(out);
        free(scores);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("kernels");
    tcase_add_test(tc, test_activations_match_libm);
    tcase_add_test(tc, test_softmax_rows);
    suite_add_tcase(s, tc);
    return check_run(s);
}
