/* test_context.c: the engine context (vit.h): what it owns and what it
 * promises.
 *
 *   - two thread pools run their jobs at the same time (nothing in the
 *     engine is process-wide), and two contexts' forwards overlap;
 *   - each context has its own kernel table: a forced ISA is per context;
 *   - the workspace is sized by the limits given when the context is made,
 *     and a forward over them is refused with a message naming the limit;
 *     one larger than the memory there is is refused as such;
 *   - a batch may hold more distinct resolutions than any cache keeps.
 *
 * Overlap is shown by rendezvous, not by timing: each side waits for the
 * other to be inside at the same moment. The waits give up after
 * RENDEZVOUS_S seconds only so that a broken engine fails instead of
 * hanging; on a working one they end as soon as the other side arrives. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel.h"
#include "vit.h"
#include "check_run.h"
#include "config.h"

#define RENDEZVOUS_S 60

/* ---- a rendezvous of `expected` parties ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived, expected;
    int met; /* parties that saw everybody arrive */
} rendezvous;

static void rendezvous_init(rendezvous *r, int expected) {
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->arrived = 0;
    r->expected = expected;
    r->met = 0;
}

static void rendezvous_destroy(rendezvous *r) {
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
}

/* Arrives and waits for all the others (at most RENDEZVOUS_S seconds). */
static void rendezvous_meet(rendezvous *r) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += RENDEZVOUS_S;
    pthread_mutex_lock(&r->mu);
    r->arrived++;
    pthread_cond_broadcast(&r->cv);
    int rc = 0;
    while (r->arrived < r->expected && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&r->cv, &r->mu, &until);
    if (r->arrived >= r->expected) r->met++;
    pthread_mutex_unlock(&r->mu);
}

/* ---- two pools at once ---- */

static void meet_piece(void *ctx, int part, int parts) {
    (void)part;
    (void)parts;
    rendezvous_meet(ctx);
}

typedef struct {
    thread_pool *pool;
    rendezvous *r;
} pool_run_arg;

static void *run_pool_job(void *arg) {
    pool_run_arg *a = arg;
    thread_pool_run(a->pool, meet_piece, a->r, 2);
    return NULL;
}

/* Every piece of two pools' jobs (2 x 2) is inside its job at once: no
 * lock or shared worker set serializes one pool behind the other. */
/* --precision auto's table (dispatch.h) on CPUs this machine is not: bf16
 * where its unit pays (AMD with AVX512-BF16; AMX with an AMX backend), fp32
 * where it does not (Intel without AMX, AMX without a backend, unknown
 * vendors, no bf16 at all, a forced level below avx512); bf16 asked where
 * it does not pay is honoured with a warning; where it cannot run, refused. */
