/* test_batcher.c: server/batcher.c on the tiny comrope_ld_b2 fixture:
 * every accepted job is answered exactly once; a batch's logits equal the
 * engine's; a job past its deadline gets 504 and is never computed;
 * requests of different resolutions share a batch (and are counted as a
 * mixed batch); a full queue refuses with 503; a drain waits for requests
 * still being received; batcher_stop finishes the running batch, answers
 * the queued jobs 503 and refuses new ones while the batcher stays usable;
 * an encoded image whose preparation finds no memory is answered 500; the
 * workers' workspaces together must fit in memory. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "batcher.h"
#include "metrics.h"
#include "vit.h"
#include "check_run.h"

#define MODEL_DIR FIXTURE_DIR "/parity/comrope_ld_b2"

static vit_model *model;
static metrics *mxs;       /* the metrics, */
static metrics_series *mx; /* and the model's series the batcher counts in */

/* Completion bookkeeping shared by the jobs of a test. */
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static int done_calls;

/* A malloc of exactly this many bytes fails (0: none fails), for an
 * allocation refused in one chosen place (-Wl,--wrap=malloc). */
static size_t fail_malloc_size;
void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n) {
    size_t fail = __atomic_load_n(&fail_malloc_size, __ATOMIC_RELAXED);
    if (fail && n == fail) return NULL;
    return __real_malloc(n);
}

static int gate_calls, gate_open, gone_answer; /* gate_gone, below */
static int released;                           /* a blocking job's `done` returns once set */

typedef struct {
    job j;
    proto_request req;
    int calls; /* how many times `done` ran for it */
    int seq;   /* done_calls once its `done` ran: the order of answers */
    int block; /* `done` waits for `released`: its worker stays busy */
} test_job;

static void on_done(job *j, void *arg) {
    test_job *t = arg;
    (void)j;
    pthread_mutex_lock(&done_lock);
    t->calls++;
    done_calls++;
    t->seq = done_calls;
    pthread_cond_broadcast(&done_cond);
    while (t->block && !released) pthread_cond_wait(&done_cond, &done_lock);
    pthread_mutex_unlock(&done_lock);
}

static void release_blocked(void) {
    pthread_mutex_lock(&done_lock);
    released = 1;
    pthread_cond_broadcast(&done_cond);
    pthread_mutex_unlock(&done_lock);
}

/* Waits (at most 60 s) until `n` completions have been seen in total. */
static void wait_done(int n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 60;
    pthread_mutex_lock(&done_lock);
    while (done_calls < n)
        if (pthread_cond_timedwait(&done_cond, &done_lock, &ts)) break;
    int seen = done_calls;
    pthread_mutex_unlock(&done_lock);
    ck_assert_int_ge(seen, n);
}

/* A job of n images of h x w deterministic pixels, due in timeout_ms. */
static test_job *make_job(int n, int h, int w, int timeout_ms) {
    test_job *t = calloc(1, sizeof(*t));
    int C = model->cfg.num_channels;
    t->req.api = PROTO_V2;
    t->req.num_images = n;
    t->req.images = calloc((size_t)n, sizeof(proto_image));
    for (int i = 0; i < n; i++) {
        proto_image *im = &t->req.images[i];
        im->h = h;
        im->w = w;
        im->pixels = malloc(sizeof(float) * (size_t)C * h * w);
        for (int k = 0; k < C * h * w; k++) im->pixels[k] = (float)((k * 37 + i * 11) % 101) / 50.0f - 1.0f;
    }
    t->j.req = &t->req;
    t->j.deadline_ns = monotonic_ns() + (int64_t)timeout_ms * 1000000;
    t->j.done = on_done;
    t->j.done_arg = t;
    return t;
}

static void free_job(test_job *t) {
    proto_request_free(&t->req);
    free(t->j.logits);
    free(t);
}

/* The tests' batcher settings: one worker, batches of one image, 4096
 * tokens a batch (room for every batch these tests form, and a workspace,
 * reserved up front, of a modest size), no delay, a queue of 64, no
 * per-request or time limits. Each test changes what it is about. */
static batcher_params test_params(void) {
    return (batcher_params){
        .workers = 1,
        .max_batch_size = 1,
        .max_batch_tokens = 4096,
        .max_queue_delay_us = 0,
        .max_queue_size = 64,
        .limits = image_limits_default(),
        .max_request_images = 0,
        .max_request_tokens = 0,
        .pixel_budget_bytes = 0,
        .engine = vit_context_default_params(),
        .max_queue_wait_ms = 0,
    };
}

