/* test_kernels.c: the vectorized softmax, activations and LayerNorm against
 * libm in double, for every tail length (the AVX-512 paths work 16 values
 * at a time, the AVX2 ones 8, and mask the rest), over the whole range exp()
 * meets, on every code path this CPU can run (avx512, avx2, scalar); and
 * attention through each path's own kernel (OpenBLAS for scalar). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
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

static const char *const isas[] = {"avx512", "avx2", "scalar"};

/* Force code path i; 0 when this CPU cannot run it (the test then skips it). */
static int use_isa(int i, kernel_table *kt) {
    char err[200];
    int isa;
    if (cpu_isa_parse(isas[i], &isa) != 0 || kernel_table_init(kt, isa, err, sizeof(err)) != 0) {
        if (i < 2)
            fprintf(stderr, "test_kernels: this CPU has no %s: that path is not tested here\n", isas[i]);
        return 0;
    }
    return 1;
}

START_TEST(test_activations_match_libm) {
    kernel_table kt;
    if (!use_isa(_i, &kt)) return;
    activation acts[] = {ACT_QUICK_GELU, ACT_GELU, ACT_GELU_TANH, ACT_RELU};
    for (size_t a = 0; a < 4; a++)
        for (size_t n = 1; n <= 40; n++) {
            float *x = malloc(sizeof(float) * n);
            for (size_t i = 0; i < n; i++)
                x[i] = (float)(-30.0 + 60.0 * (double)i / (double)n + 0.013 * (double)n);
            float *y = malloc(sizeof(float) * n);
            for (size_t i = 0; i < n; i++) y[i] = x[i];
            kt.activation(y, n, acts[a]);
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

/* GELU's left tail is v/2 erfc(|v|/sqrt2): tiny values that 1 + erf()
 * would lose to cancellation. Every path keeps 5e-5 relative there (float
 * rounding of z^2 alone costs about 1e-5 at v = -12). */
START_TEST(test_gelu_tail_relative) {
    kernel_table kt;
    if (!use_isa(_i, &kt)) return;
    enum { N = 203 };
    float y[N];
    double x[N];
    for (int i = 0; i < N; i++) {
        x[i] = -12.0 + 11.0 * i / (N - 1);
        y[i] = (float)x[i];
    }
    kt.activation(y, N, ACT_GELU);
    for (int i = 0; i < N; i++) {
        double v = (float)x[i], want = 0.5 * v * erfc(-v / sqrt(2.0));
        ck_assert_msg(fabs(y[i] - want) <= 5e-5 * fabs(want), "%s: gelu(%g) = %g, want %g", isas[_i], v, y[i],
                      want);
    }
}
END_TEST

/* LayerNorm against a double reference, every row length 1..40 and the
 * model widths, rows with an offset mean. */
START_TEST(test_layernorm) {
    kernel_table kt;
    if (!use_isa(_i, &kt)) return;
    int widths[44];
    for (int c = 1; c <= 40; c++) widths[c - 1] = c;
    widths[40] = 96;
    widths[41] = 192;
    widths[42] = 768;
    widths[43] = 1023;
    for (int wi = 0; wi < 44; wi++) {
        int C = widths[wi], T = 3;
        float *x = malloc(sizeof(float) * (size_t)T * C), *y = malloc(sizeof(float) * (size_t)T * C);
        float *w = malloc(sizeof(float) * (size_t)C), *b = malloc(sizeof(float) * (size_t)C);
        for (int i = 0; i < T * C; i++) x[i] = (float)(3.0 + 2.0 * sin(1.7 * i + 0.3 * C));
        for (int i = 0; i < C; i++) {
            w[i] = (float)(1.0 + 0.5 * cos(i));
            b[i] = (float)(0.1 * sin(3.0 * i));
        }
        kt.layernorm(y, x, w, b, T, C, 1e-5f);
        for (int t = 0; t < T; t++) {
            double mean = 0, var = 0;
            for (int i = 0; i < C; i++) mean += x[t * C + i];
            mean /= C;
            for (int i = 0; i < C; i++) var += (x[t * C + i] - mean) * (x[t * C + i] - mean);
            var /= C;
            for (int i = 0; i < C; i++) {
                double want = (x[t * C + i] - mean) / sqrt(var + 1e-5) * w[i] + b[i];
                ck_assert_msg(fabs(y[t * C + i] - want) <= 2e-5 * (1 + fabs(want)),
                              "%s C=%d row %d [%d]: %g vs %g", isas[_i], C, t, i, y[t * C + i], want);
            }
        }
        free(x);
        free(y);
        free(w);
        free(b);
    }
}
END_TEST

/* attention_forward on one head with q = k = 0 except a few: the softmax
 * of each row is checked through the output with v = identity columns. */
START_TEST(test_softmax_rows) {
    kernel_table kt;
    if (!use_isa(_i, &kt)) return;
    for (int T = 1; T <= 37; T++) {
        int hd = T; /* v = identity, so out = softmax(q k^T) */
        int D = hd, ld = 3 * D;
        float *qkv = calloc((size_t)T * ld, sizeof(float));
        float *out = calloc((size_t)T * D, sizeof(float));
        size_t ns = attention_scratch_floats(&kt, T, hd);
        float *scores = aligned_alloc(64, sizeof(float) * ns);
        for (int t = 0; t < T; t++)
            for (int c = 0; c < hd; c++) {
                qkv[t * ld + c] = (float)(0.3 * sin(t + 2.0 * c) * (1 + t % 7));     /* q */
                qkv[t * ld + D + c] = (float)(0.5 * cos(3.0 * t - c) * (1 + c % 5)); /* k */
                qkv[t * ld + 2 * D + c] = (float)(t == c);                           /* v */
            }
        attention_forward(&kt, out, D, qkv, scores, T, 1, hd, 0, 1, NULL, 0, 0);
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

/* attention_forward against a double reference on model-like shapes: head
 * widths 20, 24 and 64 (the kernels step 16 or 32 columns and 6 or 8 rows
 * at a time, so these leave tails in both; k is transposed by 8 x 8 blocks,
 * which 20 leaves a tail of), token counts around those steps and
 * ViT-B's 197, two of three heads (h0 = 1), out with a wider row stride;
 * without rotation, and with a pairwise one of every pair or of all but the
 * last two (channels that stay as they are), whose table holds heads 1 and
 * 2 only. qkv must come back unchanged. */
START_TEST(test_attention_shapes) {
    kernel_table kt;
    if (!use_isa(_i, &kt)) return;
    static const int Ts[] = {1, 5, 8, 9, 31, 33, 50, 197};
    static const int hds[] = {20, 24, 64};
    for (size_t ti = 0; ti < sizeof(Ts) / sizeof(Ts[0]); ti++)
        for (size_t hi = 0; hi < sizeof(hds) / sizeof(hds[0]); hi++)
            for (int rotated = 0; rotated < 3; rotated++) {
                int T = Ts[ti], hd = hds[hi], H = 3, D = H * hd, ld = 3 * D, ld_out = D + 5;
                int np = rotated == 0 ? 0 : rotated == 1 ? hd / 2 : hd / 2 - 2;
                float *qkv = malloc(sizeof(float) * (size_t)T * ld);
                float *keep = malloc(sizeof(float) * (size_t)T * ld);
                float *out = malloc(sizeof(float) * (size_t)T * ld_out);
                float *scores = aligned_alloc(64, sizeof(float) * attention_scratch_floats(&kt, T, hd));
                float *cs = malloc(sizeof(float) * (size_t)(H - 1) * T * (np ? np : 1) * 2);
                double *s = malloc(sizeof(double) * (size_t)T);
                double *qr = malloc(sizeof(double) * (size_t)T * hd),
                       *kr = malloc(sizeof(double) * (size_t)T * hd);
                for (int i = 0; i < T * ld; i++) qkv[i] = keep[i] = (float)sin(0.37 * i + 0.1 * T);
                /* angles not linear in the token (a shift common to every token
                 * cancels in q.k: RoPE's point) nor alike across heads */
                for (int i = 0; i < (H - 1) * T * np; i++) {
                    double angle = 2.3 * sin(1.3 * i + 0.3);
                    cs[2 * i] = (float)cos(angle);
                    cs[2 * i + 1] = (float)sin(angle);
                }
                for (int i = 0; i < T * ld_out; i++) out[i] = -7.0f; /* head 0 and the gap stay untouched */
                attention_forward(&kt, out, ld_out, qkv, scores, T, H, hd, 1, H, np ? cs : NULL, np, 0);
                ck_assert_msg(memcmp(qkv, keep, sizeof(float) * (size_t)T * ld) == 0,
                              "%s T=%d hd=%d: qkv was written", isas[_i], T, hd);
                for (int h = 0; h < H; h++) {
                    /* the reference's q and k of head h, rotated in double */
                    for (int t = 0; t < T; t++)
                        for (int c = 0; c < hd; c++) {
                            const float *x = qkv + (size_t)t * ld + h * hd;
                            int pair = c / 2;
                            if (h == 0 || pair >= np) {
                                qr[t * hd + c] = x[c];
                                kr[t * hd + c] = x[D + c];
                                continue;
                            }
                            const float *ct = cs + (((size_t)(h - 1) * T + t) * np + pair) * 2;
                            double co = ct[0], si = ct[1], sign = c % 2 ? 1.0 : -1.0;
                            int o = c % 2 ? c - 1 : c + 1; /* the pair's other channel */
                            qr[t * hd + c] = co * x[c] + sign * si * x[o];
                            kr[t * hd + c] = co * x[D + c] + sign * si * x[D + o];
                        }
                    for (int i = 0; i < T; i++) {
                        double mx = -1e300, sum = 0;
                        for (int j = 0; j < T; j++) {
                            s[j] = 0;
                            for (int c = 0; c < hd; c++) s[j] += qr[i * hd + c] * kr[j * hd + c];
                            if (s[j] > mx) mx = s[j];
                        }
                        for (int j = 0; j < T; j++) sum += exp(s[j] - mx);
                        for (int c = 0; c < hd; c++) {
                            double want = 0;
                            for (int j = 0; j < T; j++)
                                want += exp(s[j] - mx) / sum * qkv[j * ld + 2 * D + h * hd + c];
                            float got = out[i * ld_out + h * hd + c];
                            if (h == 0) want = -7.0;
                            ck_assert_msg(fabs(got - want) < 2e-5,
                                          "%s T=%d hd=%d pairs %d: head %d row %d col %d: %g vs %g", isas[_i],
                                          T, hd, np, h, i, c, got, want);
                        }
                        for (int c = D; c < ld_out; c++)
                            ck_assert_msg(out[i * ld_out + c] == -7.0f,
                                          "%s T=%d hd=%d: row %d written past D", isas[_i], T, hd, i);
                    }
                }
                free(qkv);
                free(keep);
                free(out);
                free(scores);
                free(cs);
                free(s);
                free(qr);
                free(kr);
            }
}
END_TEST

/* float -> bf16 -> float, nearest even (as vcvtne2ps2bf16 rounds finite
 * normal values) */
static double bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* bf16 attention (AVX-512 with AVX512-BF16 only) against a double reference
 * that rounds q, k, v and the probabilities to bf16 as the kernel does: the
 * rest (sums of exact products in fp32, the fp32 softmax) differs from it by
 * about 1e-6, and a probability near a rounding boundary can round the
 * other way (2^-9 of it). Odd and even head widths and token counts (pairs
 * padded with a zero), two of three heads, a wide out stride. It must also
 * differ from the fp32 kernel: the bf16 path was taken. _i: 0 the bf16 head
 * kernel; attention as two GEMMs (kt.attention_gemm) on 1 the vdpbf16ps
 * kernel, 2 and 3 our AMX kernel's blocks emulated: token counts around
 * the GEMM's 64-row blocks and past its K block (577), the scratch filled
 * with NaNs first (padding read unwritten would show). */
START_TEST(test_attention_bf16) {
    kernel_table kt;
    char err[200];
    if (kernel_table_init(&kt, CPU_ISA_AVX512, err, sizeof(err)) != 0) return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16")) return;
    if (_i > 0) {
        kt.attention_gemm = 1;
        if (_i > 1) kt.gemm_bf16 = gemm_amx_emulated(_i == 2 ? GEMM_AMX_1X3 : GEMM_AMX_2X2, 1);
    }
    static const int Ts[] = {1, 2, 7, 8, 9, 33, 64, 65, 197, 577};
    static const int hds[] = {24, 33, 64};
    for (size_t ti = 0; ti < sizeof(Ts) / sizeof(Ts[0]); ti++)
        for (size_t hi = 0; hi < sizeof(hds) / sizeof(hds[0]); hi++) {
            int T = Ts[ti], hd = hds[hi], H = 3, D = H * hd, ld = 3 * D, ld_out = D + 5;
            float *qkv = malloc(sizeof(float) * (size_t)T * ld);
            float *out = malloc(sizeof(float) * (size_t)T * ld_out);
            float *out32 = malloc(sizeof(float) * (size_t)T * ld_out);
            size_t nscores = attention_scratch_floats(&kt, T, hd);
            float *scores = aligned_alloc(64, sizeof(float) * nscores);
            memset(scores, 0xff, sizeof(float) * nscores); /* NaNs */
            double *s = malloc(sizeof(double) * (size_t)T);
            for (int i = 0; i < T * ld; i++) qkv[i] = (float)sin(0.37 * i + 0.1 * T);
            for (int i = 0; i < T * ld_out; i++) out[i] = out32[i] = -7.0f;
            attention_forward(&kt, out, ld_out, qkv, scores, T, H, hd, 1, H, NULL, 0, 1);
            memset(scores, 0xff, sizeof(float) * nscores);
            attention_forward(&kt, out32, ld_out, qkv, scores, T, H, hd, 1, H, NULL, 0, 0);
            int differs = 0;
            for (int h = 1; h < H; h++)
                for (int i = 0; i < T; i++) {
                    double mx = -1e300, sum = 0;
                    for (int j = 0; j < T; j++) {
                        s[j] = 0;
                        for (int c = 0; c < hd; c++)
                            s[j] += bf16_round(qkv[i * ld + h * hd + c]) *
                                    bf16_round(qkv[j * ld + D + h * hd + c]);
                        if (s[j] > mx) mx = s[j];
                    }
                    for (int j = 0; j < T; j++) sum += exp(s[j] - mx);
                    for (int c = 0; c < hd; c++) {
                        double want = 0;
                        for (int j = 0; j < T; j++)
                            want += bf16_round((float)(exp(s[j] - mx) / sum)) *
                                    bf16_round(qkv[j * ld + 2 * D + h * hd + c]);
                        float got = out[i * ld_out + h * hd + c];
                        ck_assert_msg(fabs(got - want) < 2.5e-3, "T=%d hd=%d head %d row %d col %d: %g vs %g",
                                      T, hd, h, i, c, got, want);
                        differs |= got != out32[i * ld_out + h * hd + c];
                    }
                }
            for (int i = 0; i < T; i++) {
                for (int c = 0; c < hd; c++)
                    ck_assert_msg(out[i * ld_out + c] == -7.0f, "T=%d hd=%d: head 0 written", T, hd);
                for (int c = D; c < ld_out; c++)
                    ck_assert_msg(out[i * ld_out + c] == -7.0f, "T=%d hd=%d: row %d written past D", T, hd,
                                  i);
            }
            ck_assert_msg(T == 1 || differs, "T=%d hd=%d: bf16 gave the fp32 result", T, hd);
            free(qkv);
            free(out);
            free(out32);
            free(scores);
            free(s);
        }
}
END_TEST

/* argv[1]: avx512, avx2, scalar (that level's kernels) or bf16 (the bf16
 * attention); none: every part this CPU runs. */
int main(int argc, char **argv) {
    const char *part = argc > 1 ? argv[1] : NULL;
    if (check_part_missing(part)) return check_skip(part);
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("kernels");
    for (int i = 0; i < 3; i++) {
        if (!check_part_selected(part, isas[i])) continue;
        tcase_add_loop_test(tc, test_activations_match_libm, i, i + 1);
        tcase_add_loop_test(tc, test_gelu_tail_relative, i, i + 1);
        tcase_add_loop_test(tc, test_layernorm, i, i + 1);
        tcase_add_loop_test(tc, test_softmax_rows, i, i + 1);
        tcase_add_loop_test(tc, test_attention_shapes, i, i + 1);
    }
    if (check_part_selected(part, "bf16")) tcase_add_loop_test(tc, test_attention_bf16, 0, 4);
    suite_add_tcase(s, tc);
    return check_run(s);
}
