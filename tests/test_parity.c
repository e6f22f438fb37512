/* test_parity.c: the engine's logits against the PyTorch reference.
 *
 * tests/fixtures/parity/manifest.json lists, for tiny random checkpoints of
 * every variant (written by tools/make_fixtures.py in the official format),
 * inputs at several resolutions and the float64 logits that
 * tools/reference.py computed for them. Every case must match within 1e-4,
 * and putting images of different sizes into one ragged batch, in any
 * order, must not change any image's logits: not a bit (gemm.h). */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"
#include "parallel.h"
#include "vit.h"
#include "check_run.h"

#define PARITY_DIR FIXTURE_DIR "/parity"

typedef struct {
    char model[128];
    char pe[32];
    int h, w;
    npy_array input, logits;
} parity_case;

static parity_case *cases;
static int ncases;

static void load_manifest(void) {
    json_error_t jerr;
    json_t *root = json_load_file(PARITY_DIR "/manifest.json", 0, &jerr);
    ck_assert_msg(root != NULL, "manifest: %s", jerr.text);
    json_t *arr = json_object_get(root, "cases");
    ncases = (int)json_array_size(arr);
    ck_assert_int_gt(ncases, 0);
    cases = calloc((size_t)ncases, sizeof(*cases));
    for (int i = 0; i < ncases; i++) {
        json_t *c = json_array_get(arr, (size_t)i);
        char path[1024], err[512];
        snprintf(cases[i].model, sizeof(cases[i].model), "%s",
                 json_string_value(json_object_get(c, "model")));
        snprintf(cases[i].pe, sizeof(cases[i].pe), "%s", json_string_value(json_object_get(c, "pe")));
        cases[i].h = (int)json_integer_value(json_object_get(c, "height"));
        cases[i].w = (int)json_integer_value(json_object_get(c, "width"));
        snprintf(path, sizeof(path), "%s/%s", PARITY_DIR, json_string_value(json_object_get(c, "input")));
        ck_assert_msg(npy_load(path, &cases[i].input, err, sizeof(err)) == 0, "%s", err);
        snprintf(path, sizeof(path), "%s/%s", PARITY_DIR, json_string_value(json_object_get(c, "logits")));
        ck_assert_msg(npy_load(path, &cases[i].logits, err, sizeof(err)) == 0, "%s", err);
    }
    json_decref(root);
}

static void free_manifest(void) {
    for (int i = 0; i < ncases; i++) {
        npy_free(&cases[i].input);
        npy_free(&cases[i].logits);
    }
    free(cases);
    cases = NULL;
    ncases = 0;
}

static vit_model *load_model(const char *name) {
    char dir[1024], err[512];
    vit_model *m = NULL;
    snprintf(dir, sizeof(dir), "%s/%s", PARITY_DIR, name);
    ck_assert_msg(vit_load(dir, NULL, &m, err, sizeof(err)) == 0, "%s: %s", name, err);
    return m;
}

/* A context for m with `threads` threads, for batches of up to max_images
 * images and max_tokens tokens. */
static vit_context *new_context(const vit_model *m, int threads, int max_images, int max_tokens) {
    vit_context_params p = vit_context_default_params();
    p.threads = threads;
    p.max_images = max_images;
    p.max_tokens = max_tokens;
    vit_context *ctx = NULL;
    char err[512];
    ck_assert_msg(vit_context_new(m, &p, &ctx, err, sizeof(err)) == 0, "%s", err);
    return ctx;
}

/* Every case, one forward per case (its N images in one batch), on one
 * thread and on two (heads, rows and columns then split between them):
 * both against the reference, and the two bit for bit the same. */
