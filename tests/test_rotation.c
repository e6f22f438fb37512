/* test_rotation.c: expm, the Schur fold, positions, rotation tables, APE.
 *
 * expm is checked against a Taylor series in long double (another
 * algorithm); the Schur form against expm itself; positions, rotations and
 * the sampled APE against the float64 values the PyTorch reference wrote
 * (torch.matrix_exp, grid_sample) in tests/fixtures/parity. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"
#include "rotation.h"
#include "safetensors.h"
#include "vit.h"
#include "check_run.h"

#define PARITY_DIR FIXTURE_DIR "/parity"

/* deterministic pseudo-random numbers in [-1, 1) */
static double rnd(unsigned *state) {
    *state = *state * 1103515245u + 12345u;
    return ((*state >> 8) & 0xffff) / 32768.0 - 1.0;
}

/* exp(A) by a Taylor series in long double with scaling and squaring. */
static void expm_taylor(const double *A, int n, double *out) {
    long double X[64], S[64], P[64], T[64];
    double norm = 0;
    for (int i = 0; i < n * n; i++) norm += fabs(A[i]);
    int s = 0;
    while (norm > 0.1) {
        norm /= 2;
        s++;
    }
    for (int i = 0; i < n * n; i++) X[i] = ldexpl((long double)A[i], -s);
    for (int i = 0; i < n * n; i++) S[i] = P[i] = (i / n == i % n);
    for (int k = 1; k < 30; k++) {
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                long double acc = 0;
                for (int l = 0; l < n; l++) acc += P[i * n + l] * X[l * n + j];
                T[i * n + j] = acc / k;
            }
        for (int i = 0; i < n * n; i++) {
            P[i] = T[i];
            S[i] += P[i];
        }
    }
    for (int r = 0; r < s; r++) {
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                long double acc = 0;
                for (int l = 0; l < n; l++) acc += S[i * n + l] * S[l * n + j];
                T[i * n + j] = acc;
            }
        for (int i = 0; i < n * n; i++) S[i] = T[i];
    }
    for (int i = 0; i < n * n; i++) out[i] = (double)S[i];
}

START_TEST(test_expm_matches_taylor) {
    unsigned st = 42;
    double A[64], E[64], R[64];
    for (int n = 1; n <= 8; n++)
        for (double scale = 0.01; scale < 40; scale *= 7) {
            for (int i = 0; i < n * n; i++) A[i] = scale * rnd(&st);
            expm_double(A, n, E);
            expm_taylor(A, n, R);
            for (int i = 0; i < n * n; i++)
                ck_assert_msg(fabs(E[i] - R[i]) <= 1e-11 * (1 + fabs(R[i])), "n=%d scale=%g: %g vs %g", n,
                              scale, E[i], R[i]);
        }
}
END_TEST

/* S = Q blockdiag(w) Q^T, Q orthogonal, and Q rot(w s) Q^T = expm(s S). */
static void check_schur(const double *S, int b) {
    double Q[64 * 64], w[32], E[64 * 64], A[64 * 64];
    ck_assert_int_eq(skew_schur(S, b, Q, w), 0);
    for (int i = 0; i < b; i++)
        for (int j = 0; j < b; j++) {
            double d = 0;
            for (int k = 0; k < b; k++) d += Q[k * b + i] * Q[k * b + j];
            ck_assert_msg(fabs(d - (i == j)) < 1e-12, "Q not orthogonal (b=%d)", b);
        }
    for (double s = -2.5; s <= 2.5; s += 1.25) {
        /* M = blockdiag(rotation by w_i s, 1 for the last column when b is odd) */
        double M[64 * 64] = {0}, QM[64 * 64];
        for (int i = 0; i < b / 2; i++) {
            double c = cos(w[i] * s), sn = sin(w[i] * s);
            M[(2 * i) * b + 2 * i] = c;
            M[(2 * i) * b + 2 * i + 1] = -sn;
            M[(2 * i + 1) * b + 2 * i] = sn;
            M[(2 * i + 1) * b + 2 * i + 1] = c;
        }
        if (b % 2) M[(b - 1) * b + b - 1] = 1;
        for (int i = 0; i < b; i++)
            for (int j = 0; j < b; j++) {
                double acc = 0;
                for (int k = 0; k < b; k++) acc += Q[i * b + k] * M[k * b + j];
                QM[i * b + j] = acc;
            }
        for (int i = 0; i < b * b; i++) A[i] = s * S[i];
        expm_double(A, b, E);
        for (int i = 0; i < b; i++)
            for (int j = 0; j < b; j++) {
                double acc = 0;
                for (int k = 0; k < b; k++) acc += QM[i * b + k] * Q[j * b + k];
                ck_assert_msg(fabs(acc - E[i * b + j]) < 1e-10, "b=%d s=%g: Q rot Q^T != expm", b, s);
            }
    }
}

