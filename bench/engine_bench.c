/* engine_bench.c: images/s of the engine alone, no HTTP.
 *
 *   comrope-bench-engine --model DIR [--model DIR2 ...] [--resolution N|HxW] [--batch B]
 *                        [--threads T] [--reps R] [--warmup W] [--precision fp32|bf16|auto] [--gemm-backend auto|own|onednn|amx]
 *                        [--amx-shape 1x3|2x2] [--attention-gemm 0|1]
 *                        [--isa auto|avx512|avx2|scalar] [--workers N]
 *
 * Random normalized pixels, one engine context per model, W warm-up forwards
 * (the arena and rotation tables are built there), then R timed forwards
 * of a batch of B images; prints one JSON line per model with the median,
 * the spread and every timed forward in order ("times_s").
 *
 * Several models (up to MAX_MODELS) take turns forward by forward: in rep
 * r every model runs once, the first being model r mod n (the order
 * rotates, so that no model always runs first or last in a rep). bench/run.py
 * compares the position encodings this way: on a shared VM whose speed
 * drifts by 10-20% over seconds to minutes, forwards run within one rep see
 * much the same spell, where processes a minute apart do not.
 *
 * --workers N (one model) measures concurrency instead: N threads, each
 * with its own context of T threads (as the daemon's workers), run W
 * warm-up forwards, wait for each other, then R forwards each at once;
 * one JSON line gives the images/s of all of them together over the wall
 * time from the common start to the last one's end. bench/concurrency.py
 * compares N x T layouts with it, round by round. */
#include <pthread.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu.h"
#include "gemm.h"
#include "input.h"
#include "vit.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { MAX_MODELS = 8 };

/* One model under test: what it owns (all freed by bench_free). */
typedef struct {
    const char *dir;
    vit_model *m;
    vit_context *ctx;
    int h, w;
    float *pix, *logits;
    vit_image *imgs;
    double *secs; /* the timed forwards, in order */
} bench_model;

static void bench_free(bench_model *b) {
    vit_context_free(b->ctx);
    vit_free(b->m);
    free(b->pix);
    free(b->logits);
    free(b->imgs);
    free(b->secs);
}

/* Loads b->dir and prepares a batch at res_text (NULL: the model's own
 * resolution). 0, or 1 / 2 (load / usage error) with the message printed. */