static batcher *start_batcher(batcher_params p) {
    char err[256];
    batcher *b = batcher_new(model, mx, p, NULL, err, sizeof(err));
    ck_assert_msg(b != NULL, "%s", err);
    return b;
}

static batcher *new_batcher(int workers, int batch, int delay_us, int queue) {
    batcher_params p = test_params();
    p.workers = workers;
    p.max_batch_size = batch;
    p.max_queue_delay_us = delay_us;
    p.max_queue_size = queue;
    return start_batcher(p);
}

static double sample(const char *series) {
    metrics_gauges g = {0, 0, 0, 1, 0};
    size_t len, n = strlen(series);
    char *text = metrics_render(mxs, &g, &len);
    double v = -1;
    for (char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ') v = strtod(p + n + 1, NULL);
    free(text);
    return v;
}

/* Polls (bounded: 60 s) until the batcher has `running` jobs computing and
 * `queued` waiting. */
static void wait_state(batcher *b, int running, int queued) {
    for (int i = 0; i < 60000; i++) {
        int q = batcher_queue_depth(b), f = batcher_in_flight(b);
        if (q == queued && f - q == running) return;
        usleep(1000);
    }
    ck_abort_msg("batcher never reached %d running, %d queued", running, queued);
}

static void setup(void) {
    char err[512];
    ck_assert_msg(vit_load(MODEL_DIR, NULL, &model, err, sizeof(err)) == 0, "%s", err);
    mxs = metrics_new();
    ck_assert_ptr_nonnull(mxs);
    mx = metrics_series_open(mxs, "comrope_ld_b2", "1", "comrope-ld", model->cfg.image_size);
    ck_assert_ptr_nonnull(mx);
    done_calls = 0;
    released = 0;
    gate_calls = gate_open = gone_answer = 0;
}

static void teardown(void) {
    metrics_free(mxs);
    vit_free(model);
}

START_TEST(computes_and_answers_once) {
    batcher *b = new_batcher(2, 8, 0, 64);
    int sizes[][2] = {{16, 16}, {8, 16}, {16, 8}, {12, 12}, {4, 4}, {32, 32}};
    test_job *jobs[6];
    for (int i = 0; i < 6; i++) {
        jobs[i] = make_job(1 + i % 2, sizes[i][0], sizes[i][1], 60000);
        ck_assert_int_eq(batcher_submit(b, &jobs[i]->j), 0);
    }
    wait_done(6);
    /* the engine's own answer for job 3 */
    vit_context *ctx = NULL;
    char err[256];
    ck_assert_int_eq(vit_context_new(model, NULL, &ctx, err, sizeof(err)), 0);
    int K = model->cfg.num_class;
    float *expect = malloc(sizeof(float) * 2 * K);
    vit_image im[2];
    for (int k = 0; k < 2; k++) im[k] = (vit_image){12, 12, jobs[3]->req.images[k].pixels};
    ck_assert_int_eq(vit_forward_ragged(ctx, im, 2, expect, err, sizeof(err)), 0);
    for (int k = 0; k < 2 * K; k++) ck_assert_float_eq_tol(jobs[3]->j.logits[k], expect[k], 1e-5);
    batcher_free(b);
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(jobs[i]->calls, 1);
        ck_assert_int_eq(jobs[i]->j.status, 200);
        ck_assert_ptr_nonnull(jobs[i]->j.logits);
        free_job(jobs[i]);
    }
    free(expect);
    vit_context_free(ctx);
}
END_TEST

START_TEST(expired_job_is_not_computed) {
    batcher *b = new_batcher(1, 8, 0, 64);
    test_job *t = make_job(1, 16, 16, 0);
    t->j.deadline_ns = monotonic_ns() - 1;
    ck_assert_int_eq(batcher_submit(b, &t->j), 0);
    wait_done(1);
    ck_assert_int_eq(t->j.status, 504);
    ck_assert_ptr_nonnull(strstr(t->j.error, "deadline"));
    ck_assert_ptr_null(t->j.logits);
    ck_assert_double_eq(sample("comrope_batches_total"), 0);
    batcher_free(b);
    ck_assert_int_eq(t->calls, 1);
    free_job(t);
}
END_TEST