START_TEST(test_schur_fold_equals_expm) {
    unsigned st = 7;
    double F[64 * 64], S[64 * 64];
    for (int b = 1; b <= 9; b++)
        for (int rep = 0; rep < 5; rep++) {
            for (int i = 0; i < b * b; i++) F[i] = 3 * rnd(&st);
            for (int i = 0; i < b; i++)
                for (int j = 0; j < b; j++) S[i * b + j] = F[i * b + j] - F[j * b + i];
            check_schur(S, b);
        }
    /* degenerate: zero matrix, and repeated frequencies (two equal planes) */
    memset(S, 0, sizeof(S));
    check_schur(S, 4);
    check_schur(S, 3);
    double rep4[16] = {0, -2, 0, 0, 2, 0, 0, 0, 0, 0, 0, -2, 0, 0, 2, 0};
    check_schur(rep4, 4);
}
END_TEST

/* Loads the manifest's "extras" entry for `model`. */
static json_t *extras_for(const char *model) {
    json_error_t jerr;
    json_t *root = json_load_file(PARITY_DIR "/manifest.json", 0, &jerr);
    ck_assert_msg(root != NULL, "%s", jerr.text);
    json_t *arr = json_object_get(root, "extras"), *found = NULL;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *e = json_array_get(arr, i);
        if (strcmp(json_string_value(json_object_get(e, "model")), model) == 0) {
            found = json_deep_copy(e);
            break;
        }
    }
    json_decref(root);
    ck_assert_msg(found != NULL, "no extras for %s", model);
    return found;
}

static void load_npy(json_t *e, const char *key, npy_array *a) {
    char path[1024], err[512];
    snprintf(path, sizeof(path), "%s/%s", PARITY_DIR, json_string_value(json_object_get(e, key)));
    ck_assert_msg(npy_load(path, a, err, sizeof(err)) == 0, "%s", err);
}

static vit_model *load_model(const char *name) {
    char dir[1024], err[512];
    vit_model *m = NULL;
    snprintf(dir, sizeof(dir), "%s/%s", PARITY_DIR, name);
    ck_assert_msg(vit_load(dir, NULL, &m, err, sizeof(err)) == 0, "%s", err);
    return m;
}

/* Positions of every extras case against the reference's. */
START_TEST(test_positions_match_reference) {
    json_error_t jerr;
    json_t *root = json_load_file(PARITY_DIR "/manifest.json", 0, &jerr);
    json_t *arr = json_object_get(root, "extras");
    ck_assert_int_gt((int)json_array_size(arr), 0);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *e = json_array_get(arr, i);
        vit_model *m = load_model(json_string_value(json_object_get(e, "model")));
        int h = (int)json_integer_value(json_object_get(e, "height"));
        int w = (int)json_integer_value(json_object_get(e, "width"));
        int p = m->cfg.patch_size, T = 1 + (h / p) * (w / p);
        npy_array ref;
        load_npy(e, "positions", &ref);
        ck_assert_int_eq(ref.shape[0], T);
        double *pos = malloc(sizeof(double) * 2 * T);
        vit_positions(&m->cfg, h / p, w / p, pos);
        for (int k = 0; k < 2 * T; k++) ck_assert_msg(fabs(pos[k] - ref.data[k]) < 1e-6, "token %d", k / 2);
        free(pos);
        npy_free(&ref);
        vit_free(m);
    }
    json_decref(root);
}
END_TEST

