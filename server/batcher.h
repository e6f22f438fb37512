/* batcher.h: the bounded queue between HTTP threads and inference workers.
 *
 * Owns: the queue of jobs, the worker threads (each with its own engine
 * context: vit_context, made from `engine`), the work limits of a request (images, tokens, decoded
 * pixels: checked at submission), the global budget of decoded pixels held
 * by queued and running jobs, the forming of engine batches (up to
 * max-batch-size images and max-batch-tokens tokens, images of any
 * resolutions together: the engine runs ragged batches; a job larger than
 * one batch is split over several, in order, and may share its first and
 * last with other jobs; jobs queued behind it that fit whole in a batch
 * take every other batch from it, so that they wait one of its batches,
 * not all), deadlines (checked whenever a batch is formed: a
 * job whose deadline passed gets 504 and its remaining images are never
 * computed; a reaper thread answers those that expire while every worker
 * is busy), bounding the queue in time when asked (max_queue_wait_ms: a
 * standing queue is refused), dropping the jobs of clients that went away,
 * and draining on shutdown.
 *
 * A job's `done` callback runs exactly once, on a batcher thread, for every
 * job batcher_submit accepted: with status 200 and logits, or with an error
 * status and message. The job belongs to the submitter throughout; the
 * batcher only links it into its queue. */
#ifndef COMROPE_BATCHER_H
#define COMROPE_BATCHER_H

#include <stdint.h>

#include "clock.h"
#include "gate.h"
#include "image.h"
#include "metrics.h"
#include "proto.h"
#include "vit.h"

typedef struct job job;
typedef void (*job_done_fn)(job *j, void *arg);
/* Whether the job's client has gone away (its connection closed): polled by
 * a worker before it computes any of the job's images. Called without the
 * batcher's lock, perhaps from two workers at once. */
typedef int (*job_gone_fn)(void *arg);

struct job {
    proto_request *req;  /* images with h, w resolved (not owned) */
    int64_t deadline_ns; /* CLOCK_MONOTONIC */
    int64_t pixel_bytes; /* decoded pixels it holds or will (C*h*w floats per image) */
    job_done_fn done;
    job_gone_fn gone; /* NULL: never asked */
    void *done_arg;   /* for done and gone */
    /* filled by the batcher before `done` */
    int status; /* 200, or 400/413/415/499/500/503/504 */
    char error[512];
    float *logits; /* (num_images, num_class), malloc'd; the submitter frees */
    int64_t enqueued_ns, started_ns, finished_ns;
    /* the batcher's, under its lock */
    job *next;      /* queue link */
    int in_queue;   /* linked: some images not yet in a batch */
    int next_image; /* images before it are in batches (run or running) */
    int pending;    /* batches running with some of its images */
    int fail;       /* its error status once failed: nothing more is computed */
    int64_t tokens; /* its images' tokens, summed once at submit */
};

typedef struct batcher batcher;

typedef struct {
    int workers;
    int max_batch_size;
    int max_batch_tokens;
    int max_queue_delay_us;
    int max_queue_size;
    image_limits limits;
    int max_request_images;     /* 0: no limit */
    int64_t max_request_tokens; /* 0: no limit */
    int64_t pixel_budget_bytes; /* decoded pixels of queued and running jobs; 0: no limit */
    vit_context_params engine;  /* each worker's context; its max_images / max_tokens are set
                                  to max_batch_size / max_batch_tokens */
    int max_queue_wait_ms;      /* refuse while the oldest waiting job has waited longer (and longer
                                  than two engine batches take); 0: no limit */
} batcher_params;

/* Why batcher_new failed: what cures it. */
typedef enum {
    BATCHER_FAILED = 0, /* anything else err says (an ISA this CPU lacks, ...) */
    BATCHER_NO_MEMORY,  /* the OS refused memory (ENGINE_ERR_MEMORY): waiting may cure it */
    BATCHER_NO_THREAD,  /* the OS refused a thread (pthread_create): waiting may cure it */
    /* max_batch_size / max_batch_tokens ask for a workspace larger than a
     * worker's share of the memory there is (ENGINE_ERR_WORKSPACE): a
     * setting to lower (or workers) */
    BATCHER_WORKSPACE_TOO_LARGE,
} batcher_failure;

/* Starts the workers and the reaper; its batches and queue waits count in
 * mx (its model version's series). Returns NULL with a message, and *why
 * (when not NULL) says which kind of failure it was. */
batcher *batcher_new(const vit_model *m, metrics_series *mx, batcher_params p, batcher_failure *why,
                     char *err, size_t errlen);

/* Every forward of this batcher's workers passes `gate` (gate.h: the CPU
 * budget shared with other models). Before the first submission. */
void batcher_set_gate(batcher *b, forward_gate *gate);

/* Queues j. Returns 0; or 413 when j is over a request limit (images,
 * tokens, an image too large for one engine batch, pixels beyond the whole
 * budget), 503 when the queue or the pixel budget is full, the queue
 * stands (its oldest job waited past max_queue_wait_ms) or the batcher
 * is stopped (j->error says which, naming the setting; `done` is then NOT
 * called), 500 when out of memory. While draining
 * jobs are still accepted: they come from requests that were being
 * received when the drain began (the HTTP side refuses new ones). */
int batcher_submit(batcher *b, job *j);

/* A request is being received that may soon be submitted: while some are,
 * a worker with room in its batch waits (up to max-queue-delay-us) for them.
 * Every begin needs one end. */
void batcher_arrival_begin(batcher *b);
void batcher_arrival_end(batcher *b);

/* Waits until deadline_ns (monotonic_ns, clock.h) at most for the requests
 * being received to be submitted, and for the queue and the running batches
 * to finish. Returns the number of jobs still queued. */
int batcher_drain(batcher *b, int64_t deadline_ns);

/* Stops the threads (a running engine batch finishes first); jobs still
 * queued, whole or in part, get 503, and batcher_submit refuses from now on. The batcher stays valid
 * (the HTTP side may still call it) until batcher_free. Idempotent. */
void batcher_stop(batcher *b);

/* Whether batcher_stop has begun: from then on every submission is
 * refused 503 (so a caller may answer without preparing one). */
int batcher_stopping(batcher *b);

/* batcher_stop, then frees. */
void batcher_free(batcher *b);

/* Jobs none of whose images has started. */
int batcher_queue_depth(batcher *b);
/* Jobs accepted and not yet answered. */
int batcher_in_flight(batcher *b);
/* Bytes of memory its workers' workspaces hold (vit_context_bytes, all
 * workers): what a repository counts for them. Fixed from batcher_new. */
size_t batcher_workspace_bytes(const batcher *b);
/* Bytes of decoded pixels held by those (against pixel_budget_bytes). */
int64_t batcher_pixel_bytes(batcher *b);
/* Requests between batcher_arrival_begin and _end (bodies being received). */
int batcher_arriving(batcher *b);

#endif
