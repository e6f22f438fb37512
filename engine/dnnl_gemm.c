/* dnnl_gemm.c: oneDNN's bf16 matmul behind the kernel table (see dnnl_gemm.h). */
#include "dnnl_gemm.h"
#include "engine_error.h"

#include "parallel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef COMROPE_HAVE_DNNL

int dnnl_gemm_available(void) { return 0; }

int dnnl_weight_new(const float *W, int N, int K, dnnl_weight **out, char *err, size_t errlen) {
    (void)W;
    (void)N;
    (void)K;
    *out = NULL;
    snprintf(err, errlen, "this build has no oneDNN (libdnnl-dev was not found by CMake)");
    return -1;
}

void dnnl_weight_free(dnnl_weight *w) { (void)w; }

int dnnl_runner_new(int threads, dnnl_runner **out, char *err, size_t errlen) {
    (void)threads;
    *out = NULL;
    snprintf(err, errlen, "this build has no oneDNN (libdnnl-dev was not found by CMake)");
    return -1;
}

void dnnl_runner_free(dnnl_runner *r) { (void)r; }

int dnnl_gemm_run(dnnl_runner *r, thread_pool *pool, float *out, const float *A, const dnnl_weight *W,
                  const float *bias, int M, uint16_t *scratch, char *err, size_t errlen) {
    (void)r, (void)pool, (void)out, (void)A, (void)W, (void)bias, (void)M, (void)scratch;
    snprintf(err, errlen, "this build has no oneDNN");
    return -1;
}

#else

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>

/* The M oneDNN chooses the weights' layout at; primitives for other M take
 * that layout as given (oneDNN's bf16 matmul blocks weights by N and K
 * only, so every M accepts it; a shape that does not is an error, not a
 * silent reorder per call). */
#define REF_M 256

/* Plain data and a descriptor, no oneDNN objects: each context wraps the
 * data in a memory object of its own engine when it runs. */
struct dnnl_weight {
    int N, K;
    dnnl_memory_desc_t md; /* (K, N) bf16 in oneDNN's chosen layout */
    void *data;            /* owned, 64-byte aligned */
};

typedef struct {
    int M;
    const dnnl_weight *w; /* the weights (and layout) it was made for */
    dnnl_primitive_t prim;
} cached_prim;

/* One piece of the context's pool: its own stream and primitives, so that
 * no oneDNN object is used by two threads at once. */
typedef struct {
    dnnl_stream_t stream;
    cached_prim *cache;
    int n, cap;
} runner_part;

struct dnnl_runner {
    dnnl_engine_t eng;
    runner_part *parts;
    int nparts;
};

int dnnl_gemm_available(void) { return 1; }

static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* The matmul of (M, K) bf16 by weights `wmd` into (M, N) f32 + bias. */
static dnnl_status_t matmul_pd(dnnl_engine_t eng, int M, int N, int K, const dnnl_memory_desc_t *wmd,
                               dnnl_primitive_desc_t *pd) {
    dnnl_memory_desc_t src, bias, dst;
    dnnl_dims_t sd = {M, K}, bd = {1, N}, dd = {M, N};
    dnnl_status_t s;
    if ((s = dnnl_memory_desc_init_by_tag(&src, 2, sd, dnnl_bf16, dnnl_ab)) ||
        (s = dnnl_memory_desc_init_by_tag(&bias, 2, bd, dnnl_f32, dnnl_ab)) ||
        (s = dnnl_memory_desc_init_by_tag(&dst, 2, dd, dnnl_f32, dnnl_ab)))
        return s;
    dnnl_matmul_desc_t d;
    if ((s = dnnl_matmul_desc_init(&d, &src, wmd, &bias, &dst))) return s;
    return dnnl_primitive_desc_create(pd, &d, NULL, eng, NULL);
}