START_TEST(mixed_resolutions_share_a_batch) {
    /* While a request is being received, a worker with room waits (up to
     * the delay, here far longer than the test) for it: both jobs below
     * join one batch, run when the arrival ends. */
    batcher *b = new_batcher(1, 8, 30 * 1000 * 1000, 64);
    batcher_arrival_begin(b);
    test_job *a = make_job(1, 8, 16, 60000), *c = make_job(2, 16, 8, 60000);
    ck_assert_int_eq(batcher_submit(b, &a->j), 0);
    ck_assert_int_eq(batcher_submit(b, &c->j), 0);
    batcher_arrival_end(b);
    wait_done(2);
    ck_assert_int_eq(a->j.status, 200);
    ck_assert_int_eq(c->j.status, 200);
    ck_assert_double_eq(sample("comrope_batches_total"), 1);
    ck_assert_double_eq(sample("comrope_batch_images_sum{model=\"comrope_ld_b2\",version=\"1\"}"), 3);
    ck_assert_double_eq(sample("comrope_batches_mixed_resolution_total"), 1);
    batcher_free(b);
    free_job(a);
    free_job(c);
}
END_TEST

static void *stop_thread(void *b) {
    batcher_stop(b);
    return NULL;
}

START_TEST(queue_full_then_stop) {
    /* One worker, one job per batch, a queue of one. `busy`'s completion
     * blocks until released, which keeps the only worker busy for as long
     * as the test needs: every state below is reached on purpose. */
    batcher *b = new_batcher(1, 1, 0, 1);
    test_job *busy = make_job(1, 16, 16, 600000), *queued = make_job(1, 16, 16, 600000);
    test_job *refused = make_job(1, 16, 16, 600000), *late = make_job(1, 16, 16, 600000);
    busy->block = 1;
    ck_assert_int_eq(batcher_submit(b, &busy->j), 0);
    wait_state(b, 1, 0);
    ck_assert_int_eq(batcher_submit(b, &queued->j), 0);
    ck_assert_int_eq(batcher_queue_depth(b), 1);
    ck_assert_int_eq(batcher_submit(b, &refused->j), 503);
    ck_assert_ptr_nonnull(strstr(refused->j.error, "queue is full"));
    ck_assert_ptr_nonnull(strstr(refused->j.error, "max-queue-size")); /* README: refusals name the setting */
    /* stop while `busy` runs (batcher_stop waits for it: another thread);
     * once new jobs are refused as "shutting down", let `busy` finish. */
    pthread_t stopper;
    ck_assert_int_eq(pthread_create(&stopper, NULL, stop_thread, b), 0);
    for (int i = 0; i < 60000; i++) {
        ck_assert_int_eq(batcher_submit(b, &late->j), 503);
        if (strstr(late->j.error, "shutting down")) break;
        usleep(1000);
    }
    ck_assert_ptr_nonnull(strstr(late->j.error, "shutting down"));
    release_blocked();
    pthread_join(stopper, NULL);
    ck_assert_int_eq(busy->calls, 1);
    ck_assert_int_eq(busy->j.status, 200);
    ck_assert_int_eq(queued->calls, 1);
    ck_assert_int_eq(queued->j.status, 503);
    ck_assert_int_eq(batcher_queue_depth(b), 0);
    /* stopped but still valid: refuses, and a second stop is harmless */
    ck_assert_int_eq(batcher_submit(b, &late->j), 503);
    batcher_stop(b);
    batcher_free(b);
    ck_assert_int_eq(refused->calls, 0);
    ck_assert_int_eq(late->calls, 0);
    free_job(busy);
    free_job(queued);
    free_job(refused);
    free_job(late);
}
END_TEST

START_TEST(drain_waits_for_arrivals) {
    batcher *b = new_batcher(1, 8, 0, 64);
    batcher_arrival_begin(b);
    int64_t t0 = monotonic_ns();
    ck_assert_int_eq(batcher_drain(b, monotonic_ns() + 1000000000),
                     0); /* times out: a body is still arriving */
    ck_assert_int_ge(monotonic_ns() - t0, 900 * 1000000LL);
    /* the request that was arriving is accepted during the drain */
    test_job *t = make_job(1, 16, 16, 60000);
    ck_assert_int_eq(batcher_submit(b, &t->j), 0);
    batcher_arrival_end(b);
    ck_assert_int_eq(batcher_drain(b, monotonic_ns() + 60 * (int64_t)1000000000), 0);
    ck_assert_int_eq(t->calls, 1);
    ck_assert_int_eq(t->j.status, 200);
    batcher_free(b);
    free_job(t);
}
END_TEST

/* A `gone` hook that reports "still here" but holds the worker at the start
 * of each engine batch until the test opens the gate: the test decides
 * what happens between two batches of one job. */

