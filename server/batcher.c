/* batcher.c: queue, workers, batches, deadlines. See batcher.h. */
#include "batcher.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "input.h"

typedef struct {
    batcher *b;
    pthread_t thread;
    vit_context *ctx;
    int started;
} worker;

struct batcher {
    const vit_model *model;
    metrics *mx;
    batcher_params p;
    pthread_mutex_t lock;
    pthread_cond_t work;     /* a job was queued, or stopping */
    pthread_cond_t reaper_wake;
    pthread_cond_t idle;     /* queue empty and nothing running */
    job *head, *tail;
    int queued, running, arriving;
    int stopping;            /* workers told to exit */
    int stopped;             /* threads joined (batcher_stop ran) */
    worker *workers;
    pthread_t reaper;
    int reaper_started;
};

int64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timespec to_timespec(int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    return ts;
}

static void cond_init_monotonic(pthread_cond_t *c) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
}

/* Unlinks j (whose predecessor is prev, NULL at the head). Lock held. */
static void unlink_job(batcher *b, job *prev, job *j) {
    if (prev) prev->next = j->next;
    else b->head = j->next;
    if (b->tail == j) b->tail = prev;
    j->next = NULL;
    b->queued--;
}

/* Moves every queued job whose deadline passed onto *expired. Lock held. */
static void take_expired(batcher *b, int64_t now, job **expired) {
    job *prev = NULL, *j = b->head;
    while (j) {
        job *next = j->next;
        if (j->deadline_ns <= now) {
            unlink_job(b, prev, j);
            j->next = *expired;
            *expired = j;
        } else {
            prev = j;
        }
        j = next;
    }
}

static void finish(job *j, int status, const char *msg) {
    j->status = status;
    if (msg) snprintf(j->error, sizeof(j->error), "%s", msg);
    j->finished_ns = monotonic_ns();
    j->done(j, j->done_arg);
}

static void answer_expired(job *list) {
    while (list) {
        job *next = list->next;
        list->next = NULL;
        finish(list, 504, "deadline exceeded before the request could be computed");
        list = next;
    }
}

static void signal_idle_if_done(batcher *b) {
    if (!b->head && b->running == 0 && b->arriving == 0) pthread_cond_broadcast(&b->idle);
}

/* How many distinct (h, w) among n images. */
static int distinct_resolutions(const vit_image *images, int n) {
    int distinct = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int k = 0; k < i && !seen; k++)
            seen = images[k].h == images[i].h && images[k].w == images[i].w;
        if (!seen) distinct++;
    }
    return distinct;
}

/* Maps input_from_encoded's codes to HTTP statuses. */
static int decode_status(int rc) {
    switch (rc) {
    case IMAGE_ERR_FORMAT: return 415;
    case IMAGE_ERR_TOO_LARGE: return 413;
    case IMAGE_ERR_MEMORY: return 500;
    default: return 400;
    }
}

/* Runs n images in as few forwards as the context's limits allow (one
 * for every batch formed within max-batch-size and max-batch-tokens; a
 * single larger request takes several). An image's logits do not depend
 * on which forward it is in. */
static int forward_in_parts(vit_context *ctx, const vit_image *images, int n, float *logits,
                            char *err, size_t errlen) {
    int K = ctx->model->cfg.num_class;
    for (int i0 = 0; i0 < n;) {
        int k = 0;
        long tokens = 0;
        while (i0 + k < n && k < ctx->params.max_images) {
            long t = vit_tokens(ctx->model, images[i0 + k].h, images[i0 + k].w);
            if (k > 0 && tokens + t > ctx->params.max_tokens) break;
            tokens += t;
            k++;
        }
        if (vit_forward_ragged(ctx, images + i0, k, logits + (size_t)i0 * K, err, errlen)) return -1;
        i0 += k;
    }
    return 0;
}

/* Decodes every image of the batch, runs one ragged forward over the jobs
 * whose images all decoded, and answers each job. Runs without the lock. */