START_TEST(test_every_case_matches_reference) {
    load_manifest();
    int pe_seen[6] = {0}, nonsquare = 0;
    float *one_thread = NULL; /* the previous (one-thread) run's logits */
    for (int i = 0; i < 2 * ncases; i++) {
        parity_case *pc = &cases[i / 2];
        vit_model *m = load_model(pc->model);
        int N = (int)pc->input.shape[0], K = m->cfg.num_class, C = m->cfg.num_channels;
        vit_context *ctx = new_context(m, i % 2 ? 2 : 1, N, N * vit_tokens(m, pc->h, pc->w));
        ck_assert_int_eq(pc->input.ndim, 4);
        ck_assert_int_eq(pc->input.shape[2], pc->h);
        ck_assert_int_eq(pc->input.shape[3], pc->w);
        ck_assert_int_eq(pc->logits.shape[1], K);
        vit_image *imgs = calloc((size_t)N, sizeof(*imgs));
        float *logits = calloc((size_t)N * K, sizeof(float));
        for (int n = 0; n < N; n++) {
            imgs[n].h = pc->h;
            imgs[n].w = pc->w;
            imgs[n].pixels = pc->input.data + (size_t)n * C * pc->h * pc->w;
        }
        char err[512];
        ck_assert_msg(vit_forward_ragged(ctx, imgs, N, logits, err, sizeof(err)) == 0, "%s", err);
        double worst = 0;
        for (int k = 0; k < N * K; k++) {
            double d = fabs((double)logits[k] - pc->logits.data[k]);
            if (!(d <= worst)) worst = d; /* NaN propagates as failure */
        }
        ck_assert_msg(worst <= 1e-4, "%s at %dx%d, %d thread(s): max |logit - reference| = %g", pc->model,
                      pc->h, pc->w, thread_pool_threads(ctx->pool), worst);
        if (i % 2 == 0) {
            free(one_thread);
            one_thread = malloc(sizeof(float) * (size_t)N * K);
            memcpy(one_thread, logits, sizeof(float) * (size_t)N * K);
        } else {
            ck_assert_msg(memcmp(one_thread, logits, sizeof(float) * (size_t)N * K) == 0,
                          "%s at %dx%d: two threads differ from one", pc->model, pc->h, pc->w);
        }
        pe_seen[m->cfg.custom_pe_type] = 1;
        if (pc->h != pc->w) nonsquare++;
        free(imgs);
        free(logits);
        vit_context_free(ctx);
        vit_free(m);
    }
    free(one_thread);
    for (int t = 0; t < 6; t++)
        ck_assert_msg(pe_seen[t], "no fixture covers custom_pe_type %s", pe_type_name((pe_type)t));
    ck_assert_int_gt(nonsquare, 0);
    free_manifest();
}
END_TEST

/* For each model: all its cases' images in one ragged batch, forwards and
 * backwards, against each image run alone. */
START_TEST(test_ragged_batch_invariance) {
    load_manifest();
    for (int i = 0; i < ncases; i++) {
        if (i > 0 && strcmp(cases[i].model, cases[i - 1].model) == 0) continue;
        vit_model *m = load_model(cases[i].model);
        int K = m->cfg.num_class, C = m->cfg.num_channels, n = 0, tokens = 0;
        vit_image imgs[64];
        for (int j = i; j < ncases && strcmp(cases[j].model, cases[i].model) == 0; j++)
            for (int k = 0; k < cases[j].input.shape[0] && n < 64; k++) {
                imgs[n].h = cases[j].h;
                imgs[n].w = cases[j].w;
                imgs[n].pixels = cases[j].input.data + (size_t)k * C * cases[j].h * cases[j].w;
                tokens += vit_tokens(m, imgs[n].h, imgs[n].w);
                n++;
            }
        ck_assert_int_ge(n, 4);
        vit_context *ctx = new_context(m, 1, n, tokens);
        float *alone = calloc((size_t)n * K, sizeof(float));
        float *together = calloc((size_t)n * K, sizeof(float));
        vit_image reversed[64];
        char err[512];
        for (int k = 0; k < n; k++) {
            ck_assert(vit_forward_ragged(ctx, &imgs[k], 1, alone + (size_t)k * K, err, sizeof(err)) == 0);
            reversed[k] = imgs[n - 1 - k];
        }
        ck_assert(vit_forward_ragged(ctx, imgs, n, together, err, sizeof(err)) == 0);
        for (int k = 0; k < n; k++)
            ck_assert_msg(memcmp(together + (size_t)k * K, alone + (size_t)k * K, sizeof(float) * K) == 0,
                          "%s: image %d (%dx%d) differs in a batch", cases[i].model, k, imgs[k].h, imgs[k].w);
        ck_assert(vit_forward_ragged(ctx, reversed, n, together, err, sizeof(err)) == 0);
        for (int k = 0; k < n; k++)
            ck_assert_msg(
                memcmp(together + (size_t)(n - 1 - k) * K, alone + (size_t)k * K, sizeof(float) * K) == 0,
                "%s: image %d differs in a reversed batch", cases[i].model, k);
        free(alone);
        free(together);
        vit_context_free(ctx);
        vit_free(m);
    }
    free_manifest();
}
END_TEST