static int gate_gone(void *arg) {
    (void)arg;
    pthread_mutex_lock(&done_lock);
    gate_calls++;
    pthread_cond_broadcast(&done_cond);
    while (!gate_open) pthread_cond_wait(&done_cond, &done_lock);
    pthread_mutex_unlock(&done_lock);
    return gone_answer;
}

static void wait_gate_calls(int n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 60;
    pthread_mutex_lock(&done_lock);
    while (gate_calls < n)
        if (pthread_cond_timedwait(&done_cond, &done_lock, &ts)) break;
    int seen = gate_calls;
    pthread_mutex_unlock(&done_lock);
    ck_assert_int_ge(seen, n);
}

static void open_gate(void) {
    pthread_mutex_lock(&done_lock);
    gate_open = 1;
    pthread_cond_broadcast(&done_cond);
    pthread_mutex_unlock(&done_lock);
}

static batcher *new_batcher_limits(int batch, int batch_tokens, int req_images, int64_t req_tokens,
                                   int64_t budget) {
    batcher_params p = test_params();
    p.max_batch_size = batch;
    p.max_batch_tokens = batch_tokens;
    p.max_request_images = req_images;
    p.max_request_tokens = req_tokens;
    p.pixel_budget_bytes = budget;
    return start_batcher(p);
}

/* A job larger than an engine batch is split over several, by images and
 * by tokens, and its logits are each image's own. */
START_TEST(large_job_split_into_engine_batches) {
    int T16 = vit_tokens(model, 16, 16);
    batcher *b = new_batcher_limits(2, 4096, 0, 0, 0);
    test_job *t = make_job(5, 16, 16, 60000);
    ck_assert_int_eq(batcher_submit(b, &t->j), 0);
    wait_done(1);
    ck_assert_int_eq(t->j.status, 200);
    ck_assert_double_eq(sample("comrope_batches_total"), 3); /* 2 + 2 + 1 */
    ck_assert_double_eq(sample("comrope_batch_images_sum{model=\"comrope_ld_b2\",version=\"1\"}"), 5);
    int K = model->cfg.num_class;
    vit_context *ctx = NULL;
    char err[256];
    ck_assert_int_eq(vit_context_new(model, NULL, &ctx, err, sizeof(err)), 0);
    float *expect = malloc(sizeof(float) * K);
    for (int i = 0; i < 5; i++) {
        vit_image im = {16, 16, t->req.images[i].pixels};
        ck_assert_int_eq(vit_forward_ragged(ctx, &im, 1, expect, err, sizeof(err)), 0);
        for (int k = 0; k < K; k++) ck_assert_float_eq_tol(t->j.logits[i * K + k], expect[k], 1e-5);
    }
    batcher_free(b);
    free_job(t);
    /* by tokens: room for two 16x16 images per batch */
    b = new_batcher_limits(64, 2 * T16 + 1, 0, 0, 0);
    t = make_job(5, 16, 16, 60000);
    ck_assert_int_eq(batcher_submit(b, &t->j), 0);
    wait_done(2);
    ck_assert_int_eq(t->j.status, 200);
    ck_assert_double_eq(sample("comrope_batches_total"), 6);
    ck_assert_double_eq(sample("comrope_batch_tokens_sum{model=\"comrope_ld_b2\",version=\"1\"}"),
                        10 * T16); /* both runs */
    batcher_free(b);
    free_job(t);
    vit_context_free(ctx);
    free(expect);
}
END_TEST

/* Jobs that fit whole in a batch take every other batch from a split job
 * queued before them, instead of waiting for all of its batches; jobs that
 * are split themselves keep their order. One worker, batches of 2 images:
 * A (4 images) holds the worker in its first batch while B (4), S (1) and
 * S2 (2) queue. Then: S beside A's rest (S2 does not fit beside S), A,
 * B's first half, S2, B. */