static void run_batch(worker *w, job **batch, int n) {
    batcher *b = w->b;
    const vit_model *m = b->model;
    int K = m->cfg.num_class, total = 0;
    int64_t start = monotonic_ns();
    char msg[480];
    for (int i = 0; i < n; i++) {
        batch[i]->started_ns = start;
        total += batch[i]->req->num_images;
        metrics_queue_wait(b->mx, (double)(start - batch[i]->enqueued_ns) / 1e9);
    }
    vit_image *images = calloc((size_t)total, sizeof(vit_image));
    float **decoded = calloc((size_t)total, sizeof(float *));
    int *tokens = calloc((size_t)total, sizeof(int));
    int *failed = calloc((size_t)n, sizeof(int));
    float *logits = malloc(sizeof(float) * (size_t)total * (size_t)K);
    if (!images || !decoded || !tokens || !failed || !logits) {
        for (int i = 0; i < n; i++) finish(batch[i], 500, "out of memory");
        goto cleanup;
    }

    /* Decode: a job with one bad image fails as a whole, the others run. */
    int count = 0;
    for (int i = 0; i < n; i++) {
        proto_request *req = batch[i]->req;
        int first = count;
        for (int k = 0; k < req->num_images; k++) {
            proto_image *im = &req->images[k];
            const float *pixels = im->pixels;
            if (im->encoded) {
                resolution_request res = {0, im->h, im->w};
                int h, w;
                int rc = input_from_encoded(m, im->encoded, im->encoded_len, res, req->fit,
                                            &b->p.limits, &decoded[count], &h, &w, msg, sizeof(msg));
                if (rc) {
                    failed[i] = decode_status(rc);
                    snprintf(batch[i]->error, sizeof(batch[i]->error), "images[%d]: %.480s", k, msg);
                    break;
                }
                pixels = decoded[count];
            }
            images[count].h = im->h;
            images[count].w = im->w;
            images[count].pixels = pixels;
            tokens[count] = vit_tokens(m, im->h, im->w);
            count++;
        }
        if (failed[i]) {
            /* drop this job's images from the batch */
            for (int k = first; k < count; k++) {
                free(decoded[k]);
                decoded[k] = NULL;
            }
            count = first;
        }
    }

    int forward_failed = 0;
    if (count > 0 && forward_in_parts(w->ctx, images, count, logits, msg, sizeof(msg)))
        forward_failed = 1;
    int64_t end = monotonic_ns();
    if (count > 0)
        metrics_batch(b->mx, count, tokens, distinct_resolutions(images, count), (double)(end - start) / 1e9);

    int offset = 0;
    for (int i = 0; i < n; i++) {
        job *j = batch[i];
        if (failed[i]) {
            finish(j, failed[i], NULL);
            continue;
        }
        int ni = j->req->num_images;
        if (forward_failed) {
            finish(j, 500, msg);
        } else {
            j->logits = malloc(sizeof(float) * (size_t)ni * K);
            if (!j->logits) {
                finish(j, 500, "out of memory");
            } else {
                memcpy(j->logits, logits + (size_t)offset * K, sizeof(float) * (size_t)ni * K);
                finish(j, 200, NULL);
            }
        }
        offset += ni;
    }
cleanup:
    for (int k = 0; decoded && k < total; k++) free(decoded[k]);
    free(images);
    free(decoded);
    free(tokens);
    free(failed);
    free(logits);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    batcher *b = w->b;
    job **batch = malloc(sizeof(job *) * (size_t)b->p.max_batch_size);
    if (!batch) return NULL;
    pthread_mutex_lock(&b->lock);
    for (;;) {
        while (!b->head && !b->stopping) pthread_cond_wait(&b->work, &b->lock);
        if (b->stopping) break; /* leftovers are answered 503 by batcher_free */

        int n = 0, images = 0, tokens = 0, full = 0;
        int64_t wait_until = 0;
        job *expired = NULL;
        for (;;) {
            int64_t now = monotonic_ns();
            take_expired(b, now, &expired);
            while (b->head && !full) {
                job *j = b->head;
                int ni = j->req->num_images;
                /* A job is never split; one larger than the limits runs alone. */
                if (n > 0 && (images + ni > b->p.max_batch_size || tokens + j->tokens > b->p.max_batch_tokens)) {
                    full = 1;
                    break;
                }
                unlink_job(b, NULL, j);
                batch[n++] = j;
                images += ni;
                tokens += j->tokens;
                if (images >= b->p.max_batch_size || tokens >= b->p.max_batch_tokens) full = 1;
            }
            /* Wait for company only when someone could join: a request is
             * being received right now. At low load nobody is, and the
             * batch runs at once. */
            if (n == 0 || full || b->stopping || b->p.max_queue_delay_us == 0 || b->arriving == 0) break;
            if (!wait_until) wait_until = now + (int64_t)b->p.max_queue_delay_us * 1000;
            if (now >= wait_until) break;
            struct timespec ts = to_timespec(wait_until);
            pthread_cond_timedwait(&b->work, &b->lock, &ts);
        }
        b->running += n;
        pthread_mutex_unlock(&b->lock);

        answer_expired(expired);
        if (n > 0) run_batch(w, batch, n);

        pthread_mutex_lock(&b->lock);
        b->running -= n;
        signal_idle_if_done(b);
    }
    pthread_mutex_unlock(&b->lock);
    free(batch);
    return NULL;
}