int dnnl_weight_new(const float *W, int N, int K, dnnl_weight **out, char *err, size_t errlen) {
    *out = NULL;
    dnnl_weight *w = calloc(1, sizeof(*w));
    uint16_t *plain = malloc((size_t)N * K * sizeof(uint16_t));
    dnnl_primitive_desc_t pd = NULL, rpd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_memory_t from = NULL, to = NULL;
    dnnl_engine_t eng = NULL;
    dnnl_stream_t stream = NULL;
    int rc = -1;
    if (!w || !plain) {
        snprintf(err, errlen, "out of memory for a %dx%d oneDNN weight", N, K);
        rc = ENGINE_ERR_MEMORY;
        goto cleanup;
    }
    w->N = N;
    w->K = K;
    for (size_t i = 0; i < (size_t)N * K; i++) plain[i] = to_bf16(W[i]);
    /* W (N, K) row-major is the (K, N) weights matrix in tag ba */
    dnnl_memory_desc_t plain_md, any_md;
    dnnl_dims_t wd = {K, N};
    if (dnnl_engine_create(&eng, dnnl_cpu, 0) ||
        dnnl_memory_desc_init_by_tag(&plain_md, 2, wd, dnnl_bf16, dnnl_ba) ||
        dnnl_memory_desc_init_by_tag(&any_md, 2, wd, dnnl_bf16, dnnl_format_tag_any) ||
        matmul_pd(eng, REF_M, N, K, &any_md, &pd)) {
        snprintf(err, errlen, "oneDNN has no bf16 matmul for a %dx%d weight on this CPU", N, K);
        goto cleanup;
    }
    w->md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    size_t bytes = (dnnl_memory_desc_get_size(&w->md) + 63) / 64 * 64;
    w->data = aligned_alloc(64, bytes ? bytes : 64);
    if (!w->data) {
        snprintf(err, errlen, "out of memory for a %dx%d oneDNN weight", N, K);
        rc = ENGINE_ERR_MEMORY;
        goto cleanup;
    }
    if (dnnl_memory_create(&to, &w->md, eng, w->data) || dnnl_memory_create(&from, &plain_md, eng, plain) ||
        dnnl_reorder_primitive_desc_create(&rpd, &plain_md, eng, &w->md, eng, NULL) ||
        dnnl_primitive_create(&reorder, rpd) || dnnl_stream_create(&stream, eng, dnnl_stream_default_flags)) {
        snprintf(err, errlen, "oneDNN: cannot reorder a %dx%d weight", N, K);
        goto cleanup;
    }
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    omp_set_num_threads(1);
    if (dnnl_primitive_execute(reorder, stream, 2, args) || dnnl_stream_wait(stream)) {
        snprintf(err, errlen, "oneDNN: the reorder of a %dx%d weight failed", N, K);
        goto cleanup;
    }
    *out = w;
    w = NULL;
    rc = 0;
cleanup:
    if (stream) dnnl_stream_destroy(stream);
    if (reorder) dnnl_primitive_destroy(reorder);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (from) dnnl_memory_destroy(from);
    if (to) dnnl_memory_destroy(to);
    if (eng) dnnl_engine_destroy(eng);
    free(plain);
    dnnl_weight_free(w);
    return rc;
}

void dnnl_weight_free(dnnl_weight *w) {
    if (!w) return;
    free(w->data);
    free(w);
}

int dnnl_runner_new(int threads, dnnl_runner **out, char *err, size_t errlen) {
    dnnl_runner *r = calloc(1, sizeof(*r));
    *out = NULL;
    int n = threads < 1 ? 1 : threads;
    if (!r || !(r->parts = calloc((size_t)n, sizeof(runner_part)))) {
        free(r);
        snprintf(err, errlen, "out of memory");
        return ENGINE_ERR_MEMORY;
    }
    r->nparts = n;
    int bad = dnnl_engine_create(&r->eng, dnnl_cpu, 0) != dnnl_success;
    for (int i = 0; i < n && !bad; i++)
        bad = dnnl_stream_create(&r->parts[i].stream, r->eng, dnnl_stream_default_flags) != dnnl_success;
    if (bad) {
        snprintf(err, errlen, "oneDNN: cannot make a CPU engine and its streams");
        dnnl_runner_free(r);
        return -1;
    }
    *out = r;
    return 0;
}

void dnnl_runner_free(dnnl_runner *r) {
    if (!r) return;
    for (int p = 0; p < r->nparts; p++) {
        runner_part *rp = &r->parts[p];
        for (int i = 0; i < rp->n; i++) dnnl_primitive_destroy(rp->cache[i].prim);
        free(rp->cache);
        if (rp->stream) dnnl_stream_destroy(rp->stream);
    }
    free(r->parts);
    if (r->eng) dnnl_engine_destroy(r->eng);
    free(r);
}

/* Part rp's primitive for M rows by W, made on first use. */
static dnnl_primitive_t primitive(dnnl_engine_t eng, runner_part *rp, int M, const dnnl_weight *W) {
    for (int i = 0; i < rp->n; i++)
        if (rp->cache[i].M == M && rp->cache[i].w == W) return rp->cache[i].prim;
    if (rp->n == rp->cap) {
        int cap = rp->cap ? 2 * rp->cap : 16;
        cached_prim *c = realloc(rp->cache, (size_t)cap * sizeof(*c));
        if (!c) return NULL;
        rp->cache = c;
        rp->cap = cap;
    }
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_status_t s = matmul_pd(eng, M, W->N, W->K, &W->md, &pd);
    if (s == dnnl_success) s = dnnl_primitive_create(&prim, pd);
    if (pd) dnnl_primitive_desc_destroy(pd); /* the primitive keeps what it needs */
    if (s != dnnl_success) return NULL;
    rp->cache[rp->n++] = (cached_prim){M, W, prim};
    return prim;
}