/* More distinct resolutions than the rotation cache keeps, across
 * batches: evicted tables are rebuilt and the answer does not change. */
START_TEST(test_rotation_cache_eviction) {
    vit_model *m = load_model("comrope_ap_b2");
    vit_context *ctx = new_context(m, 1, 1, 1); /* tables of at most the model's largest image */
    int p = m->cfg.patch_size, K = m->cfg.num_class, C = m->cfg.num_channels;
    float *pix = calloc((size_t)C * 20 * p * 20 * p, sizeof(float));
    for (size_t i = 0; i < (size_t)C * 20 * p * 20 * p; i++) pix[i] = (float)sin(0.37 * (double)i);
    float first[64], again[64];
    char err[512];
    ck_assert_int_le(K, 64);
    vit_image img = {p, p, pix};
    ck_assert(vit_forward_ragged(ctx, &img, 1, first, err, sizeof(err)) == 0);
    for (int s = 2; s < 20; s++) {
        vit_image other = {p * (s % 5 + 1), p * (s / 5 + 1), pix};
        ck_assert_msg(vit_forward_ragged(ctx, &other, 1, again, err, sizeof(err)) == 0, "%s", err);
        ck_assert_uint_le(ctx->cache_tokens, ctx->cache_max_tokens);
    }
    ck_assert(vit_forward_ragged(ctx, &img, 1, again, err, sizeof(err)) == 0);
    ck_assert(memcmp(first, again, sizeof(float) * (size_t)K) == 0);
    free(pix);
    vit_context_free(ctx);
    vit_free(m);
}
END_TEST

START_TEST(test_bad_resolution_is_refused_with_nearest) {
    vit_model *m = load_model("comrope_ap_b2");
    vit_context *ctx = new_context(m, 1, 1, 1);
    int p = m->cfg.patch_size;
    float pix[3 * 64 * 64] = {0};
    float logits[64];
    char err[512];
    vit_image img = {2 * p + 1, 2 * p, pix};
    ck_assert_int_eq(vit_forward_ragged(ctx, &img, 1, logits, err, sizeof(err)), -1);
    char want[64];
    snprintf(want, sizeof(want), "nearest valid: %d or %d", 2 * p, 3 * p);
    ck_assert_msg(strstr(err, want) != NULL, "message: %s", err);
    vit_context_free(ctx);
    vit_free(m);
}
END_TEST

/* A context whose bf16 GEMMs run on our AMX kernel (block `shape`) with
 * its tiles emulated in C (gemm_amx_emulated): the whole model through the
 * AMX packing and blocking on a CPU without AMX. */
static void use_amx_emulated(vit_context *ctx, int shape) {
    const gemm_kernel *vector = gemm_amx_emulated(shape, 1);
    ctx->kernels.gemm_bf16 = vector ? vector : gemm_amx_emulated(shape, 0);
}

/* Opt-in bf16 compute stays close to the reference on every case (it is
 * not exact: bf16 keeps 8 significant bits of each product's inputs).
 * _i: 0 our vdpbf16ps kernel, 1 our AMX kernel (gemm_backend amx), 2 the
 * AMX kernel emulated (any CPU with AVX512-BF16: the model loads as bf16),
 * 3 the vdpbf16ps kernel with attention as two GEMMs on it
 * (vit_options.attention_gemm); with AMX, the kernel's two blocks and
 * attention on its GEMM or on the head kernels take the cases in turn. */
