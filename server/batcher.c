/* batcher.c: queue, workers, batches, deadlines. See batcher.h. */
#include "batcher.h"

#include <math.h>
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

/* Some consecutive images of one job, in an engine batch. */
typedef struct {
    job *j;
    int first, count;
    int fail; /* this part's error status (its message in msg) */
    char msg[480];
} slice;

struct batcher {
    const vit_model *model;
    metrics_series *mx; /* its model version's */
    batcher_params p;
    pthread_mutex_t lock;
    pthread_cond_t work; /* a job was queued, or stopping */
    pthread_cond_t reaper_wake;
    pthread_cond_t idle; /* queue empty and nothing running */
    job *head, *tail;    /* jobs with images not yet in a batch, in order */
    int waiting;         /* jobs none of whose images started */
    int active;          /* jobs started and not answered */
    int running;         /* engine batches being computed */
    int arriving;
    int64_t pixel_bytes; /* held by waiting and active jobs */
    int64_t batch_ns;    /* how long an engine batch takes (moving average) */
    int yield_to_rest;   /* the last batch took part of the head job: the next may serve those behind */
    int stopping;        /* workers told to exit */
    int stopped;         /* threads joined (batcher_stop ran) */
    worker *workers;
    forward_gate *gate; /* NULL: none */
    pthread_t reaper;
    int reaper_started;
};

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
    j->in_queue = 0;
}

static void unlink_anywhere(batcher *b, job *j) {
    job *prev = NULL;
    for (job *k = b->head; k && k != j; k = k->next) prev = k;
    unlink_job(b, prev, j);
}

/* Whether j has nothing left to do: every image computed, or failed with
 * no batch of it still running. If so, pushes it onto *done, answered by
 * the caller with answer() (unlocked). Lock held. */
static void settle(batcher *b, job *j, job **done) {
    if (j->pending > 0) return;
    if (!j->fail && (j->in_queue || j->next_image < j->req->num_images)) return;
    if (j->in_queue) unlink_anywhere(b, j);
    j->next = *done;
    *done = j;
}

/* Fails j with status and msg (the first failure wins): no more of its
 * images are computed. Lock held. */
static void fail_job(batcher *b, job *j, int status, const char *msg, job **done) {
    if (!j->fail) {
        j->fail = status;
        snprintf(j->error, sizeof(j->error), "%s", msg);
        if (j->in_queue) unlink_anywhere(b, j);
    }
    settle(b, j, done);
}

/* Fails every queued job whose deadline passed. Lock held. */
static void take_expired(batcher *b, int64_t now, job **done) {
    job *j = b->head;
    while (j) {
        job *next = j->next;
        if (j->deadline_ns <= now) {
            char msg[160];
            if (j->next_image == 0)
                snprintf(msg, sizeof(msg), "deadline exceeded before the request could be computed");
            else
                snprintf(msg, sizeof(msg), "deadline exceeded after %d of its %d images were computed",
                         j->next_image, j->req->num_images);
            fail_job(b, j, 504, msg, done);
        }
        j = next;
    }
}

/* Answers the jobs of a settled list, then takes them out of the counts
 * and the pixel budget: a job is in flight until answered. Unlocked:
 * `done` may take its time. The job may be gone once `done` returns. */
static void answer(batcher *b, job *list) {
    int started = 0, waiting = 0;
    int64_t bytes = 0;
    while (list) {
        job *j = list;
        list = j->next;
        j->next = NULL;
        if (j->next_image > 0) started++;
        else waiting++;
        bytes += j->pixel_bytes;
        j->status = j->fail ? j->fail : 200;
        if (j->fail) { /* logits only with a 200 */
            free(j->logits);
            j->logits = NULL;
        }
        j->finished_ns = monotonic_ns();
        j->done(j, j->done_arg);
    }
    if (!started && !waiting) return;
    pthread_mutex_lock(&b->lock);
    b->active -= started;
    b->waiting -= waiting;
    b->pixel_bytes -= bytes;
    pthread_mutex_unlock(&b->lock);
}