START_TEST(test_precision_table) {
    const char *why;
    char err[256];
    precision_choice c;
    const cpu_features zen5 = {
        .best = CPU_ISA_AVX512, .vendor = CPU_VENDOR_AMD, .avx512bf16 = 1, .amx_bf16 = 0};
    const cpu_features zen3 = {
        .best = CPU_ISA_AVX2, .vendor = CPU_VENDOR_AMD, .avx512bf16 = 0, .amx_bf16 = 0};
    const cpu_features icelake = {
        .best = CPU_ISA_AVX512, .vendor = CPU_VENDOR_INTEL, .avx512bf16 = 0, .amx_bf16 = 0};
    const cpu_features cooperlake = {
        .best = CPU_ISA_AVX512, .vendor = CPU_VENDOR_INTEL, .avx512bf16 = 1, .amx_bf16 = 0};
    const cpu_features sapphire = {
        .best = CPU_ISA_AVX512, .vendor = CPU_VENDOR_INTEL, .avx512bf16 = 1, .amx_bf16 = 1};
    const cpu_features other = {
        .best = CPU_ISA_AVX512, .vendor = CPU_VENDOR_OTHER, .avx512bf16 = 1, .amx_bf16 = 0};

    ck_assert_int_eq(bf16_pays(&zen5, 0, &why), 1);
    ck_assert_ptr_nonnull(strstr(why, "AMD"));
    ck_assert_int_eq(bf16_pays(&zen3, 0, &why), 0);
    ck_assert_int_eq(bf16_pays(&icelake, 1, &why), 0);
    ck_assert_int_eq(bf16_pays(&cooperlake, 1, &why), 0);
    ck_assert_ptr_nonnull(strstr(why, "no AMX"));
    ck_assert_int_eq(bf16_pays(&sapphire, 0, &why), 0);
    ck_assert_ptr_nonnull(strstr(why, "no AMX backend"));
    ck_assert_int_eq(bf16_pays(&sapphire, 1, &why), 1);
    ck_assert_int_eq(bf16_pays(&other, 0, &why), 0);
    /* attention's bf16 products: only where vdpbf16ps is the fast unit,
     * not on Intel even with AMX (the tiles serve the GEMMs) */
    ck_assert_int_eq(bf16_attention_pays(&zen5), 1);
    ck_assert_int_eq(bf16_attention_pays(&zen3), 0);
    ck_assert_int_eq(bf16_attention_pays(&cooperlake), 0);
    ck_assert_int_eq(bf16_attention_pays(&sapphire), 0);
    ck_assert_int_eq(bf16_attention_pays(&other), 0);

    ck_assert_int_eq(precision_choose(PRECISION_AUTO, CPU_ISA_BEST, &zen5, 0, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c.precision, GEMM_BF16);
    ck_assert_int_eq(c.warn, 0);
    ck_assert_int_eq(precision_choose(PRECISION_AUTO, CPU_ISA_AVX2, &zen5, 0, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c.precision, GEMM_FP32); /* no bf16 kernels below avx512 */
    ck_assert_int_eq(c.bf16_pays, 0);
    ck_assert_int_eq(precision_choose(PRECISION_AUTO, CPU_ISA_BEST, &cooperlake, 0, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c.precision, GEMM_FP32);
    ck_assert_int_eq(precision_choose(PRECISION_AUTO, CPU_ISA_BEST, &zen3, 0, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c.precision, GEMM_FP32);
    ck_assert_int_eq(precision_choose(PRECISION_AUTO, CPU_ISA_BEST, &sapphire, 1, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c.precision, GEMM_BF16);

    ck_assert_int_eq(precision_choose(GEMM_BF16, CPU_ISA_BEST, &cooperlake, 0, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c.precision, GEMM_BF16); /* honoured ... */
    ck_assert_int_eq(c.warn, 1);              /* ... with a warning */
    ck_assert_int_eq(precision_choose(GEMM_BF16, CPU_ISA_BEST, &zen5, 0, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c.warn, 0);
    ck_assert_int_eq(precision_choose(GEMM_FP32, CPU_ISA_BEST, &zen5, 0, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c.precision, GEMM_FP32);
    ck_assert_int_eq(c.warn, 0);
    ck_assert_int_eq(precision_choose(GEMM_BF16, CPU_ISA_BEST, &icelake, 0, &c, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "AVX512-BF16"));
    ck_assert_int_eq(precision_choose(GEMM_BF16, CPU_ISA_AVX2, &zen5, 0, &c, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "avx2"));
    ck_assert_int_eq(precision_choose(7, CPU_ISA_BEST, &zen5, 0, &c, err, sizeof(err)), -1);

    int p;
    ck_assert_int_eq(precision_parse("auto", &p), 0);
    ck_assert_int_eq(p, PRECISION_AUTO);
    ck_assert_int_eq(precision_parse("bf16", &p), 0);
    ck_assert_int_eq(p, GEMM_BF16);
    ck_assert_int_eq(precision_parse("fp16", &p), -1);
    ck_assert_str_eq(precision_name(PRECISION_AUTO), "auto");
}
END_TEST

START_TEST(test_two_pools_run_at_once) {
    thread_pool *a = thread_pool_new(2), *b = thread_pool_new(2);
    ck_assert_int_eq(thread_pool_threads(a), 2);
    ck_assert_int_eq(thread_pool_threads(b), 2);
    rendezvous r;
    rendezvous_init(&r, 4);
    pool_run_arg args[2] = {{a, &r}, {b, &r}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_create(&t[i], NULL, run_pool_job, &args[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    ck_assert_msg(r.met == 4, "only %d of 4 pieces met: the pools ran one after the other", r.met);
    rendezvous_destroy(&r);
    thread_pool_free(a);
    thread_pool_free(b);
}
END_TEST

/* ---- models ---- */

static vit_model *load_model(const char *name) {
    char dir[1024], err[512];
    vit_model *m = NULL;
    snprintf(dir, sizeof(dir), "%s/parity/%s", FIXTURE_DIR, name);
    ck_assert_msg(vit_load(dir, NULL, &m, err, sizeof(err)) == 0, "%s: %s", name, err);
    return m;
}

static vit_context *new_context(const vit_model *m, const vit_context_params *p) {
    vit_context *ctx = NULL;
    char err[512];
    ck_assert_msg(vit_context_new(m, p, &ctx, err, sizeof(err)) == 0, "%s", err);
    return ctx;
}

static float *pixels(const vit_model *m, int h, int w, unsigned seed) {
    size_t n = (size_t)m->cfg.num_channels * h * w;
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = (float)sin(0.37 * (double)i + seed);
    return p;
}

/* ---- two contexts' forwards overlap ---- */

static void meet_in_forward(void *arg, int stage, const float *x, const int *start, int n, int T, int D) {
    (void)x;
    (void)start;
    (void)n;
    (void)T;
    (void)D;
    if (stage == 1) rendezvous_meet(arg); /* after the first layer: both mid-forward */
}

typedef struct {
    vit_context *ctx;
    vit_image img;
    float logits[64];
    int rc;
} forward_arg;

static void *run_forward(void *arg) {
    forward_arg *a = arg;
    char err[512];
    a->rc = vit_forward_ragged(a->ctx, &a->img, 1, a->logits, err, sizeof(err));
    return NULL;
}

START_TEST(test_two_contexts_forwards_overlap) {
    vit_model *m = load_model("comrope_ld_b2");
    int p = m->cfg.patch_size;
    rendezvous r;
    rendezvous_init(&r, 2);
    vit_context_params cp = vit_context_default_params();
    cp.threads = 2;
    cp.observe = meet_in_forward;
    cp.observe_arg = &r;
    float *pix = pixels(m, 8 * p, 8 * p, 1);
    forward_arg args[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        args[i] = (forward_arg){.ctx = new_context(m, &cp), .img = {8 * p, 8 * p, pix}, .rc = -1};
        ck_assert_int_le(m->cfg.num_class, 64);
    }
    for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_create(&t[i], NULL, run_forward, &args[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    ck_assert_int_eq(args[0].rc, 0);
    ck_assert_int_eq(args[1].rc, 0);
    ck_assert_msg(r.met == 2, "the forwards did not overlap (%d of 2 met)", r.met);
    ck_assert(memcmp(args[0].logits, args[1].logits, sizeof(float) * (size_t)m->cfg.num_class) == 0);
    for (int i = 0; i < 2; i++) vit_context_free(args[i].ctx);
    rendezvous_destroy(&r);
    free(pix);
    vit_free(m);
}
END_TEST

/* ---- the kernel table is per context ---- */

/* gemm backend amx: fp32 with it is refused (it computes bf16 only); on a
 * CPU without AMX it is refused naming the missing feature; with AMX the
 * model runs its bf16 GEMMs on our AMX kernel. Every name parses back. */
START_TEST(test_amx_backend_choice) {
    char dir[1024], err[512];
    vit_model *m = NULL;
    snprintf(dir, sizeof(dir), "%s/parity/%s", FIXTURE_DIR, "comrope_ld_b2");
    vit_options o = vit_default_options();
    o.gemm_backend = GEMM_BACKEND_AMX;
    /* what the refusal must name: what the probe found missing (no AMX in
     * CPUID, the OS's tile state, Linux's grant), or AVX512-BF16 */
    char why[256] = "not AVX512-BF16";
    cpu_amx_unavailable(cpu_get_features(), why, sizeof(why));
    ck_assert_int_eq(vit_load(dir, &o, &m, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, gemm_amx_kernel(GEMM_AMX_DEFAULT) ? "bf16 only" : why), "%s", err);
    o.precision = GEMM_BF16;
    if (!gemm_amx_kernel(GEMM_AMX_DEFAULT)) {
        ck_assert_int_eq(vit_load(dir, &o, &m, err, sizeof(err)), -1);
        ck_assert_msg(strstr(err, "gemm backend amx: ") == err && strstr(err, why), "%s", err);
        printf("test_amx_backend_choice: no AMX here: only the refusal is checked\n");
    } else {
        ck_assert_msg(vit_load(dir, &o, &m, err, sizeof(err)) == 0, "%s", err);
        ck_assert_int_eq(m->backend, GEMM_BACKEND_AMX);
        vit_free(m);
    }
    for (int b = GEMM_BACKEND_AUTO; b <= GEMM_BACKEND_AMX; b++) {
        int back = -1;
        ck_assert_int_eq(gemm_backend_parse(gemm_backend_name(b), &back), 0);
        ck_assert_int_eq(back, b);
    }
    ck_assert_str_eq(gemm_backend_name(GEMM_BACKEND_AMX), "amx");
}
END_TEST

/* Why the tiles are out of reach, as the refusals say it: each state the
 * probe can end in, and this CPU's probe consistent with the kernel's
 * availability. */
START_TEST(test_amx_unavailable_says_why) {
    char why[256];
    cpu_features f = {.best = CPU_ISA_AVX512, .vendor = CPU_VENDOR_INTEL, .avx512bf16 = 1};
    ck_assert_int_eq(cpu_amx_unavailable(&f, why, sizeof(why)), 1); /* zeroed: no AMX in CPUID */
    ck_assert_msg(strstr(why, "no AMX-BF16") && strstr(why, "/proc/cpuinfo"), "%s", why);
    f.amx_missing = CPU_AMX_SMALL_PALETTE;
    ck_assert_int_eq(cpu_amx_unavailable(&f, why, sizeof(why)), 1);
    ck_assert_msg(strstr(why, "0x1D") != NULL, "%s", why);
    f.amx_missing = CPU_AMX_NO_XCR0;
    ck_assert_int_eq(cpu_amx_unavailable(&f, why, sizeof(why)), 1);
    ck_assert_msg(strstr(why, "XCR0") != NULL, "%s", why);
    f.amx_missing = CPU_AMX_NO_GRANT;
    f.amx_errno = EPERM;
    ck_assert_int_eq(cpu_amx_unavailable(&f, why, sizeof(why)), 1);
    ck_assert_msg(strstr(why, "ARCH_REQ_XCOMP_PERM") && strstr(why, "errno 1 ") && strstr(why, "seccomp"),
                  "%s", why);
    f.amx_errno = EINVAL;
    ck_assert_int_eq(cpu_amx_unavailable(&f, why, sizeof(why)), 1);
    ck_assert_msg(strstr(why, "5.16") != NULL, "%s", why);
    f.amx_missing = CPU_AMX_OK;
    f.amx_bf16 = 1;
    ck_assert_int_eq(cpu_amx_unavailable(&f, why, sizeof(why)), 0);
    const cpu_features *here = cpu_get_features();
    ck_assert_int_eq(cpu_amx_unavailable(here, why, sizeof(why)), !here->amx_bf16);
    ck_assert_int_eq(here->amx_missing == CPU_AMX_OK, here->amx_bf16);
    if (!here->amx_bf16) printf("test_amx_unavailable_says_why: this CPU: %s\n", why);
}
END_TEST

START_TEST(test_isa_is_per_context) {
    vit_model *m = load_model("comrope_ld_b2");
    vit_context_params best = vit_context_default_params(), scalar = best;
    scalar.isa = CPU_ISA_SCALAR;
    vit_context *a = new_context(m, &best), *b = new_context(m, &scalar);
    ck_assert_int_eq(a->kernels.isa, cpu_best_isa());
    ck_assert_str_eq(b->kernels.name, "scalar");
    ck_assert_int_eq(a->kernels.isa, cpu_best_isa()); /* b's choice left a's alone */
    int p = m->cfg.patch_size, K = m->cfg.num_class;
    float *pix = pixels(m, 6 * p, 4 * p, 2), la[64], lb[64];
    vit_image img = {6 * p, 4 * p, pix};
    char err[512];
    ck_assert(vit_forward_ragged(a, &img, 1, la, err, sizeof(err)) == 0);
    ck_assert(vit_forward_ragged(b, &img, 1, lb, err, sizeof(err)) == 0);
    for (int k = 0; k < K; k++) ck_assert_float_eq_tol(la[k], lb[k], 1e-4);
    /* a level above the CPU's best is refused, naming it */
    if (cpu_best_isa() < CPU_ISA_AVX512) {
        vit_context_params high = best;
        high.isa = CPU_ISA_AVX512;
        vit_context *c = NULL;
        ck_assert_int_eq(vit_context_new(m, &high, &c, err, sizeof(err)), -1);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(err, "avx512") != NULL, "message: %s", err);
    }
    vit_context_params bad = best;
    bad.isa = 7;
    vit_context *c = NULL;
    ck_assert_int_eq(vit_context_new(m, &bad, &c, err, sizeof(err)), -1);
    ck_assert_ptr_null(c);
    free(pix);
    vit_context_free(a);
    vit_context_free(b);
    vit_free(m);
}
END_TEST

/* ---- the limits bound the workspace ---- */

START_TEST(test_limits_are_enforced_and_bound_the_workspace) {
    vit_model *m = load_model("comrope_ld_b2");
    int p = m->cfg.patch_size, h = 4 * p, w = 4 * p, t = vit_tokens(m, h, w);
    ck_assert_int_eq(t, 17);
    m->max_tokens = 2 * t; /* the per-image limit, below the per-forward one */
    vit_context_params cp = vit_context_default_params();
    cp.max_images = 3;
    cp.max_tokens = 3 * t;
    vit_context *ctx = new_context(m, &cp);
    float *arena = ctx->arena;
    size_t floats = ctx->arena_floats;
    ck_assert_int_eq(ctx->arena_touched, 0); /* nothing written before a forward needs it */
    float *pix = pixels(m, 2 * h, w, 3), logits[4 * 64];
    vit_image four[4] = {{h, w, pix}, {h, w, pix}, {h, w, pix}, {h, w, pix}};
    char err[512];
    /* within the limits */
    ck_assert_msg(vit_forward_ragged(ctx, four, 3, logits, err, sizeof(err)) == 0, "%s", err);
    /* one image too many */
    ck_assert_int_eq(vit_forward_ragged(ctx, four, 4, logits, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "4 images") && strstr(err, "limit of 3 images") && strstr(err, "max_images"),
                  "message: %s", err);
    /* three images, too many tokens: 2t + t + t > 3t */
    vit_image big[3] = {{2 * h, w, pix}, {h, w, pix}, {h, w, pix}};
    int tokens = vit_tokens(m, 2 * h, w) + 2 * t;
    char want[64];
    snprintf(want, sizeof(want), "%d tokens", tokens);
    ck_assert_int_eq(vit_forward_ragged(ctx, big, 3, logits, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, want) && strstr(err, "max_tokens"), "message: %s", err);
    /* the largest batch the limits allow: the arena was sized for it */
    ck_assert(vit_forward_ragged(ctx, big, 2, logits, err, sizeof(err)) == 0);
    ck_assert_ptr_eq(ctx->arena, arena);
    ck_assert_uint_eq(ctx->arena_floats, floats);
    ck_assert_uint_le(ctx->arena_touched, ctx->arena_floats);
    ck_assert_uint_gt(ctx->arena_touched, 0);
    free(pix);
    vit_context_free(ctx);
    vit_free(m);
}
END_TEST

/* A per-forward token limit below one image's is raised to it: every image
 * the model accepts can run alone. Limits below 1 are refused. */
START_TEST(test_token_limit_at_least_one_image) {
    vit_model *m = load_model("comrope_ld_b2");
    vit_context_params cp = vit_context_default_params();
    cp.max_tokens = 1;
    vit_context *ctx = new_context(m, &cp);
    ck_assert_int_eq(ctx->params.max_tokens, m->max_tokens);
    vit_context_free(ctx);
    cp.max_images = 0;
    char err[512];
    ck_assert_int_eq(vit_context_new(m, &cp, &ctx, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "max_images") != NULL, "message: %s", err);
    vit_free(m);
}
END_TEST

/* Bytes of rotation tables per token of m, from its config alone (not
 * from the code under test): each layer and head holds a token's cos and
 * sin per rotated pair (vanilla-rope: head_dim / 2 pairs; comrope-ap/ld:
 * b / 2 per block of b, their Schur fold), or liere's b x b matrix per block. */
static size_t table_bytes_per_token(const vit_model *m) {
    const vit_config *c = &m->cfg;
    size_t LH = (size_t)c->num_hidden_layers * (size_t)c->num_attention_heads, hd = (size_t)c->head_dim;
    size_t b = (size_t)c->block_size;
    switch (c->custom_pe_type) {
    case PE_VANILLA_ROPE: return LH * (hd / 2) * 2 * sizeof(float);
    case PE_COMROPE_AP:
    case PE_COMROPE_LD: return LH * (hd / b) * (b / 2) * 2 * sizeof(float);
    case PE_LIERE: return LH * (hd / b) * b * b * sizeof(float);
    default: return 0;
    }
}

/* Bytes the rotation tables a context has built hold now. */
static size_t cached_table_bytes(const vit_context *ctx) {
    size_t bytes = 0;
    for (int i = 0; i < ctx->cache_slots; i++) bytes += ctx->cache[i].floats * sizeof(float);
    return bytes;
}

/* A workspace larger than all the memory there is (2^31 tokens of even
 * the smallest fixture: terabytes) is refused as such, before any
 * allocation: ENGINE_ERR_WORKSPACE, which smaller limits cure, not
 * ENGINE_ERR_MEMORY, which waiting may (the daemon exits 2, not 3, and
 * systemd does not restart it for ever). memory_bytes lowers the bound
 * (the daemon's cgroup memory.max); above the machine's memory it does
 * not raise it. */
START_TEST(test_workspace_larger_than_memory) {
    vit_model *m = load_model("comrope_ld_b2");
    m->max_tokens = 1 << 19; /* 4096 such images: more than 2^31 - 1 tokens, which then apply */
    vit_context_params cp = vit_context_default_params();
    cp.max_images = 4096;
    cp.max_tokens = 2147483647;
    vit_context *ctx = NULL;
    char err[512] = "";
    ck_assert_int_eq(vit_context_new(m, &cp, &ctx, err, sizeof(err)), ENGINE_ERR_WORKSPACE);
    ck_assert_ptr_null(ctx);
    ck_assert_msg(strstr(err, "a workspace of 4096 images / 2147483647 tokens needs") &&
                      strstr(err, "MiB of physical memory; at most ") && strstr(err, " tokens fit"),
                  "message: %s", err);
    cp.memory_bytes = (size_t)1 << 62;
    ck_assert_int_eq(vit_context_new(m, &cp, &ctx, err, sizeof(err)), ENGINE_ERR_WORKSPACE);
    ck_assert_msg(strstr(err, "MiB of physical memory"), "message: %s", err);
    vit_free(m);

    m = load_model("comrope_ld_b2");
    cp = vit_context_default_params(); /* 16384 tokens: megabytes */
    ctx = new_context(m, &cp);
    /* the arena and 16384 tokens of rotation tables, the most its cache
     * keeps (a bound on the arena alone let a worker's tables grow past
     * its share: 30 MiB over a 51 MiB workspace for the bundled model) */
    size_t arena = ctx->arena_floats * sizeof(float), bytes = arena + 16384 * table_bytes_per_token(m);
    ck_assert_uint_eq(table_bytes_per_token(m), 2 * 2 * 8 * 2 * sizeof(float)); /* L, H, pairs, cos/sin */
    ck_assert_uint_eq(vit_context_bytes(ctx), bytes);
    vit_context_free(ctx);
    /* room for the arena, not for its tables: refused */
    cp.memory_bytes = arena;
    ck_assert_int_eq(vit_context_new(m, &cp, &ctx, err, sizeof(err)), ENGINE_ERR_WORKSPACE);
    ck_assert_ptr_null(ctx);
    cp.memory_bytes = bytes - 1;
    ck_assert_int_eq(vit_context_new(m, &cp, &ctx, err, sizeof(err)), ENGINE_ERR_WORKSPACE);
    ck_assert_ptr_null(ctx);
    /* the bound that applied, and the largest max_tokens under it */
    ck_assert_msg(strstr(err, "MiB of the memory limit (memory_bytes") &&
                      strstr(err, "; at most 16383 tokens fit"),
                  "message: %s", err);
    cp.memory_bytes = bytes;
    ctx = new_context(m, &cp);
    ck_assert_uint_eq(vit_context_bytes(ctx), bytes);
    vit_context_free(ctx);
    /* what others hold already (memory_held: a daemon's other models and
     * weights) is not this workspace's: the same bound, one byte held, refused */
    cp.memory_held = 1;
    ck_assert_int_eq(vit_context_new(m, &cp, &ctx, err, sizeof(err)), ENGINE_ERR_WORKSPACE);
    ck_assert_msg(strstr(err, "less the 0 MiB held already (memory_held); at most 16383 tokens fit"),
                  "message: %s", err);
    cp.memory_bytes = bytes + 1;
    ctx = new_context(m, &cp);
    vit_context_free(ctx);
    /* all of it held: not even one image */
    cp.memory_held = bytes + 2;
    ck_assert_int_eq(vit_context_new(m, &cp, &ctx, err, sizeof(err)), ENGINE_ERR_WORKSPACE);
    ck_assert_msg(strstr(err, "not even one image"), "message: %s", err);
    ck_assert_uint_gt(vit_model_bytes(m), m->num_params * sizeof(float));
    vit_free(m);

    /* liere keeps a b x b matrix per block and token: b^2 / 2 times a
     * pair's cos and sin, counted as such */
    m = load_model("liere_b3");
    ck_assert_uint_eq(table_bytes_per_token(m), (size_t)m->cfg.num_hidden_layers *
                                                    m->cfg.num_attention_heads * (m->cfg.head_dim / 3) * 9 *
                                                    sizeof(float));
    ctx = new_context(m, NULL);
    ck_assert_uint_eq(vit_context_bytes(ctx),
                      ctx->arena_floats * sizeof(float) + 16384 * table_bytes_per_token(m));
    vit_context_free(ctx);
    vit_free(m);
}
END_TEST

/* A max_tokens above what max_images images can hold (max-batch-size 1
 * with max-batch-tokens 16777216, meant as "no cap") reserves only what
 * they can: the workspace of max_images x the model's max_tokens, not one
 * refused as larger than memory. memory_bytes is that workspace's size,
 * so the uncapped one is refused before anything is allocated. */
START_TEST(test_workspace_capped_by_max_images) {
    vit_model *m = load_model("comrope_ld_b2");
    vit_context_params cp = vit_context_default_params();
    cp.max_images = 2;
    cp.max_tokens = 2 * m->max_tokens;
    vit_context *ctx = new_context(m, &cp);
    size_t floats = ctx->arena_floats, bytes = vit_context_bytes(ctx);
    vit_context_free(ctx);
    cp.max_tokens = 16777216;
    cp.memory_bytes = bytes;
    char err[512] = "";
    ck_assert_msg(vit_context_new(m, &cp, &ctx, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(ctx->arena_floats, floats);
    ck_assert_int_eq(ctx->params.max_tokens, 16777216);
    vit_context_free(ctx);

    /* nor does its rotation cache keep more than such a batch's tables:
     * one image of at most 17 tokens (16 x 16 px) a forward, three grids
     * of 5 + 9 + 17 tokens in turn, under max_tokens 1000 (the cache kept
     * all 31 tokens' tables, past the bound the memory check counted) */
    m->max_tokens = 17;
    cp = vit_context_default_params();
    cp.max_images = 1;
    cp.max_tokens = 1000;
    ctx = new_context(m, &cp);
    size_t most = vit_context_bytes(ctx) - ctx->arena_floats * sizeof(float);
    ck_assert_uint_eq(most, 17 * table_bytes_per_token(m));
    float *pix = pixels(m, 16, 16, 1), logits[64];
    const int sides[3][2] = {{8, 8}, {8, 16}, {16, 16}};
    for (int i = 0; i < 3; i++) {
        vit_image img = {sides[i][0], sides[i][1], pix};
        ck_assert_msg(vit_forward_ragged(ctx, &img, 1, logits, err, sizeof(err)) == 0, "%s", err);
        ck_assert_msg(cached_table_bytes(ctx) <= most, "after %dx%d: %zu bytes of tables, counted %zu", img.h,
                      img.w, cached_table_bytes(ctx), most);
    }
    free(pix);
    vit_context_free(ctx);
    vit_free(m);
}
END_TEST

/* A resolution whose token count passes an int (found by fuzz_query:
 * 216824 px a side) is refused with the count, not computed in overflow. */
START_TEST(test_huge_resolution_refused) {
    vit_model *m = load_model("comrope_ld_b2");
    int p = m->cfg.patch_size, side = (216824 / p) * p;
    char err[512] = "";
    ck_assert_int_eq(vit_check_resolution(m, side, side, err, sizeof(err)), -1);
    char want[64];
    snprintf(want, sizeof(want), "needs %lld tokens", 1 + (long long)(side / p) * (side / p));
    ck_assert_msg(strstr(err, want) != NULL, "message: %s", err);
    vit_free(m);
}
END_TEST

/* ---- more resolutions in one batch than any cache keeps ---- */

/* 20 images of 20 distinct grids in one batch (the rotation cache kept 16
 * tables, and such a batch failed as a whole): it succeeds, and each
 * image's logits are its logits alone, bit for bit. */
START_TEST(test_batch_with_many_resolutions) {
    vit_model *m = load_model("comrope_ap_b2");
    int p = m->cfg.patch_size, K = m->cfg.num_class, n = 20, tokens = 0;
    ck_assert_int_le(K, 64);
    vit_image imgs[20];
    float *pix = pixels(m, 5 * p, 4 * p, 4);
    for (int i = 0; i < n; i++) {
        imgs[i] = (vit_image){p * (i % 5 + 1), p * (i / 5 + 1), pix};
        tokens += vit_tokens(m, imgs[i].h, imgs[i].w);
    }
    vit_context_params cp = vit_context_default_params();
    cp.max_images = n;
    cp.max_tokens = tokens;
    vit_context *ctx = new_context(m, &cp);
    float together[20 * 64], alone[64];
    char err[512];
    ck_assert_msg(vit_forward_ragged(ctx, imgs, n, together, err, sizeof(err)) == 0, "%s", err);
    for (int i = 0; i < n; i++) {
        ck_assert(vit_forward_ragged(ctx, &imgs[i], 1, alone, err, sizeof(err)) == 0);
        ck_assert_msg(memcmp(alone, together + (size_t)i * K, sizeof(float) * (size_t)K) == 0,
                      "image %d (%dx%d) differs in the batch", i, imgs[i].h, imgs[i].w);
    }
    /* and again, now that other tables were cached in between */
    ck_assert(vit_forward_ragged(ctx, imgs, n, together, err, sizeof(err)) == 0);
    ck_assert_uint_le(ctx->cache_tokens, ctx->cache_max_tokens);
    ck_assert_uint_le(cached_table_bytes(ctx), (size_t)tokens * table_bytes_per_token(m));
    free(pix);
    vit_context_free(ctx);
    vit_free(m);
}
END_TEST

/* config/ lists the names the daemon accepts for precision, gemm-backend
 * and isa without depending on the engine; the engine parses them when a
 * model loads. The two lists must be the same: every choice the config
 * accepts parses in the engine (or a setting it validated would fail the
 * load), and every name the engine has is a choice (or it is unreachable
 * from the daemon). */
static const config_option *option_named(const char *name) {
    for (int i = 0; i < config_num_options; i++)
        if (strcmp(config_options[i].name, name) == 0) return &config_options[i];
    ck_abort_msg("no config option %s", name);
    return NULL;
}

static int choice_count(const config_option *o, const char *name) {
    int n = 0, found = 0;
    for (; o->choices[n]; n++) found += strcmp(o->choices[n], name) == 0;
    ck_assert_msg(found == 1, "%s is %d times among the choices of %s", name, found, o->name);
    return n;
}

START_TEST(test_config_choices_are_the_engines) {
    const config_option *prec = option_named("precision"), *back = option_named("gemm-backend"),
                        *isa = option_named("isa");
    int v;
    for (int i = 0; prec->choices[i]; i++)
        ck_assert_msg(precision_parse(prec->choices[i], &v) == 0, "precision %s", prec->choices[i]);
    for (int i = 0; back->choices[i]; i++)
        ck_assert_msg(gemm_backend_parse(back->choices[i], &v) == 0, "gemm-backend %s", back->choices[i]);
    for (int i = 0; isa->choices[i]; i++)
        ck_assert_msg(cpu_isa_parse(isa->choices[i], &v) == 0, "isa %s", isa->choices[i]);
    /* and the engine's names, each once (up to the first out of range,
     * "unknown"): the counts then match */
    int nprec = 1; /* "auto" */
    for (int p = 0; strcmp(precision_name(p), "unknown") != 0; p++, nprec++)
        choice_count(prec, precision_name(p));
    ck_assert_int_eq(choice_count(prec, precision_name(PRECISION_AUTO)), nprec);
    int nback = 0;
    for (int b = GEMM_BACKEND_AUTO; strcmp(gemm_backend_name(b), "unknown") != 0; b++, nback++)
        choice_count(back, gemm_backend_name(b));
    ck_assert_int_eq(choice_count(back, "auto"), nback);
    int nisa = 1; /* "auto" */
    for (int l = 0; strcmp(cpu_isa_name((cpu_isa)l), "unknown") != 0; l++, nisa++)
        choice_count(isa, cpu_isa_name((cpu_isa)l));
    ck_assert_int_eq(choice_count(isa, "auto"), nisa);
}
END_TEST

int main(void) {
    Suite *s = suite_create("context");
    TCase *tc = tcase_create("context");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_precision_table);
    tcase_add_test(tc, test_config_choices_are_the_engines);
    tcase_add_test(tc, test_two_pools_run_at_once);
    tcase_add_test(tc, test_two_contexts_forwards_overlap);
    tcase_add_test(tc, test_isa_is_per_context);
    tcase_add_test(tc, test_amx_backend_choice);
    tcase_add_test(tc, test_amx_unavailable_says_why);
    tcase_add_test(tc, test_limits_are_enforced_and_bound_the_workspace);
    tcase_add_test(tc, test_token_limit_at_least_one_image);
    tcase_add_test(tc, test_workspace_larger_than_memory);
    tcase_add_test(tc, test_workspace_capped_by_max_images);
    tcase_add_test(tc, test_huge_resolution_refused);
    tcase_add_test(tc, test_batch_with_many_resolutions);
    suite_add_tcase(s, tc);
    return check_run(s);
}