START_TEST(test_bf16_close_to_reference) {
    ck_assert(_i == 1 ? cpu_has_amx_bf16() : cpu_has_avx512bf16()); /* main() adds it only then */
    load_manifest();
    vit_options opt = vit_default_options();
    opt.precision = GEMM_BF16;
    opt.gemm_backend = _i == 1 ? GEMM_BACKEND_AMX : GEMM_BACKEND_OWN;
    opt.attention_gemm = _i == 3;
    double worst_rel = 0;
    for (int i = 0; i < ncases; i++) {
        parity_case *pc = &cases[i];
        char dir[1024], err[512];
        vit_model *m = NULL;
        snprintf(dir, sizeof(dir), "%s/%s", PARITY_DIR, pc->model);
        opt.amx_shape = i % 2 ? GEMM_AMX_2X2 : GEMM_AMX_1X3;
        if (_i == 1 || _i == 2) opt.attention_gemm = i / 2 % 2;
        ck_assert_msg(vit_load(dir, &opt, &m, err, sizeof(err)) == 0, "%s", err);
        ck_assert_int_eq(m->backend, opt.gemm_backend);
        ck_assert_int_eq(m->attention_gemm, opt.attention_gemm);
        int N = (int)pc->input.shape[0], K = m->cfg.num_class, C = m->cfg.num_channels;
        vit_image imgs[8];
        float logits[8 * 64];
        ck_assert(N <= 8 && K <= 64);
        vit_context *ctx = new_context(m, 1, N, N * vit_tokens(m, pc->h, pc->w));
        if (_i == 2) use_amx_emulated(ctx, opt.amx_shape);
        for (int n = 0; n < N; n++)
            imgs[n] = (vit_image){pc->h, pc->w, pc->input.data + (size_t)n * C * pc->h * pc->w};
        ck_assert(vit_forward_ragged(ctx, imgs, N, logits, err, sizeof(err)) == 0);
        double scale = 0, diff = 0;
        for (int k = 0; k < N * K; k++) {
            scale = fmax(scale, fabs(pc->logits.data[k]));
            diff = fmax(diff, fabs(logits[k] - pc->logits.data[k]));
        }
        worst_rel = fmax(worst_rel, diff / (1 + scale));
        ck_assert_msg(diff <= 0.02 * (1 + scale), "%s at %dx%d: bf16 off by %g (logits up to %g)", pc->model,
                      pc->h, pc->w, diff, scale);
        vit_context_free(ctx);
        vit_free(m);
    }
    fprintf(stderr, "bf16 (%s): worst |logit - reference| / (1 + max |logit|) = %.4f\n",
            _i == 2   ? "amx emulated"
            : _i == 3 ? "own, attention on the GEMM"
                      : gemm_backend_name(opt.gemm_backend),
            worst_rel);
    free_manifest();
}
END_TEST

/* bf16 through oneDNN's matmul (dnnl_gemm.h), forced on any CPU with
 * AVX512-BF16 (by default only AMX CPUs use it): every case close to the
 * reference as our bf16 is, the same top-1 as the reference, and what
 * holds of batch invariance: the same batch gives the same logits bit for
 * bit, call after call and context after context; an image alone and in a
 * batch agree within the bf16 tolerance (not bit for bit: oneDNN blocks
 * each shape its own way). */