static int bench_open(bench_model *b, const vit_options *opts, const vit_context_params *cp,
                      const char *res_text, int batch, int reps) {
    char err[1024];
    if (vit_load(b->dir, opts, &b->m, err, sizeof(err))) {
        fprintf(stderr, "comrope-bench-engine: %s\n", err);
        return 1;
    }
    resolution_request req = resolution_default(b->m);
    if (res_text && resolution_parse(res_text, &req, err, sizeof(err))) {
        fprintf(stderr, "comrope-bench-engine: %s\n", err);
        return 2;
    }
    b->h = req.h;
    b->w = req.w;
    if (vit_check_resolution(b->m, b->h, b->w, err, sizeof(err))) {
        fprintf(stderr, "comrope-bench-engine: %s: %s\n", b->dir, err);
        return 2;
    }
    size_t per = (size_t)b->m->cfg.num_channels * b->h * b->w;
    b->pix = malloc(sizeof(float) * per * batch);
    b->logits = malloc(sizeof(float) * (size_t)batch * b->m->cfg.num_class);
    b->imgs = calloc((size_t)batch, sizeof(*b->imgs));
    b->secs = calloc((size_t)reps, sizeof(double));
    if (!b->pix || !b->logits || !b->imgs || !b->secs) {
        fprintf(stderr, "comrope-bench-engine: out of memory for a batch of %d\n", batch);
        return 1;
    }
    unsigned st = 1; /* the same pixels for every model */
    for (size_t i = 0; i < per * batch; i++) {
        st = st * 1103515245u + 12345u;
        b->pix[i] = ((st >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    for (int i = 0; i < batch; i++) b->imgs[i] = (vit_image){b->h, b->w, b->pix + per * i};
    vit_context_params p = *cp;
    p.max_images = batch;
    p.max_tokens = batch * vit_tokens(b->m, b->h, b->w);
    if (vit_context_new(b->m, &p, &b->ctx, err, sizeof(err))) {
        fprintf(stderr, "comrope-bench-engine: %s\n", err);
        return 1;
    }
    return 0;
}

/* --workers: one thread of the concurrency measurement. */
typedef struct {
    bench_model *b;
    vit_context *ctx;
    float *logits;
    int batch, reps, warmup;
    pthread_barrier_t *start;
    double t0, t1; /* its timed forwards' start and end */
    int failed;
} bench_worker;

static void *worker_main(void *arg) {
    bench_worker *w = arg;
    char err[1024];
    for (int r = 0; r < w->warmup && !w->failed; r++)
        w->failed = vit_forward_ragged(w->ctx, w->b->imgs, w->batch, w->logits, err, sizeof(err));
    pthread_barrier_wait(w->start);
    w->t0 = now_s();
    for (int r = 0; r < w->reps && !w->failed; r++)
        w->failed = vit_forward_ragged(w->ctx, w->b->imgs, w->batch, w->logits, err, sizeof(err));
    w->t1 = now_s();
    if (w->failed) fprintf(stderr, "comrope-bench-engine: %s\n", err);
    return NULL;
}

/* N workers, each with its own context like b's, at once (see the top). */
static int run_workers(bench_model *b, const vit_context_params *cp, int workers, int batch, int reps,
                       int warmup) {
    bench_worker *ws = calloc((size_t)workers, sizeof(*ws));
    pthread_t *tids = calloc((size_t)workers, sizeof(*tids));
    pthread_barrier_t start;
    char err[1024];
    int rc = 1, started = 0;
    if (!ws || !tids) goto cleanup;
    pthread_barrier_init(&start, NULL, (unsigned)workers);
    vit_context_params p = *cp;
    p.max_images = batch;
    p.max_tokens = batch * vit_tokens(b->m, b->h, b->w);
    for (int i = 0; i < workers; i++) {
        ws[i] = (bench_worker){.b = b, .batch = batch, .reps = reps, .warmup = warmup, .start = &start};
        ws[i].logits = malloc(sizeof(float) * (size_t)batch * b->m->cfg.num_class);
        if (!ws[i].logits || vit_context_new(b->m, &p, &ws[i].ctx, err, sizeof(err))) {
            fprintf(stderr, "comrope-bench-engine: %s\n", ws[i].logits ? err : "out of memory");
            goto join;
        }
    }
    for (; started < workers; started++)
        if (pthread_create(&tids[started], NULL, worker_main, &ws[started])) {
            /* the started ones wait at a barrier that would never open */
            fprintf(stderr, "comrope-bench-engine: cannot start worker %d\n", started);
            exit(1);
        }
    rc = 0;
join:
    for (int i = 0; i < started; i++) pthread_join(tids[i], NULL);
    if (rc == 0) {
        double t0 = ws[0].t0, t1 = ws[0].t1;
        for (int i = 0; i < workers; i++) {
            if (ws[i].failed) rc = 1;
            if (ws[i].t0 < t0) t0 = ws[i].t0;
            if (ws[i].t1 > t1) t1 = ws[i].t1;
        }
        if (rc == 0)
            printf("{\"model\": \"%s\", \"resolution\": [%d, %d], \"batch\": %d, \"workers\": %d, "
                   "\"threads\": %d, \"isa\": \"%s\", \"reps\": %d, \"wall_s\": %.6f, "
                   "\"images_per_s\": %.3f}\n",
                   b->dir, b->h, b->w, batch, workers, cp->threads, ws[0].ctx->kernels.name, reps, t1 - t0,
                   (double)workers * reps * batch / (t1 - t0));
    }
    pthread_barrier_destroy(&start);
cleanup:
    for (int i = 0; ws && i < workers; i++) {
        vit_context_free(ws[i].ctx);
        free(ws[i].logits);
    }
    free(ws);
    free(tids);
    return rc;
}

int main(int argc, char **argv) {
    bench_model models[MAX_MODELS];
    memset(models, 0, sizeof(models));
    int n = 0, rc = 2;
    const char *res_text = NULL;
    int batch = 1, threads = 2, reps = 5, warmup = 1, workers = 0;
    vit_options opts = vit_default_options();
    vit_context_params cp = vit_context_default_params();
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 == argc) {
            fprintf(stderr, "comrope-bench-engine: %s needs a value\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--model") == 0) {
            if (n == MAX_MODELS) {
                fprintf(stderr, "comrope-bench-engine: at most %d --model\n", MAX_MODELS);
                return 2;
            }
            models[n++].dir = argv[i + 1];
        } else if (strcmp(argv[i], "--resolution") == 0) res_text = argv[i + 1];
        else if (strcmp(argv[i], "--batch") == 0) batch = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--reps") == 0) reps = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--warmup") == 0) warmup = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--workers") == 0) workers = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--isa") == 0) {
            if (cpu_isa_parse(argv[i + 1], &cp.isa)) {
                fprintf(stderr, "comrope-bench-engine: --isa must be auto, avx512, avx2 or scalar\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--gemm-backend") == 0) {
            if (gemm_backend_parse(argv[i + 1], &opts.gemm_backend)) {
                fprintf(stderr, "comrope-bench-engine: --gemm-backend must be auto, own, onednn or amx\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--attention-gemm") == 0) { /* bf16 attention on the bf16 GEMM (vit.h) */
            if (strcmp(argv[i + 1], "0") != 0 && strcmp(argv[i + 1], "1") != 0) {
                fprintf(stderr, "comrope-bench-engine: --attention-gemm must be 0 or 1\n");
                return 2;
            }
            opts.attention_gemm = argv[i + 1][0] == '1';
        } else if (strcmp(argv[i], "--amx-shape") == 0) { /* our AMX kernel's block (gemm.h) */
            if (gemm_amx_shape_parse(argv[i + 1], &opts.amx_shape)) {
                fprintf(stderr, "comrope-bench-engine: --amx-shape must be 1x3 or 2x2\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--precision") == 0) {
            if (precision_parse(argv[i + 1], &opts.precision)) {
                fprintf(stderr, "comrope-bench-engine: --precision must be fp32, bf16 or auto\n");
                return 2;
            }
        } else {
            fprintf(stderr, "comrope-bench-engine: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (n == 0 || batch < 1 || threads < 1 || reps < 1 || warmup < 0 || workers < 0 ||
        (workers > 0 && n > 1)) {
        fprintf(stderr, "usage: comrope-bench-engine --model DIR [--model DIR2 ...] [--resolution N|HxW] "
                        "[--batch B] [--threads T] [--reps R] [--warmup W] [--precision fp32|bf16|auto] "
                        "[--gemm-backend auto|own|onednn|amx] [--amx-shape 1x3|2x2] [--attention-gemm 0|1] "
                        "[--isa auto|avx512|avx2|scalar] [--workers N (one model)]\n");
        return 2;
    }
    char err[1024];
    cp.threads = threads;
    opts.isa = cp.isa;
    for (int k = 0; k < n; k++)
        if ((rc = bench_open(&models[k], &opts, &cp, res_text, batch, reps)) != 0) goto cleanup;
    if (workers > 0) {
        rc = run_workers(&models[0], &cp, workers, batch, reps, warmup);
        goto cleanup;
    }
    rc = 1;
    for (int r = 0; r < warmup + reps; r++)
        for (int j = 0; j < n; j++) {
            bench_model *b = &models[(r + j) % n];
            double t0 = now_s();
            if (vit_forward_ragged(b->ctx, b->imgs, batch, b->logits, err, sizeof(err))) {
                fprintf(stderr, "comrope-bench-engine: %s: %s\n", b->dir, err);
                goto cleanup;
            }
            double dt = now_s() - t0;
            if (r >= warmup) b->secs[r - warmup] = dt;
            fprintf(stderr, "  rep %d/%d: %.3f s%s%s\n", r + 1, warmup + reps, dt, n > 1 ? " " : "",
                    n > 1 ? b->dir : "");
        }
    for (int k = 0; k < n; k++) {
        bench_model *b = &models[k];
        double *sorted = malloc(sizeof(double) * reps);
        if (!sorted) goto cleanup;
        memcpy(sorted, b->secs, sizeof(double) * reps);
        qsort(sorted, (size_t)reps, sizeof(double), cmp_double);
        double med = sorted[reps / 2];
        printf("{\"model\": \"%s\", \"pe\": \"%s\", \"resolution\": [%d, %d], \"batch\": %d, "
               "\"threads\": %d, \"kernel\": \"%s\", \"precision\": \"%s\", \"gemm_backend\": \"%s\", "
               "\"amx_shape\": \"%s\", \"attention_gemm\": %d, \"median_s\": %.6f, "
               "\"min_s\": %.6f, \"max_s\": %.6f, \"images_per_s\": %.3f, \"times_s\": [",
               b->dir, pe_type_name(b->m->cfg.custom_pe_type), b->h, b->w, batch, threads,
               b->ctx->kernels.name, b->m->precision == GEMM_BF16 ? "bf16" : "fp32",
               gemm_backend_name(b->m->backend),
               b->m->backend == GEMM_BACKEND_AMX ? gemm_amx_shape_name(b->m->amx_shape) : "none",
               b->ctx->kernels.attention_gemm, med, sorted[0], sorted[reps - 1], batch / med);
        for (int r = 0; r < reps; r++) printf("%s%.6f", r ? ", " : "", b->secs[r]);
        printf("]}\n");
        free(sorted);
    }
    rc = 0;
cleanup:
    for (int k = 0; k < n; k++) bench_free(&models[k]);
    return rc;
}