START_TEST(small_jobs_between_split_batches) {
    batcher *b = new_batcher_limits(2, 4096, 0, 0, 0);
    test_job *a = make_job(4, 16, 16, 600000), *bb = make_job(4, 16, 16, 600000);
    test_job *s = make_job(1, 16, 16, 600000), *s2 = make_job(2, 16, 16, 600000);
    a->j.gone = gate_gone;
    ck_assert_int_eq(batcher_submit(b, &a->j), 0);
    wait_gate_calls(1);
    ck_assert_int_eq(batcher_submit(b, &bb->j), 0);
    ck_assert_int_eq(batcher_submit(b, &s->j), 0);
    ck_assert_int_eq(batcher_submit(b, &s2->j), 0);
    open_gate();
    wait_done(4);
    ck_assert_int_eq(a->j.status, 200);
    ck_assert_int_eq(bb->j.status, 200);
    ck_assert_int_eq(s->j.status, 200);
    ck_assert_int_eq(s2->j.status, 200);
    ck_assert_msg(s->seq == 1 && a->seq == 2 && s2->seq == 3 && bb->seq == 4,
                  "answered in the order S %d, A %d, S2 %d, B %d; expected 1, 2, 3, 4", s->seq, a->seq,
                  s2->seq, bb->seq);
    ck_assert_double_eq(sample("comrope_batches_total"), 6);
    batcher_free(b);
    free_job(a);
    free_job(bb);
    free_job(s);
    free_job(s2);
}
END_TEST

/* Per-request limits refuse with 413 naming the setting and the value;
 * nothing is computed. */
START_TEST(request_limits_413) {
    int T16 = vit_tokens(model, 16, 16);
    batcher *b = new_batcher_limits(8, 2 * T16, 3, 3 * T16, 0);
    test_job *t = make_job(4, 16, 16, 60000);
    ck_assert_int_eq(batcher_submit(b, &t->j), 413);
    ck_assert_msg(strstr(t->j.error, "4 images, more than max-request-images (3)"), "%s", t->j.error);
    free_job(t);
    t = make_job(1, 32, 32, 60000); /* one image past a whole engine batch */
    ck_assert_int_eq(batcher_submit(b, &t->j), 413);
    ck_assert_msg(strstr(t->j.error, "images[0]: 32x32 needs") && strstr(t->j.error, "max-batch-tokens"),
                  "%s", t->j.error);
    free_job(t);
    batcher_free(b);
    b = new_batcher_limits(8, 4096, 0, 3 * T16, 0);
    t = make_job(4, 16, 16, 60000);
    ck_assert_int_eq(batcher_submit(b, &t->j), 413);
    char want[128];
    snprintf(want, sizeof(want), "needs %d tokens, more than max-request-tokens (%d)", 4 * T16, 3 * T16);
    ck_assert_msg(strstr(t->j.error, want), "%s", t->j.error);
    ck_assert_ptr_null(t->j.logits);
    free_job(t);
    batcher_free(b);
    ck_assert_double_eq(sample("comrope_batches_total"), 0);
}
END_TEST

/* The budget of decoded pixels: a request that does not fit next to those
 * held gets 503 (and fits once they are answered); one larger than the
 * whole budget gets 413. */
START_TEST(pixel_budget) {
    test_job *busy = make_job(1, 16, 16, 600000), *next = make_job(1, 16, 16, 600000);
    test_job *huge = make_job(3, 16, 16, 600000);
    int64_t one = (int64_t)sizeof(float) * model->cfg.num_channels * 16 * 16;
    busy->j.pixel_bytes = next->j.pixel_bytes = one;
    huge->j.pixel_bytes = 3 * one;
    batcher *b = new_batcher_limits(8, 4096, 0, 0, 2 * one - 1);
    busy->block = 1;
    ck_assert_int_eq(batcher_submit(b, &busy->j), 0);
    ck_assert_int_eq(batcher_pixel_bytes(b), one);
    ck_assert_int_eq(batcher_submit(b, &next->j), 503);
    ck_assert_msg(strstr(next->j.error, "pixel-budget-bytes"), "%s", next->j.error);
    ck_assert_int_eq(batcher_submit(b, &huge->j), 413);
    ck_assert_msg(strstr(huge->j.error, "more than pixel-budget-bytes"), "%s", huge->j.error);
    release_blocked();
    wait_done(1);
    for (int i = 0; i < 60000 && batcher_pixel_bytes(b) != 0; i++) usleep(1000);
    ck_assert_int_eq(batcher_pixel_bytes(b), 0);
    ck_assert_int_eq(batcher_submit(b, &next->j), 0);
    wait_done(2);
    ck_assert_int_eq(next->j.status, 200);
    batcher_free(b);
    free_job(busy);
    free_job(next);
    free_job(huge);
}
END_TEST

/* A deadline that passes while a split job runs stops it before its next
 * engine batch: 504, the rest never computed. */