/* The sampled APE of every token of a raw model against grid_sample's. */
START_TEST(test_ape_sampling_matches_reference) {
    json_error_t jerr;
    json_t *root = json_load_file(PARITY_DIR "/manifest.json", 0, &jerr);
    json_t *arr = json_object_get(root, "extras");
    int checked = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *e = json_array_get(arr, i);
        if (!json_is_string(json_object_get(e, "ape"))) continue;
        vit_model *m = load_model(json_string_value(json_object_get(e, "model")));
        int h = (int)json_integer_value(json_object_get(e, "height"));
        int w = (int)json_integer_value(json_object_get(e, "width"));
        int p = m->cfg.patch_size, T = 1 + (h / p) * (w / p), D = m->cfg.hidden_size;
        npy_array ref;
        load_npy(e, "ape", &ref);
        double *pos = malloc(sizeof(double) * 2 * T);
        float *x = calloc((size_t)T * D, sizeof(float));
        vit_positions(&m->cfg, h / p, w / p, pos);
        vit_add_ape(m, x, pos, T);
        for (int k = 0; k < T * D; k++)
            ck_assert_msg(fabs(x[k] - ref.data[k]) < 1e-5, "token %d dim %d: %g vs %g", k / D, k % D, x[k],
                          ref.data[k]);
        free(pos);
        free(x);
        npy_free(&ref);
        vit_free(m);
        checked++;
    }
    ck_assert_int_gt(checked, 0);
    json_decref(root);
}
END_TEST

/* Layer 0 of a RoPE model: for random token vectors x_a, x_b, the score
 * q'(a).k'(b) computed the engine's way (folded weights, table, pairwise
 * rotation) equals the one computed from the file's raw q/k weights and the
 * reference's full rotation matrices R(pos). This checks the fold, the
 * frequencies and the table together against torch.matrix_exp. */