static void onednn_cases(int backend_auto_on_amx) {
    load_manifest();
    vit_options opt = vit_default_options();
    opt.precision = backend_auto_on_amx ? PRECISION_AUTO : GEMM_BF16;
    opt.gemm_backend = backend_auto_on_amx ? GEMM_BACKEND_AUTO : GEMM_BACKEND_ONEDNN;
    double worst_rel = 0, worst_alone = 0;
    for (int i = 0; i < ncases; i++) {
        parity_case *pc = &cases[i];
        char dir[1024], err[512];
        vit_model *m = NULL;
        snprintf(dir, sizeof(dir), "%s/%s", PARITY_DIR, pc->model);
        ck_assert_msg(vit_load(dir, &opt, &m, err, sizeof(err)) == 0, "%s", err);
        ck_assert_int_eq(m->precision, GEMM_BF16);
        ck_assert_int_eq(m->backend, GEMM_BACKEND_ONEDNN);
        int N = (int)pc->input.shape[0], K = m->cfg.num_class, C = m->cfg.num_channels;
        vit_image imgs[8];
        float logits[8 * 64], again[8 * 64], alone[64];
        ck_assert(N <= 8 && K <= 64);
        for (int n = 0; n < N; n++)
            imgs[n] = (vit_image){pc->h, pc->w, pc->input.data + (size_t)n * C * pc->h * pc->w};
        vit_context *ctx = new_context(m, 2, N, N * vit_tokens(m, pc->h, pc->w));
        ck_assert_msg(vit_forward_ragged(ctx, imgs, N, logits, err, sizeof(err)) == 0, "%s", err);
        ck_assert(vit_forward_ragged(ctx, imgs, N, again, err, sizeof(err)) == 0);
        ck_assert_msg(memcmp(logits, again, sizeof(float) * N * K) == 0,
                      "%s: the same batch twice gave different logits", pc->model);
        vit_context *ctx2 = new_context(m, 2, N, N * vit_tokens(m, pc->h, pc->w));
        ck_assert(vit_forward_ragged(ctx2, imgs, N, again, err, sizeof(err)) == 0);
        ck_assert_msg(memcmp(logits, again, sizeof(float) * N * K) == 0,
                      "%s: the same batch in another context gave different logits", pc->model);
        double scale = 0, diff = 0;
        for (int k = 0; k < N * K; k++) {
            scale = fmax(scale, fabs(pc->logits.data[k]));
            diff = fmax(diff, fabs(logits[k] - pc->logits.data[k]));
        }
        for (int n = 0; n < N; n++) {
            int ours = 0, theirs = 0;
            for (int k = 1; k < K; k++) {
                if (logits[n * K + k] > logits[n * K + ours]) ours = k;
                if (pc->logits.data[n * K + k] > pc->logits.data[n * K + theirs]) theirs = k;
            }
            /* a near tie may flip in bf16; only a clear winner must hold */
            double margin = fabs(pc->logits.data[n * K + theirs] - pc->logits.data[n * K + ours]);
            ck_assert_msg(ours == theirs || margin <= 0.02 * (1 + scale),
                          "%s image %d: top-1 %d, the reference's %d", pc->model, n, ours, theirs);
            ck_assert(vit_forward_ragged(ctx, &imgs[n], 1, alone, err, sizeof(err)) == 0);
            for (int k = 0; k < K; k++)
                worst_alone = fmax(worst_alone, fabs(alone[k] - logits[n * K + k]) / (1 + scale));
        }
        worst_rel = fmax(worst_rel, diff / (1 + scale));
        ck_assert_msg(diff <= 0.02 * (1 + scale), "%s at %dx%d: oneDNN bf16 off by %g (logits up to %g)",
                      pc->model, pc->h, pc->w, diff, scale);
        ck_assert_msg(worst_alone <= 0.02, "%s: an image alone and in its batch differ by %g", pc->model,
                      worst_alone);
        vit_context_free(ctx);
        vit_context_free(ctx2);
        vit_free(m);
    }
    fprintf(stderr,
            "oneDNN bf16: worst |logit - reference| / (1 + max |logit|) = %.4f, "
            "alone vs in a batch %.2g\n",
            worst_rel, worst_alone);
    free_manifest();
}

START_TEST(test_onednn_bf16_close_to_reference) { onednn_cases(0); }
END_TEST

/* On an AMX CPU, auto picks bf16 through oneDNN (the AMX backend) */
START_TEST(test_amx_auto_uses_onednn) {
    ck_assert(cpu_has_amx_bf16() && dnnl_gemm_available()); /* main() adds it only then */
    onednn_cases(1);
}
END_TEST