/* The rows of a GEMM split among the pool's pieces, each running oneDNN
 * on one thread (OpenMP team of 1): oneDNN's own OpenMP threads would spin
 * after every matmul (libgomp's default wait policy, fixed when the
 * library loads) on the cores our pool needs next. */
typedef struct {
    dnnl_runner *r;
    float *out;
    const float *A;
    const dnnl_weight *W;
    const float *bias;
    int M;
    uint16_t *scratch;
    /* set by any piece that fails (a shape oneDNN refuses), several at
     * once: an atomic store (a plain one from two pieces is a data race);
     * read plainly once thread_pool_run has returned, which orders every
     * piece before it */
    int failed;
} run_job;

static void run_failed(run_job *j) { __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED); }

static void run_part(void *arg, int part, int parts) {
    run_job *j = arg;
    int N = j->W->N, K = j->W->K;
    /* rows in blocks of 16, spread evenly */
    int blocks = (j->M + 15) / 16;
    int b0 = (int)((long)blocks * part / parts), b1 = (int)((long)blocks * (part + 1) / parts);
    int m0 = b0 * 16, m1 = b1 * 16 < j->M ? b1 * 16 : j->M;
    if (m0 >= m1) return;
    int M = m1 - m0;
    runner_part *rp = &j->r->parts[part];
    omp_set_num_threads(1);
    uint16_t *a = j->scratch + (size_t)m0 * K;
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = to_bf16(j->A[(size_t)m0 * K + i]);
    dnnl_primitive_t prim = primitive(j->r->eng, rp, M, j->W);
    dnnl_memory_desc_t src_md, bias_md, dst_md;
    dnnl_dims_t sd = {M, K}, bd = {1, N}, dd = {M, N};
    dnnl_memory_t src = NULL, bm = NULL, dst = NULL, wm = NULL;
    if (!prim || dnnl_memory_desc_init_by_tag(&src_md, 2, sd, dnnl_bf16, dnnl_ab) ||
        dnnl_memory_desc_init_by_tag(&bias_md, 2, bd, dnnl_f32, dnnl_ab) ||
        dnnl_memory_desc_init_by_tag(&dst_md, 2, dd, dnnl_f32, dnnl_ab) ||
        dnnl_memory_create(&src, &src_md, j->r->eng, a) ||
        dnnl_memory_create(&bm, &bias_md, j->r->eng, (void *)j->bias) ||
        dnnl_memory_create(&dst, &dst_md, j->r->eng, j->out + (size_t)m0 * N) ||
        dnnl_memory_create(&wm, &j->W->md, j->r->eng, j->W->data)) {
        run_failed(j);
        goto cleanup;
    }
    dnnl_exec_arg_t args[4] = {
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, dst}};
    if (dnnl_primitive_execute(prim, rp->stream, 4, args) || dnnl_stream_wait(rp->stream)) run_failed(j);
cleanup:
    if (src) dnnl_memory_destroy(src);
    if (bm) dnnl_memory_destroy(bm);
    if (dst) dnnl_memory_destroy(dst);
    if (wm) dnnl_memory_destroy(wm);
}

int dnnl_gemm_run(dnnl_runner *r, thread_pool *pool, float *out, const float *A, const dnnl_weight *W,
                  const float *bias, int M, uint16_t *scratch, char *err, size_t errlen) {
    float *zero_bias = NULL;
    if (!bias) {
        zero_bias = calloc((size_t)W->N, sizeof(float));
        if (!zero_bias) {
            snprintf(err, errlen, "out of memory");
            return ENGINE_ERR_MEMORY;
        }
        bias = zero_bias;
    }
    run_job j = {.r = r, .out = out, .A = A, .W = W, .bias = bias, .M = M, .scratch = scratch, .failed = 0};
    int parts = thread_pool_threads(pool);
    thread_pool_run(pool, run_part, &j, parts < r->nparts ? parts : r->nparts);
    free(zero_bias);
    if (j.failed) {
        snprintf(err, errlen, "oneDNN: no bf16 matmul of %d rows by a %dx%d weight in its layout", M, W->N,
                 W->K);
        return -1;
    }
    return 0;
}

#endif