START_TEST(deadline_between_engine_batches) {
    batcher *b = new_batcher_limits(1, 4096, 0, 0, 0);
    test_job *t = make_job(4, 16, 16, 60000);
    t->j.gone = gate_gone;
    t->j.deadline_ns = monotonic_ns() + 200 * 1000000LL;
    ck_assert_int_eq(batcher_submit(b, &t->j), 0);
    wait_gate_calls(1); /* the first batch is formed, before its compute */
    while (monotonic_ns() <= t->j.deadline_ns) usleep(1000);
    open_gate();
    wait_done(1);
    ck_assert_int_eq(t->j.status, 504);
    ck_assert_msg(strstr(t->j.error, "after 1 of its 4 images"), "%s", t->j.error);
    ck_assert_double_eq(sample("comrope_batches_total"), 1);
    ck_assert_ptr_null(t->j.logits);
    batcher_free(b);
    free_job(t);
}
END_TEST

/* A job whose client went away is answered 499 and not computed. */
START_TEST(gone_client_not_computed) {
    batcher *b = new_batcher_limits(8, 4096, 0, 0, 0);
    test_job *t = make_job(2, 16, 16, 60000);
    t->j.gone = gate_gone;
    gone_answer = 1;
    open_gate();
    ck_assert_int_eq(batcher_submit(b, &t->j), 0);
    wait_done(1);
    ck_assert_int_eq(t->j.status, 499);
    ck_assert_double_eq(sample("comrope_batches_total"), 0);
    batcher_free(b);
    free_job(t);
}
END_TEST

/* batcher_stop during a split job: the running engine batch finishes, the
 * rest is answered 503, so a drain's end bounds shutdown. */
START_TEST(stop_between_engine_batches) {
    /* a queue of one, filled by `filler` behind the running job: `late`
     * is refused as "queue is full" until the stop begins (never queued) */
    batcher_params p = test_params();
    p.max_queue_size = 1;
    batcher *b = start_batcher(p);
    test_job *t = make_job(4, 16, 16, 600000), *late = make_job(1, 16, 16, 600000);
    test_job *filler = make_job(1, 16, 16, 600000);
    t->j.gone = gate_gone;
    ck_assert_int_eq(batcher_submit(b, &t->j), 0);
    wait_gate_calls(1);
    ck_assert_int_eq(batcher_submit(b, &filler->j), 0);
    ck_assert_int_eq(batcher_submit(b, &late->j), 503);
    pthread_t stopper;
    ck_assert_int_eq(pthread_create(&stopper, NULL, stop_thread, b), 0);
    for (int i = 0; i < 60000; i++) {
        if (batcher_submit(b, &late->j) == 503 && strstr(late->j.error, "shutting down")) break;
        usleep(1000);
    }
    ck_assert_ptr_nonnull(strstr(late->j.error, "shutting down"));
    open_gate();
    pthread_join(stopper, NULL);
    ck_assert_int_eq(t->calls, 1);
    ck_assert_int_eq(t->j.status, 503);
    ck_assert_int_eq(filler->j.status, 503);
    ck_assert_double_eq(sample("comrope_batches_total"), 1);
    batcher_free(b);
    ck_assert_int_eq(late->calls, 0);
    free_job(t);
    free_job(late);
    free_job(filler);
}
END_TEST

/* A standing queue is refused: once the oldest waiting job has waited
 * past max-queue-wait-ms, new jobs get 503 naming it (however short the
 * queue); once it has been served, they are accepted again. */
START_TEST(standing_queue_refused) {
    batcher_params p = test_params();
    p.max_queue_wait_ms = 50;
    batcher *b = start_batcher(p);
    test_job *busy = make_job(1, 16, 16, 600000), *waiting = make_job(1, 16, 16, 600000);
    test_job *next = make_job(1, 16, 16, 600000);
    busy->block = 1;
    ck_assert_int_eq(batcher_submit(b, &busy->j), 0);
    wait_state(b, 1, 0);
    /* busy's `done` has been called (it blocks there): its finished_ns is
     * written, and read below only after that (ThreadSanitizer saw the
     * read race the worker's write when it ran right after wait_state) */
    wait_done(1);
    ck_assert_int_eq(batcher_submit(b, &waiting->j), 0);
    /* the state under test is an age: past 50 ms, and past two of the
     * batches run so far (busy's; the batcher averages them) */
    int64_t age = 60 * 1000000LL, two_batches = 2 * (busy->j.finished_ns - busy->j.started_ns);
    if (age < two_batches) age = two_batches + 1000000;
    while (monotonic_ns() - waiting->j.enqueued_ns <= age) usleep(5000);
    ck_assert_int_eq(batcher_submit(b, &next->j), 503);
    ck_assert_msg(strstr(next->j.error, "more than max-queue-wait-ms (50)"), "%s", next->j.error);
    ck_assert_ptr_null(next->j.logits);
    release_blocked();
    wait_done(2);
    ck_assert_int_eq(waiting->j.status, 200);
    ck_assert_int_eq(batcher_submit(b, &next->j), 0);
    wait_done(3);
    ck_assert_int_eq(next->j.status, 200);
    batcher_free(b);
    free_job(busy);
    free_job(waiting);
    free_job(next);
}
END_TEST