/* ---- layer by layer ----
 *
 * As llm.c's test_gpt2 checks every tensor by name: the residual stream
 * after each stage of the forward (the embeddings and pre_layrnorm, then
 * each encoder layer; vit.h's vit_observer) against tools/reference.py
 * --stages-out (stages_HxW.npy, [stages, N, T, D] float64). A failure
 * names the first stage that diverges, so a wrong layer is found at once
 * rather than as a logit somewhere downstream. */
typedef struct {
    const npy_array *ref; /* [S, N, T, D] */
    int stages_seen;
    int first_bad; /* the first stage past the tolerance, -1: none */
    char where[256];
} stage_check;

static void check_stage(void *arg, int stage, const float *x, const int *start, int n, int T, int D) {
    stage_check *c = arg;
    const npy_array *r = c->ref;
    (void)T;
    c->stages_seen++;
    ck_assert_int_lt(stage, r->shape[0]);
    ck_assert_int_eq(n, r->shape[1]);
    ck_assert_int_eq(D, r->shape[3]);
    int Ti = (int)r->shape[2];
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(start[i + 1] - start[i], Ti);
        for (int t = 0; t < Ti; t++)
            for (int d = 0; d < D; d++) {
                double want = r->data[(((size_t)stage * n + i) * Ti + t) * D + d];
                double got = x[((size_t)start[i] + t) * D + d];
                if (!(fabs(got - want) <= 1e-4) && c->first_bad < 0) {
                    c->first_bad = stage;
                    snprintf(c->where, sizeof(c->where),
                             "stage %d (%s%d) diverges first: image %d token %d channel %d: %g vs %g", stage,
                             stage ? "after layer " : "embeddings + pre_layrnorm, ", stage ? stage - 1 : 0, i,
                             t, d, got, want);
                }
            }
    }
}

/* The engine's stages of `model` at h x w against the reference's; with
 * `perturb_layer` >= 0, one weight of that layer is changed first (so the
 * check must name that layer). Returns the first stage that diverged. */