static void signal_idle_if_done(batcher *b) {
    if (!b->head && b->running == 0 && b->arriving == 0) pthread_cond_broadcast(&b->idle);
}

/* How many distinct (h, w) among n images. */
static int distinct_resolutions(const vit_image *images, int n) {
    int distinct = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int k = 0; k < i && !seen; k++) seen = images[k].h == images[i].h && images[k].w == images[i].w;
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

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* Runs one engine batch: drops the parts of clients that went away,
 * decodes, runs one ragged forward over the parts whose images all
 * decoded, and hands the logits to their jobs. Runs without the lock. */
static void run_batch(worker *w, slice *parts, int n, job **done) {
    batcher *b = w->b;
    const vit_model *m = b->model;
    int K = m->cfg.num_class, total = 0;
    int64_t start = monotonic_ns(), elapsed = 0; /* of the forward, when one ran */
    char msg[480];
    for (int i = 0; i < n; i++) total += parts[i].count;
    vit_image *images = calloc((size_t)total, sizeof(vit_image));
    float **decoded = calloc((size_t)total, sizeof(float *));
    int *tokens = calloc((size_t)total, sizeof(int));
    float *logits = malloc(sizeof(float) * (size_t)total * (size_t)K);
    if (!images || !decoded || !tokens || !logits) {
        for (int i = 0; i < n; i++) {
            parts[i].fail = 500;
            snprintf(parts[i].msg, sizeof(parts[i].msg), "out of memory");
        }
        goto settle;
    }

    /* A client that hung up while its request waited gets nothing computed
     * (MHD does not watch a suspended connection: we ask). Then decode: a
     * job with one bad image fails as a whole, the others run. */
    int count = 0;
    for (int i = 0; i < n; i++) {
        slice *s = &parts[i];
        proto_request *req = s->j->req;
        int first = count;
        if (s->j->gone && s->j->gone(s->j->done_arg)) {
            s->fail = 499;
            snprintf(s->msg, sizeof(s->msg),
                     "the client closed the connection before the request was computed");
            continue;
        }
        for (int k = s->first; k < s->first + s->count; k++) {
            proto_image *im = &req->images[k];
            const float *pixels = im->pixels;
            if (im->encoded) {
                resolution_request res = {0, im->h, im->w};
                int h, wd;
                int rc = input_from_encoded(m, im->encoded, im->encoded_len, res, req->fit, &b->p.limits,
                                            &decoded[count], &h, &wd, msg, sizeof(msg));
                if (rc) {
                    s->fail = decode_status(rc);
                    snprintf(s->msg, sizeof(s->msg), "images[%d]: %.400s", k, msg);
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
        if (s->fail) {
            /* drop this part's images from the batch */
            for (int k = first; k < count; k++) {
                free(decoded[k]);
                decoded[k] = NULL;
            }
            count = first;
        }
    }

    int forward_failed = 0;
    if (count > 0 && b->gate) forward_gate_enter(b->gate, b->p.engine.threads);
    if (count > 0 && vit_forward_ragged(w->ctx, images, count, logits, msg, sizeof(msg))) forward_failed = 1;
    if (count > 0 && b->gate) forward_gate_leave(b->gate, b->p.engine.threads);
    int64_t end = monotonic_ns();
    if (count > 0) elapsed = end - start;
    if (count > 0)
        metrics_batch(b->mx, count, tokens, distinct_resolutions(images, count), (double)(end - start) / 1e9);

    int offset = 0;
    for (int i = 0; i < n; i++) {
        slice *s = &parts[i];
        if (s->fail) continue;
        if (forward_failed) {
            s->fail = 500;
            snprintf(s->msg, sizeof(s->msg), "%s", msg);
            continue;
        }
        for (int k = 0; k < s->count && !s->fail; k++) {
            if (all_finite(logits + (size_t)(offset + k) * K, (size_t)K)) continue;
            /* Raw pixels that are finite but huge overflow inside the model:
             * the client's. An encoded image's pixels are bounded by the
             * preprocessor (image_prep.c checks it at load), so there the
             * overflow is the model's weights: a server fault, 500. */
            if (s->j->req->images[s->first + k].encoded) {
                s->fail = 500;
                snprintf(s->msg, sizeof(s->msg),
                         "images[%d]: its logits are not finite: the model's float32 arithmetic "
                         "overflows on this image's preprocessed pixels (a fault of the model, not "
                         "of the image)",
                         s->first + k);
            } else {
                s->fail = 400;
                snprintf(s->msg, sizeof(s->msg),
                         "images[%d]: its logits are not finite (pixel values "
                         "too large for float32 arithmetic?)",
                         s->first + k);
            }
        }
        if (!s->fail) /* each part owns its rows of the job's logits: no lock needed */
            memcpy(s->j->logits + (size_t)s->first * K, logits + (size_t)offset * K,
                   sizeof(float) * (size_t)s->count * K);
        offset += s->count;
    }
settle:
    pthread_mutex_lock(&b->lock);
    if (elapsed > 0) b->batch_ns += (elapsed - b->batch_ns) / 8;
    for (int i = 0; i < n; i++) {
        slice *s = &parts[i];
        s->j->pending--;
        if (s->fail) fail_job(b, s->j, s->fail, s->msg, done);
        else settle(b, s->j, done);
    }
    pthread_mutex_unlock(&b->lock);
    for (int k = 0; decoded && k < total; k++) free(decoded[k]);
    free(images);
    free(decoded);
    free(tokens);
    free(logits);
}

/* Moves the whole of j (none of its images started) into parts[]. Lock held. */
static void take_whole(batcher *b, job *prev, job *j, slice *parts, int *n, int64_t now) {
    b->waiting--;
    b->active++;
    j->started_ns = now;
    metrics_queue_wait(b->mx, (double)(now - j->enqueued_ns) / 1e9);
    parts[(*n)++] = (slice){j, 0, j->req->num_images, 0, ""};
    j->pending++;
    j->next_image = j->req->num_images;
    unlink_job(b, prev, j);
}

/* The jobs queued behind a split job's rest that fit whole in the batch
 * take every other batch from it, in queue order: they wait one of its
 * batches, not all of them (one legal request of 15 images at 256 x 256,
 * five batches of 1.5 s, held every other client 7.5 s). Jobs that would
 * be split are never taken here, so they keep their order among
 * themselves, and a split job's rest still gets every other batch under a
 * stream of small jobs. Returns 1 when it took any. Lock held. */
static int serve_behind_split(batcher *b, slice *parts, int *n, int *images, int *tokens, int64_t now) {
    job *split = b->head;
    int n0 = *n;
    if (!b->yield_to_rest || !split || split->next_image == 0) return 0;
    b->yield_to_rest = 0;
    for (job *prev = split, *j = split->next; j && *images < b->p.max_batch_size;) {
        job *next = j->next;
        int count = j->req->num_images;
        if (*images + count <= b->p.max_batch_size && *tokens + j->tokens <= b->p.max_batch_tokens) {
            take_whole(b, prev, j, parts, n, now);
            *images += count;
            *tokens += (int)j->tokens;
        } else {
            prev = j;
        }
        j = next;
    }
    return *n > n0;
}

/* Takes images from the queue's head into parts[] while the batch has room:
 * a job larger than the room gives what fits and stays at the head for
 * the next batch (but serve_behind_split). Returns 1 when the batch is
 * full. Lock held. */
static int fill_batch(batcher *b, slice *parts, int *n, int *images, int *tokens, int64_t now) {
    if (serve_behind_split(b, parts, n, images, tokens, now)) return 1;
    while (b->head) {
        job *j = b->head;
        const proto_request *req = j->req;
        int k = j->next_image, first = k;
        while (k < req->num_images) {
            int t = vit_tokens(b->model, req->images[k].h, req->images[k].w);
            /* (batcher_submit refused any image larger than a whole
             * batch; one would still run, alone) */
            if (*images > 0 && (*images + 1 > b->p.max_batch_size || *tokens + t > b->p.max_batch_tokens))
                break;
            (*images)++;
            *tokens += t;
            k++;
        }
        if (k == first) return 1;
        if (first == 0) {
            b->waiting--;
            b->active++;
            j->started_ns = now;
            metrics_queue_wait(b->mx, (double)(now - j->enqueued_ns) / 1e9);
        }
        parts[*n] = (slice){j, first, k - first, 0, ""};
        (*n)++;
        j->pending++;
        j->next_image = k;
        if (k < req->num_images) {
            b->yield_to_rest = 1;
            return 1;
        }
        unlink_job(b, NULL, j);
        if (*images >= b->p.max_batch_size || *tokens >= b->p.max_batch_tokens) return 1;
    }
    return 0;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    batcher *b = w->b;
    slice *parts = malloc(sizeof(slice) * (size_t)b->p.max_batch_size); /* a part has >= 1 image */
    if (!parts) return NULL;
    pthread_mutex_lock(&b->lock);
    for (;;) {
        while (!b->head && !b->stopping) pthread_cond_wait(&b->work, &b->lock);
        if (b->stopping) break; /* leftovers are answered 503 by batcher_stop */

        int n = 0, images = 0, tokens = 0, full = 0;
        int64_t wait_until = 0;
        job *done = NULL;
        for (;;) {
            int64_t now = monotonic_ns();
            /* Deadlines are checked whenever a batch is formed, so a job
             * split over many batches stops at its deadline too. */
            take_expired(b, now, &done);
            if (!full) full = fill_batch(b, parts, &n, &images, &tokens, now);
            /* Wait for company only when someone could join: a request is
             * being received right now. At low load nobody is, and the
             * batch runs at once. */
            if (n == 0 || full || b->stopping || b->p.max_queue_delay_us == 0 || b->arriving == 0) break;
            if (!wait_until) wait_until = now + (int64_t)b->p.max_queue_delay_us * 1000;
            if (now >= wait_until) break;
            struct timespec ts = to_timespec(wait_until);
            pthread_cond_timedwait(&b->work, &b->lock, &ts);
        }
        if (n > 0) b->running++;
        /* another worker may take the rest of a split job at once */
        if (b->head) pthread_cond_signal(&b->work);
        pthread_mutex_unlock(&b->lock);

        answer(b, done);
        done = NULL;
        if (n > 0) run_batch(w, parts, n, &done);
        answer(b, done);

        pthread_mutex_lock(&b->lock);
        if (n > 0) b->running--;
        signal_idle_if_done(b);
    }
    pthread_mutex_unlock(&b->lock);
    free(parts);
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
        answer(b, expired);
        pthread_mutex_lock(&b->lock);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

batcher *batcher_new(const vit_model *m, metrics_series *mx, batcher_params p, batcher_failure *why,
                     char *err, size_t errlen) {
    batcher_failure failure = BATCHER_FAILED; /* each refusal names its kind */
    batcher *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        failure = BATCHER_NO_MEMORY;
        goto fail;
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
        failure = BATCHER_NO_MEMORY;
        goto fail;
    }
    /* Each worker's workspace holds one engine batch at the batch limits,
     * reserved once: the batcher never forms a larger one. */
    vit_context_params engine = p.engine;
    engine.max_images = p.max_batch_size;
    engine.max_tokens = p.max_batch_tokens;
    engine.memory_shares = p.workers; /* vit.h: memory_shares */
    for (int i = 0; i < p.workers; i++) {
        worker *w = &b->workers[i];
        w->b = b;
        char context_err[400];
        int rc = vit_context_new(m, &engine, &w->ctx, context_err, sizeof(context_err));
        if (rc == ENGINE_ERR_WORKSPACE && p.workers > 1)
            snprintf(err, errlen, "%d workers, each with a workspace of its own: %s", p.workers, context_err);
        else if (rc) snprintf(err, errlen, "worker %d: %s", i, context_err);
        if (rc) {
            failure = rc == ENGINE_ERR_MEMORY      ? BATCHER_NO_MEMORY
                      : rc == ENGINE_ERR_WORKSPACE ? BATCHER_WORKSPACE_TOO_LARGE
                                                   : BATCHER_FAILED;
            goto fail;
        }
        /* EAGAIN names the cure: RLIMIT_NPROC or the cgroup's pids.max */
        rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc) {
            snprintf(err, errlen, "cannot start worker thread %d: %s", i, strerror(rc));
            failure = BATCHER_NO_THREAD;
            goto fail;
        }
        w->started = 1;
    }
    int rc = pthread_create(&b->reaper, NULL, reaper_main, b);
    if (rc) {
        snprintf(err, errlen, "cannot start the deadline thread: %s", strerror(rc));
        failure = BATCHER_NO_THREAD;
        goto fail;
    }
    b->reaper_started = 1;
    return b;
fail:
    if (why) *why = failure;
    batcher_free(b);
    return NULL;
}

void batcher_set_gate(batcher *b, forward_gate *gate) { b->gate = gate; }

/* The request limits, which need no lock. Returns 0 or 413 (j->error set). */
static int over_limits(batcher *b, job *j) {
    const proto_request *req = j->req;
    int64_t tokens = 0;
    if (proto_check_num_images((size_t)req->num_images, b->p.max_request_images, j->error, sizeof(j->error)))
        return 413;
    for (int i = 0; i < req->num_images; i++) {
        int h = req->images[i].h, w = req->images[i].w, t = vit_tokens(b->model, h, w);
        if (t > b->p.max_batch_tokens) {
            snprintf(j->error, sizeof(j->error),
                     "images[%d]: %dx%d needs %d tokens, more than one engine "
                     "batch holds (max-batch-tokens %d)",
                     i, h, w, t, b->p.max_batch_tokens);
            return 413;
        }
        tokens += t;
    }
    j->tokens = tokens;
    if (b->p.max_request_tokens && tokens > b->p.max_request_tokens) {
        snprintf(j->error, sizeof(j->error),
                 "the request needs %lld tokens, more than max-request-tokens (%lld)", (long long)tokens,
                 (long long)b->p.max_request_tokens);
        return 413;
    }
    if (b->p.pixel_budget_bytes && j->pixel_bytes > b->p.pixel_budget_bytes) {
        snprintf(j->error, sizeof(j->error),
                 "the request's decoded pixels take %lld bytes, more than "
                 "pixel-budget-bytes (%lld)",
                 (long long)j->pixel_bytes, (long long)b->p.pixel_budget_bytes);
        return 413;
    }
    return 0;
}

/* Whether the queue stands: its oldest job not yet started has waited
 * longer than max-queue-wait-ms, and than two engine batches take (a
 * model whose batch alone takes longer is not refused for that). Work
 * queued behind such a queue adds its latency to every request after it
 * and nothing to the throughput: under overload it is refused at once,
 * and when the load stops the queue holds at most about that much work,
 * so normal latency returns within it. Sets j->error. Lock held. */
static int queue_stands(batcher *b, int64_t now, job *j) {
    if (!b->p.max_queue_wait_ms) return 0;
    const job *oldest = b->head;
    while (oldest && oldest->next_image > 0) oldest = oldest->next; /* a split job's rest is running */
    if (!oldest) return 0;
    int64_t waited = now - oldest->enqueued_ns;
    if (waited <= (int64_t)b->p.max_queue_wait_ms * 1000000 || waited <= 2 * b->batch_ns) return 0;
    snprintf(j->error, sizeof(j->error),
             "busy: the oldest queued request has waited %lld ms, more than "
             "max-queue-wait-ms (%d)",
             (long long)(waited / 1000000), b->p.max_queue_wait_ms);
    return 1;
}

int batcher_submit(batcher *b, job *j) {
    int64_t now = monotonic_ns();
    int st;
    j->enqueued_ns = now;
    j->next = NULL;
    j->logits = NULL;
    j->status = 0;
    j->in_queue = j->next_image = j->pending = j->fail = 0;
    if ((st = over_limits(b, j))) return st;
    j->logits = malloc(sizeof(float) * (size_t)j->req->num_images * (size_t)b->model->cfg.num_class);
    if (!j->logits) {
        snprintf(j->error, sizeof(j->error), "out of memory");
        return 500;
    }
    pthread_mutex_lock(&b->lock);
    st = 503;
    if (b->stopping) {
        snprintf(j->error, sizeof(j->error), "server is shutting down");
        goto refuse;
    }
    if (b->waiting >= b->p.max_queue_size) {
        snprintf(j->error, sizeof(j->error), "queue is full (%d requests waiting, max-queue-size)",
                 b->p.max_queue_size);
        goto refuse;
    }
    if (queue_stands(b, now, j)) goto refuse;
    if (b->p.pixel_budget_bytes && b->pixel_bytes + j->pixel_bytes > b->p.pixel_budget_bytes) {
        snprintf(j->error, sizeof(j->error),
                 "busy: queued and running requests hold %lld bytes of decoded "
                 "pixels, this one needs %lld more (pixel-budget-bytes %lld)",
                 (long long)b->pixel_bytes, (long long)j->pixel_bytes, (long long)b->p.pixel_budget_bytes);
        goto refuse;
    }
    if (b->tail) b->tail->next = j;
    else b->head = j;
    b->tail = j;
    j->in_queue = 1;
    b->waiting++;
    b->pixel_bytes += j->pixel_bytes;
    pthread_cond_broadcast(&b->work);
    pthread_cond_signal(&b->reaper_wake);
    pthread_mutex_unlock(&b->lock);
    return 0;
refuse:
    pthread_mutex_unlock(&b->lock);
    free(j->logits);
    j->logits = NULL;
    return st;
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

int batcher_drain(batcher *b, int64_t deadline) {
    pthread_mutex_lock(&b->lock);
    while ((b->head || b->running || b->arriving) && monotonic_ns() < deadline) {
        struct timespec ts = to_timespec(deadline);
        pthread_cond_timedwait(&b->idle, &b->lock, &ts);
    }
    int left = 0;
    for (job *j = b->head; j; j = j->next) left++;
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
    /* Threads are gone: no batch runs. What is left in the queue, whole or
     * in part, is answered now. No job can join the queue any more
     * (batcher_submit sees stopping). */
    job *done = NULL;
    pthread_mutex_lock(&b->lock);
    while (b->head) fail_job(b, b->head, 503, "server is shutting down", &done);
    b->stopped = 1;
    pthread_mutex_unlock(&b->lock);
    answer(b, done);
}

int batcher_stopping(batcher *b) {
    pthread_mutex_lock(&b->lock);
    int n = b->stopping;
    pthread_mutex_unlock(&b->lock);
    return n;
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
    int n = b->waiting;
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
    int n = b->waiting + b->active;
    pthread_mutex_unlock(&b->lock);
    return n;
}

size_t batcher_workspace_bytes(const batcher *b) {
    size_t bytes = 0;
    for (int i = 0; i < b->p.workers; i++) bytes += vit_context_bytes(b->workers[i].ctx);
    return bytes;
}

int64_t batcher_pixel_bytes(batcher *b) {
    pthread_mutex_lock(&b->lock);
    int64_t n = b->pixel_bytes;
    pthread_mutex_unlock(&b->lock);
    return n;
}