/* A 40 x 30 PNG resized to the model's 16 x 16, the resize's output (16 x
 * 16 x 3 bytes) refused: the server ran out of memory, 500, not a corrupt
 * image's 400. */
/* Makes t's image 0 the fixture photo.png (40 x 30), encoded. */
static void encode_photo(test_job *t) {
    char path[1024];
    snprintf(path, sizeof path, "%s/images/photo.png", FIXTURE_DIR);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    uint8_t *png = malloc(1 << 16);
    size_t len = fread(png, 1, 1 << 16, f);
    fclose(f);
    ck_assert_uint_gt(len, 0);
    proto_image *im = &t->req.images[0];
    free(im->pixels);
    im->pixels = NULL;
    im->encoded = png;
    im->encoded_len = len;
}

START_TEST(prepare_out_of_memory_500) {
    batcher *b = new_batcher(1, 1, 0, 64);
    test_job *t = make_job(1, 16, 16, 60000);
    encode_photo(t);
    ck_assert_int_eq(model->cfg.image_size, 16);
    __atomic_store_n(&fail_malloc_size, (size_t)16 * 16 * model->cfg.num_channels, __ATOMIC_RELAXED);
    ck_assert_int_eq(batcher_submit(b, &t->j), 0);
    wait_done(1);
    __atomic_store_n(&fail_malloc_size, 0, __ATOMIC_RELAXED);
    batcher_free(b);
    ck_assert_int_eq(t->calls, 1);
    ck_assert_msg(t->j.status == 500, "status %d: %s", t->j.status, t->j.error);
    ck_assert_msg(strstr(t->j.error, "out of memory"), "message: %s", t->j.error);
    free_job(t);
}
END_TEST

/* Logits that are not finite: from raw pixels the client sent (finite but
 * huge), 400; from an encoded image, whose pixels the preprocessor bounds,
 * the model's weights overflowed: 500 saying so (before, 400 blaming pixel
 * values the client never chose). The last bias set to infinity stands
 * for weights that overflow. */
START_TEST(non_finite_logits_of_encoded_image_500) {
    float *bias = model->w.head2_b ? model->w.head2_b : model->w.head_b;
    bias[0] = INFINITY;
    batcher *b = new_batcher(1, 1, 0, 64);
    test_job *png = make_job(1, 16, 16, 60000), *raw = make_job(1, 16, 16, 60000);
    encode_photo(png);
    ck_assert_int_eq(batcher_submit(b, &png->j), 0);
    ck_assert_int_eq(batcher_submit(b, &raw->j), 0);
    wait_done(2);
    batcher_free(b);
    ck_assert_msg(png->j.status == 500, "status %d: %s", png->j.status, png->j.error);
    ck_assert_msg(strstr(png->j.error, "images[0]: its logits are not finite") &&
                      strstr(png->j.error, "a fault of the model"),
                  "message: %s", png->j.error);
    ck_assert_msg(raw->j.status == 400, "status %d: %s", raw->j.status, raw->j.error);
    ck_assert_msg(strstr(raw->j.error, "pixel values too large"), "message: %s", raw->j.error);
    free_job(png);
    free_job(raw);
}
END_TEST

/* Each worker's workspace fitting in memory is not enough: the workers'
 * together must. A bound (memory_bytes) of two workspaces starts two
 * workers and refuses four as a bad setting (BATCHER_WORKSPACE_TOO_LARGE),
 * naming the workers and each one's share; before, four started, each
 * checked alone. */