static int first_divergent_stage(const char *model, int h, int w, int perturb_layer, char *where,
                                 size_t wlen) {
    char path[1024], err[512];
    npy_array input = {0}, ref = {0};
    snprintf(path, sizeof(path), "%s/%s/input_%dx%d.npy", PARITY_DIR, model, h, w);
    ck_assert_msg(npy_load(path, &input, err, sizeof(err)) == 0, "%s", err);
    snprintf(path, sizeof(path), "%s/%s/stages_%dx%d.npy", PARITY_DIR, model, h, w);
    ck_assert_msg(npy_load(path, &ref, err, sizeof(err)) == 0, "%s", err);
    vit_model *m = load_model(model);
    if (perturb_layer >= 0) m->w.layers[perturb_layer].fc2_b[0] += 0.01f;
    int N = (int)input.shape[0], C = m->cfg.num_channels, K = m->cfg.num_class;
    ck_assert_int_eq(ref.shape[0], m->cfg.num_hidden_layers + 1);
    stage_check c = {.ref = &ref, .stages_seen = 0, .first_bad = -1, .where = ""};
    vit_context_params p = vit_context_default_params();
    p.max_images = N;
    p.max_tokens = N * vit_tokens(m, h, w);
    p.observe = check_stage;
    p.observe_arg = &c;
    vit_context *ctx = NULL;
    ck_assert_msg(vit_context_new(m, &p, &ctx, err, sizeof(err)) == 0, "%s", err);
    vit_image *imgs = calloc((size_t)N, sizeof(*imgs));
    float *logits = calloc((size_t)N * K, sizeof(float));
    for (int i = 0; i < N; i++) imgs[i] = (vit_image){h, w, input.data + (size_t)i * C * h * w};
    ck_assert_msg(vit_forward_ragged(ctx, imgs, N, logits, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(c.stages_seen, m->cfg.num_hidden_layers + 1);
    snprintf(where, wlen, "%s", c.where);
    free(imgs);
    free(logits);
    vit_context_free(ctx);
    vit_free(m);
    npy_free(&input);
    npy_free(&ref);
    return c.first_bad;
}

START_TEST(test_every_stage_matches_reference) {
    static const struct {
        const char *model;
        int h, w;
    } cases[] = {{"comrope_ld_b2", 8, 16}, {"liere_b2", 8, 8}};
    char where[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int bad = first_divergent_stage(cases[i].model, cases[i].h, cases[i].w, -1, where, sizeof(where));
        ck_assert_msg(bad < 0, "%s at %dx%d: %s", cases[i].model, cases[i].h, cases[i].w, where);
    }
    /* the check names the layer that is wrong: one bias of layer 1 changed */
    int bad = first_divergent_stage("comrope_ld_b2", 8, 16, 1, where, sizeof(where));
    ck_assert_msg(bad == 2, "a change to layer 1 was reported as stage %d (%s)", bad, where);
    ck_assert_msg(strstr(where, "after layer 1") != NULL, "%s", where);
}
END_TEST

/* A batch large enough that the forward fuses fc1's activation into its
 * GEMM (vit.c: more than 2^22 values of fc1's output), with two threads
 * each activating the columns it finished: every image's logits are those
 * of the image alone (which takes the separate pass), bit for bit, in fp32
 * and in bf16. Ragged: two resolutions alternate. */
START_TEST(test_large_batch_paths_invariance) {
    /* 0 fp32, 1 bf16, 2 bf16 on our AMX kernel (1 x 3 block), 3 on it
     * emulated (2 x 2 block: test_gemm holds it to the 1 x 3 bit for bit),
     * 4 on its 2 x 2 block; 3 and 4 with attention on the GEMM too, and 5
     * that on the vdpbf16ps kernel */
    for (int bf16 = _i; bf16 < _i + 1; bf16++) {
        vit_options opt = vit_default_options();
        opt.precision = bf16 ? GEMM_BF16 : GEMM_FP32;
        /* ours, not oneDNN (auto's pick on AMX CPUs, not batch invariant) */
        opt.gemm_backend = bf16 == 2 || bf16 == 4 ? GEMM_BACKEND_AMX : GEMM_BACKEND_OWN;
        opt.amx_shape = bf16 == 4 ? GEMM_AMX_2X2 : GEMM_AMX_1X3;
        opt.attention_gemm = bf16 >= 3;
        char dir[1024], err[512];
        vit_model *m = NULL;
        snprintf(dir, sizeof(dir), "%s/%s", PARITY_DIR, "comrope_ld_b2");
        ck_assert_msg(vit_load(dir, &opt, &m, err, sizeof(err)) == 0, "%s", err);
        int p = m->cfg.patch_size, C = m->cfg.num_channels, K = m->cfg.num_class;
        size_t I = (size_t)m->cfg.intermediate_size, tokens = 0;
        /* small images: the threshold counts tokens, and attention's cost
         * grows with their square (valgrind runs this too) */
        int sizes[2][2] = {{8 * p, 8 * p}, {4 * p, 6 * p}}, n = 0, cap = 4096;
        vit_image *imgs = calloc((size_t)cap, sizeof(vit_image));
        float *pix[2];
        for (int s = 0; s < 2; s++) {
            size_t np = (size_t)C * sizes[s][0] * sizes[s][1];
            pix[s] = malloc(sizeof(float) * np);
            for (size_t i = 0; i < np; i++) pix[s][i] = (float)sin(0.37 * (double)i + s);
        }
        /* past the threshold by a few images */
        while (tokens * I <= ((size_t)1 << 22) + 4 * 65 * I) {
            ck_assert_int_lt(n, cap);
            int s = n % 2;
            imgs[n] = (vit_image){sizes[s][0], sizes[s][1], pix[s]};
            tokens += 1 + (size_t)(sizes[s][0] / p) * (sizes[s][1] / p);
            n++;
        }
        float *together = malloc(sizeof(float) * (size_t)n * K), alone[2][64];
        ck_assert_int_le(K, 64);
        vit_context *ctx = new_context(m, 2, n, (int)tokens);
        if (bf16 == 3) use_amx_emulated(ctx, GEMM_AMX_2X2);
        for (int s = 0; s < 2; s++)
            ck_assert(vit_forward_ragged(ctx, &imgs[s], 1, alone[s], err, sizeof(err)) == 0);
        ck_assert_msg(vit_forward_ragged(ctx, imgs, n, together, err, sizeof(err)) == 0, "%s", err);
        for (int i = 0; i < n; i++)
            ck_assert_msg(memcmp(together + (size_t)i * K, alone[i % 2], sizeof(float) * K) == 0,
                          "%s: image %d of a batch of %d (%zu tokens) differs from it alone",
                          bf16 == 5   ? "bf16, attention on the GEMM"
                          : bf16 == 4 ? "bf16 amx 2x2"
                          : bf16 == 3 ? "bf16 amx 2x2 emulated"
                          : bf16 == 2 ? "bf16 amx"
                          : bf16      ? "bf16"
                                      : "fp32",
                          i, n, tokens);
        free(together);
        free(imgs);
        free(pix[0]);
        free(pix[1]);
        vit_context_free(ctx);
        vit_free(m);
    }
}
END_TEST

/* argv[1]: fp32 (the exact engine), bf16 (the opt-in bf16 compute),
 * onednn (bf16 through oneDNN), amx (bf16 on our AMX kernel), amx-emulated
 * (that kernel with its tiles in C: CPUs with AVX512-BF16) or amx-onednn
 * (auto on an AMX CPU: oneDNN); none: all, each where this CPU and build
 * have it. */
int main(int argc, char **argv) {
    const char *part = argc > 1 ? argv[1] : NULL;
    if (check_part_missing(part)) return check_skip(part);
    /* our AMX kernel emulated runs in a bf16 model, which loads only where
     * AVX512-BF16 is */
    int amx_emulated = cpu_has_avx512bf16();
    if (part && strcmp(part, "amx-emulated") == 0 && !amx_emulated) {
        printf("skipped: no AVX512-BF16 on this CPU (a bf16 model needs it to load)\n");
        return CHECK_SKIPPED;
    }
    Suite *s = suite_create("parity");
    TCase *tc = tcase_create("parity");
    tcase_set_timeout(tc, 600);
    if (check_part_selected(part, "fp32")) {
        tcase_add_test(tc, test_every_case_matches_reference);
        tcase_add_test(tc, test_every_stage_matches_reference);
        tcase_add_test(tc, test_ragged_batch_invariance);
        tcase_add_test(tc, test_rotation_cache_eviction);
        tcase_add_test(tc, test_bad_resolution_is_refused_with_nearest);
        tcase_add_loop_test(tc, test_large_batch_paths_invariance, 0, 1);
    }
    if (check_part_selected(part, "bf16") && !check_part_missing("bf16")) {
        tcase_add_loop_test(tc, test_bf16_close_to_reference, 0, 1);
        tcase_add_loop_test(tc, test_bf16_close_to_reference, 3, 4);
        tcase_add_loop_test(tc, test_large_batch_paths_invariance, 1, 2);
        tcase_add_loop_test(tc, test_large_batch_paths_invariance, 5, 6);
    }
    if (check_part_selected(part, "onednn") && !check_part_missing("onednn"))
        tcase_add_test(tc, test_onednn_bf16_close_to_reference);
    if (check_part_selected(part, "amx") && !check_part_missing("amx")) {
        tcase_add_loop_test(tc, test_bf16_close_to_reference, 1, 2);
        tcase_add_loop_test(tc, test_large_batch_paths_invariance, 2, 3);
        tcase_add_loop_test(tc, test_large_batch_paths_invariance, 4, 5);
    }
    if (check_part_selected(part, "amx-onednn") && !check_part_missing("amx-onednn"))
        tcase_add_test(tc, test_amx_auto_uses_onednn);
    if (check_part_selected(part, "amx-emulated") && amx_emulated) {
        tcase_add_loop_test(tc, test_bf16_close_to_reference, 2, 3);
        tcase_add_loop_test(tc, test_large_batch_paths_invariance, 3, 4);
    }
    suite_add_tcase(s, tc);
    return check_run(s);
}