static void check_rotated_scores(const char *model) {
    json_t *e = extras_for(model);
    vit_model *m = load_model(model);
    const vit_config *c = &m->cfg;
    int h = (int)json_integer_value(json_object_get(e, "height"));
    int w = (int)json_integer_value(json_object_get(e, "width"));
    int p = c->patch_size, T = 1 + (h / p) * (w / p), D = c->hidden_size, H = c->num_attention_heads;
    int hd = c->head_dim;
    npy_array R;
    load_npy(e, "rotation_l0", &R);
    ck_assert_int_eq(R.shape[0], T);

    /* the raw q/k weights, straight from the file */
    char path[1024], err[512];
    safetensors_file f;
    snprintf(path, sizeof(path), "%s/%s/model.safetensors", PARITY_DIR, model);
    ck_assert(safetensors_open(path, &f, err, sizeof(err)) == 0);
    float *Wq = malloc(sizeof(float) * D * D), *Wk = malloc(sizeof(float) * D * D);
    float *bq = malloc(sizeof(float) * D), *bk = malloc(sizeof(float) * D);
    int64_t sh2[2] = {D, D}, sh1[1] = {D};
    ck_assert(safetensors_take(&f, "vision_model.encoder.layers.0.self_attn.q_proj.weight", 2, sh2, Wq, err,
                               sizeof(err)) == 0);
    ck_assert(safetensors_take(&f, "vision_model.encoder.layers.0.self_attn.k_proj.weight", 2, sh2, Wk, err,
                               sizeof(err)) == 0);
    ck_assert(safetensors_take(&f, "vision_model.encoder.layers.0.self_attn.q_proj.bias", 1, sh1, bq, err,
                               sizeof(err)) == 0);
    ck_assert(safetensors_take(&f, "vision_model.encoder.layers.0.self_attn.k_proj.bias", 1, sh1, bk, err,
                               sizeof(err)) == 0);
    safetensors_close(&f);

    rotation_table table;
    ck_assert(rotation_table_build(&m->rot, c, h / p, w / p, &table) == 0);
    unsigned st = 99;
    float *x = malloc(sizeof(float) * D), *qkv = malloc(sizeof(float) * 2 * 3 * D);
    double *q = malloc(sizeof(double) * D), *k = malloc(sizeof(double) * D);
    double *qr = malloc(sizeof(double) * D), *kr = malloc(sizeof(double) * D);
    int pairs[][2] = {{0, 0}, {0, 1}, {1, T - 1}, {T - 1, 2}, {T / 2, T / 3}};
    for (size_t pi = 0; pi < sizeof(pairs) / sizeof(pairs[0]); pi++) {
        int ta = pairs[pi][0], tb = pairs[pi][1];
        for (int i = 0; i < D; i++) x[i] = (float)rnd(&st);
        /* engine: fused, folded projection of x for token ta (row 0) and tb (row 1) */
        const vit_layer *L = &m->w.layers[0];
        for (int r = 0; r < 2; r++)
            for (int o = 0; o < 3 * D; o++) {
                double acc = L->qkv_b[o];
                for (int i = 0; i < D; i++) acc += (double)gemm_packed_get(&L->qkv, o, i) * x[i];
                qkv[r * 3 * D + o] = (float)acc;
            }
        /* rotate row 0 as token ta and row 1 as token tb: apply on one-row views */
        rotation_table one = table;
        float *row0 = qkv, *row1 = qkv + 3 * D;
        /* rotation_apply indexes the table by row; give it the row's own token */
        float *rows_a = calloc((size_t)T * 3 * D, sizeof(float));
        memcpy(rows_a + (size_t)ta * 3 * D, row0, sizeof(float) * 3 * D);
        memcpy(rows_a + (size_t)tb * 3 * D + 0, row1, sizeof(float) * 3 * D);
        if (ta == tb) memcpy(rows_a + (size_t)ta * 3 * D, row0, sizeof(float) * 3 * D);
        kernel_table kt;
        char kerr[200];
        ck_assert(kernel_table_init(&kt, CPU_ISA_BEST, kerr, sizeof(kerr)) == 0);
        rotation_apply(&m->rot, &one, 0, rows_a, 3 * D, T, 0, m->rot.heads, kt.rotate_pairs);
        const float *qa = rows_a + (size_t)ta * 3 * D;     /* q of token ta */
        const float *kb = rows_a + (size_t)tb * 3 * D + D; /* k of token tb */
        /* reference: q = (Wq x + bq) * hd^-0.5, k = Wk x + bk, rotated by R */
        for (int o = 0; o < D; o++) {
            double aq = bq[o], ak = bk[o];
            for (int i = 0; i < D; i++) {
                aq += (double)Wq[(size_t)o * D + i] * x[i];
                ak += (double)Wk[(size_t)o * D + i] * x[i];
            }
            q[o] = aq / sqrt((double)hd);
            k[o] = ak;
        }
        for (int hh = 0; hh < H; hh++) {
            const float *Ra = R.data + (((size_t)ta * H + hh) * hd) * hd;
            const float *Rb = R.data + (((size_t)tb * H + hh) * hd) * hd;
            for (int r = 0; r < hd; r++) {
                double sa = 0, sb = 0;
                for (int cc = 0; cc < hd; cc++) {
                    sa += Ra[r * hd + cc] * q[hh * hd + cc];
                    sb += Rb[r * hd + cc] * k[hh * hd + cc];
                }
                qr[hh * hd + r] = sa;
                kr[hh * hd + r] = sb;
            }
            double ref = 0, eng = 0;
            for (int r = 0; r < hd; r++) {
                ref += qr[hh * hd + r] * kr[hh * hd + r];
                eng += (double)qa[hh * hd + r] * kb[hh * hd + r];
            }
            ck_assert_msg(fabs(ref - eng) < 1e-4 * (1 + fabs(ref)),
                          "%s: head %d tokens (%d,%d): score %g vs reference %g", model, hh, ta, tb, eng,
                          ref);
        }
        free(rows_a);
    }
    free(x);
    free(qkv);
    free(q);
    free(k);
    free(qr);
    free(kr);
    free(Wq);
    free(Wk);
    free(bq);
    free(bk);
    rotation_table_free(&table);
    npy_free(&R);
    vit_free(m);
    json_decref(e);
}

START_TEST(test_rotations_match_reference) {
    json_error_t jerr;
    json_t *root = json_load_file(PARITY_DIR "/manifest.json", 0, &jerr);
    json_t *arr = json_object_get(root, "extras");
    int checked = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *e = json_array_get(arr, i);
        if (!json_is_string(json_object_get(e, "rotation_l0"))) continue;
        check_rotated_scores(json_string_value(json_object_get(e, "model")));
        checked++;
    }
    ck_assert_int_ge(checked, 3);
    json_decref(root);
}
END_TEST

int main(void) {
    Suite *s = suite_create("rotation");
    TCase *tc = tcase_create("rotation");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_expm_matches_taylor);
    tcase_add_test(tc, test_schur_fold_equals_expm);
    tcase_add_test(tc, test_positions_match_reference);
    tcase_add_test(tc, test_ape_sampling_matches_reference);
    tcase_add_test(tc, test_rotations_match_reference);
    suite_add_tcase(s, tc);
    return check_run(s);
}