/* Answers queued jobs whose deadline passes while the workers are busy:
 * without it a request could wait far beyond its timeout. */
static void *reaper_main(void *arg) {
    batcher *b = arg;
    pthread_mutex_lock(&b->lock);
    while (!b->stopping) {
        int64_t soonest = 0;
        for (job *j = b->head; j; j = j->next)
            if (!soonest || j->deadline_ns < soonest) soonest = j->deadline_ns;
        if (!soonest) {
            pthread_cond_wait(&b->reaper_wake, &b->lock);
            continue;
        }
        int64_t now = monotonic_ns();
        if (soonest > now) {
            struct timespec ts = to_timespec(soonest);
            pthread_cond_timedwait(&b->reaper_wake, &b->lock, &ts);
            continue;
        }
        job *expired = NULL;
        take_expired(b, now, &expired);
        signal_idle_if_done(b);
        pthread_mutex_unlock(&b->lock);
        answer_expired(expired);
        pthread_mutex_lock(&b->lock);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

batcher *batcher_new(const vit_model *m, metrics *mx, batcher_params p, char *err, size_t errlen) {
    batcher *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    b->model = m;
    b->mx = mx;
    b->p = p;
    pthread_mutex_init(&b->lock, NULL);
    cond_init_monotonic(&b->work);
    cond_init_monotonic(&b->reaper_wake);
    cond_init_monotonic(&b->idle);
    b->workers = calloc((size_t)p.workers, sizeof(worker));
    if (!b->workers) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < p.workers; i++) {
        worker *w = &b->workers[i];
        w->b = b;
        char why[400];
        if (vit_context_new(m, &p.engine, &w->ctx, why, sizeof(why))) {
            snprintf(err, errlen, "worker %d: %s", i, why);
            goto fail;
        }
        if (pthread_create(&w->thread, NULL, worker_main, w)) {
            snprintf(err, errlen, "cannot start worker thread %d", i);
            goto fail;
        }
        w->started = 1;
    }
    if (pthread_create(&b->reaper, NULL, reaper_main, b)) {
        snprintf(err, errlen, "cannot start the deadline thread");
        goto fail;
    }
    b->reaper_started = 1;
    return b;
fail:
    batcher_free(b);
    return NULL;
}

int batcher_submit(batcher *b, job *j) {
    int64_t now = monotonic_ns();
    j->enqueued_ns = now;
    j->next = NULL;
    j->logits = NULL;
    j->status = 0;
    pthread_mutex_lock(&b->lock);
    if (b->stopping) {
        pthread_mutex_unlock(&b->lock);
        snprintf(j->error, sizeof(j->error), "server is shutting down");
        return 503;
    }
    if (b->queued >= b->p.max_queue_size) {
        pthread_mutex_unlock(&b->lock);
        snprintf(j->error, sizeof(j->error), "queue is full (%d requests waiting)", b->p.max_queue_size);
        return 503;
    }
    if (b->tail) b->tail->next = j;
    else b->head = j;
    b->tail = j;
    b->queued++;
    pthread_cond_broadcast(&b->work);
    pthread_cond_signal(&b->reaper_wake);
    pthread_mutex_unlock(&b->lock);
    return 0;
}

void batcher_arrival_begin(batcher *b) {
    pthread_mutex_lock(&b->lock);
    b->arriving++;
    pthread_mutex_unlock(&b->lock);
}

void batcher_arrival_end(batcher *b) {
    pthread_mutex_lock(&b->lock);
    b->arriving--;
    /* A worker waiting for company stops waiting when nobody is coming;
     * a drain waiting for arrivals may be done. */
    if (b->arriving == 0) {
        pthread_cond_broadcast(&b->work);
        signal_idle_if_done(b);
    }
    pthread_mutex_unlock(&b->lock);
}

int batcher_drain(batcher *b, int timeout_s) {
    int64_t deadline = monotonic_ns() + (int64_t)timeout_s * 1000000000;
    pthread_mutex_lock(&b->lock);
    while ((b->head || b->running || b->arriving) && monotonic_ns() < deadline) {
        struct timespec ts = to_timespec(deadline);
        pthread_cond_timedwait(&b->idle, &b->lock, &ts);
    }
    int left = b->queued;
    pthread_mutex_unlock(&b->lock);
    return left;
}

void batcher_stop(batcher *b) {
    if (!b || b->stopped) return;
    pthread_mutex_lock(&b->lock);
    b->stopping = 1;
    pthread_cond_broadcast(&b->work);
    pthread_cond_broadcast(&b->reaper_wake);
    pthread_mutex_unlock(&b->lock);
    for (int i = 0; b->workers && i < b->p.workers; i++)
        if (b->workers[i].started) pthread_join(b->workers[i].thread, NULL);
    if (b->reaper_started) pthread_join(b->reaper, NULL);
    /* Threads are gone: what is left was never started. No job can join
     * the queue any more (batcher_submit sees stopping). */
    pthread_mutex_lock(&b->lock);
    job *left = b->head;
    b->head = b->tail = NULL;
    b->queued = 0;
    b->stopped = 1;
    pthread_mutex_unlock(&b->lock);
    while (left) {
        job *next = left->next;
        left->next = NULL;
        finish(left, 503, "server is shutting down");
        left = next;
    }
}

void batcher_free(batcher *b) {
    if (!b) return;
    batcher_stop(b);
    for (int i = 0; b->workers && i < b->p.workers; i++) vit_context_free(b->workers[i].ctx);
    free(b->workers);
    pthread_cond_destroy(&b->work);
    pthread_cond_destroy(&b->reaper_wake);
    pthread_cond_destroy(&b->idle);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

int batcher_queue_depth(batcher *b) {
    pthread_mutex_lock(&b->lock);
    int n = b->queued;
    pthread_mutex_unlock(&b->lock);
    return n;
}

int batcher_arriving(batcher *b) {
    pthread_mutex_lock(&b->lock);
    int n = b->arriving;
    pthread_mutex_unlock(&b->lock);
    return n;
}

int batcher_in_flight(batcher *b) {
    pthread_mutex_lock(&b->lock);
    int n = b->queued + b->running;
    pthread_mutex_unlock(&b->lock);
    return n;
}
