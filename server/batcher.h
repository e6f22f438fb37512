/* batcher.h: the bounded queue between HTTP threads and inference workers.
 *
 * Owns: the queue of jobs, the worker threads (each with its own engine
 * context: vit_context, made from `engine`), the forming of batches (up to max-batch-size images and
 * max-batch-tokens tokens, images of any resolutions together: the engine
 * runs ragged batches), deadlines (a job whose deadline passed gets 504 and
 * is never computed; a reaper thread answers those that expire while every
 * worker is busy), and draining on shutdown.
 *
 * A job's `done` callback runs exactly once, on a batcher thread, for every
 * job batcher_submit accepted: with status 200 and logits, or with an error
 * status and message. The job belongs to the submitter throughout; the
 * batcher only links it into its queue. */
#ifndef COMROPE_BATCHER_H
#define COMROPE_BATCHER_H

#include <stdint.h>

#include "image.h"
#include "metrics.h"
#include "proto.h"
#include "vit.h"

typedef struct job job;
typedef void (*job_done_fn)(job *j, void *arg);

struct job {
    proto_request *req;        /* images with h, w resolved (not owned) */
    int tokens;                /* all images together, for max-batch-tokens */
    int64_t deadline_ns;       /* CLOCK_MONOTONIC */
    job_done_fn done;
    void *done_arg;
    /* filled by the batcher before `done` */
    int status;                /* 200, or 400/413/415/500/503/504 */
    char error[512];
    float *logits;             /* (num_images, num_class), malloc'd; the submitter frees */
    int64_t enqueued_ns, started_ns, finished_ns;
    job *next;                 /* queue link (batcher's) */
};

typedef struct batcher batcher;

typedef struct {
    int workers;
    int max_batch_size;
    int max_batch_tokens;
    int max_queue_delay_us;
    int max_queue_size;
    image_limits limits;
    vit_context_params engine; /* each worker's context (max_images / max_tokens: the batch limits) */
} batcher_params;

/* Starts the workers and the reaper. Returns NULL with a message. */
batcher *batcher_new(const vit_model *m, metrics *mx, batcher_params p, char *err, size_t errlen);

/* Queues j. Returns 0, or 503 when the queue is full or the batcher is
 * stopped (j->error says which; `done` is then NOT called). While draining
 * jobs are still accepted: they come from requests that were being
 * received when the drain began (the HTTP side refuses new ones). */
int batcher_submit(batcher *b, job *j);

/* A request is being received that may soon be submitted: while some are,
 * a worker with room in its batch waits (up to max-queue-delay-us) for them.
 * Every begin needs one end. */
void batcher_arrival_begin(batcher *b);
void batcher_arrival_end(batcher *b);

/* Waits up to timeout_s for the requests being received to be submitted,
 * and for the queue and the running batches to finish. Returns the number
 * of jobs still queued. */
int batcher_drain(batcher *b, int timeout_s);

/* Stops the threads (a running batch finishes first); jobs still queued
 * get 503, and batcher_submit refuses from now on. The batcher stays valid
 * (the HTTP side may still call it) until batcher_free. Idempotent. */
void batcher_stop(batcher *b);

/* batcher_stop, then frees. */
void batcher_free(batcher *b);

int batcher_queue_depth(batcher *b);
int batcher_in_flight(batcher *b);
/* Requests between batcher_arrival_begin and _end (bodies being received). */
int batcher_arriving(batcher *b);

int64_t monotonic_ns(void);

#endif