START_TEST(workers_workspaces_together_fit) {
    batcher_params p = test_params();
    vit_context_params cp = p.engine;
    cp.max_images = p.max_batch_size;
    cp.max_tokens = p.max_batch_tokens;
    vit_context *ctx = NULL;
    char err[512];
    ck_assert_msg(vit_context_new(model, &cp, &ctx, err, sizeof(err)) == 0, "%s", err);
    size_t bytes = vit_context_bytes(ctx); /* its arena and its rotation tables */
    vit_context_free(ctx);
    p.engine.memory_bytes = 2 * bytes;
    p.workers = 4;
    batcher_failure why = BATCHER_FAILED;
    batcher *b = batcher_new(model, mx, p, &why, err, sizeof(err));
    ck_assert_msg(b == NULL, "4 workspaces started where 2 fit");
    ck_assert_int_eq(why, BATCHER_WORKSPACE_TOO_LARGE);
    ck_assert_msg(strstr(err, "4 workers, each with a workspace of its own: ") &&
                      strstr(err, "its 1/4 share"),
                  "message: %s", err);
    p.workers = 2;
    b = batcher_new(model, mx, p, &why, err, sizeof(err));
    ck_assert_msg(b != NULL, "%s", err);
    batcher_free(b);
}
END_TEST

/* A grid's rotation table refused memory in the forward (its positions,
 * 2 doubles a token): the forward says ENGINE_ERR_MEMORY (not -1, a bad
 * input), and the next at that grid runs (the cache slot kept the grid
 * without its table, and the next forward read it: SIGSEGV); through the
 * batcher the answer is a 500 naming memory. */
START_TEST(forward_out_of_memory_500) {
    int side = model->cfg.image_size, p = model->cfg.patch_size, C = model->cfg.num_channels;
    size_t positions = sizeof(double) * 2 * (size_t)(1 + (side / p) * (side / p));
    vit_context *ctx = NULL;
    char err[256] = "";
    ck_assert_msg(vit_context_new(model, NULL, &ctx, err, sizeof(err)) == 0, "%s", err);
    float *pixels = calloc((size_t)C * side * side, sizeof(float)), logits[64];
    ck_assert_int_le(model->cfg.num_class, 64);
    vit_image im = {.h = side, .w = side, .pixels = pixels};
    __atomic_store_n(&fail_malloc_size, positions, __ATOMIC_RELAXED);
    int rc = vit_forward_ragged(ctx, &im, 1, logits, err, sizeof(err));
    __atomic_store_n(&fail_malloc_size, 0, __ATOMIC_RELAXED);
    ck_assert_msg(rc == ENGINE_ERR_MEMORY, "rc %d: %s", rc, err);
    ck_assert_msg(strstr(err, "out of memory for its rotation table"), "message: %s", err);
    ck_assert_int_eq(vit_forward_ragged(ctx, &im, 1, logits, err, sizeof(err)), 0);
    vit_context_free(ctx);
    free(pixels);

    batcher *b = new_batcher(1, 1, 0, 64);
    test_job *t = make_job(1, side, side, 60000);
    __atomic_store_n(&fail_malloc_size, positions, __ATOMIC_RELAXED);
    ck_assert_int_eq(batcher_submit(b, &t->j), 0);
    wait_done(1);
    __atomic_store_n(&fail_malloc_size, 0, __ATOMIC_RELAXED);
    batcher_free(b);
    ck_assert_msg(t->j.status == 500, "status %d: %s", t->j.status, t->j.error);
    ck_assert_msg(strstr(t->j.error, "out of memory for its rotation table"), "message: %s", t->j.error);
    free_job(t);
}
END_TEST

int main(void) {
    Suite *s = suite_create("batcher");
    TCase *tc = tcase_create("batcher");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, computes_and_answers_once);
    tcase_add_test(tc, expired_job_is_not_computed);
    tcase_add_test(tc, mixed_resolutions_share_a_batch);
    tcase_add_test(tc, queue_full_then_stop);
    tcase_add_test(tc, drain_waits_for_arrivals);
    tcase_add_test(tc, large_job_split_into_engine_batches);
    tcase_add_test(tc, small_jobs_between_split_batches);
    tcase_add_test(tc, request_limits_413);
    tcase_add_test(tc, pixel_budget);
    tcase_add_test(tc, deadline_between_engine_batches);
    tcase_add_test(tc, gone_client_not_computed);
    tcase_add_test(tc, stop_between_engine_batches);
    tcase_add_test(tc, standing_queue_refused);
    tcase_add_test(tc, prepare_out_of_memory_500);
    tcase_add_test(tc, non_finite_logits_of_encoded_image_500);
    tcase_add_test(tc, forward_out_of_memory_500);
    tcase_add_test(tc, workers_workspaces_together_fit);
    suite_add_tcase(s, tc);
    return check_run(s);
}
