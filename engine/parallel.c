/* parallel.c: a small sleeping thread pool (see parallel.h). */
#include "parallel.h"

#include <pthread.h>
#include <stdint.h>

void openblas_set_num_threads(int num_threads);

static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
static int threads = 1;        /* pieces per job, the caller included */
static int started;            /* worker threads running (part numbers 1..started) */
static uint64_t generation;    /* bumped for every job */
static int pending;            /* workers still busy with the current job */
static parallel_fn job_fn;
static void *job_ctx;
static int job_parts;

static void *worker(void *arg) {
    int part = (int)(intptr_t)arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (generation == seen) pthread_cond_wait(&wake, &mu);
        seen = generation;
        parallel_fn fn = job_fn;
        void *ctx = job_ctx;
        int parts = job_parts;
        pthread_mutex_unlock(&mu);
        if (part < parts) fn(ctx, part, parts);
        pthread_mutex_lock(&mu);
        if (part < parts && --pending == 0) pthread_cond_signal(&done);
    }
    return NULL;
}

void parallel_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > 256) n = 256;
    openblas_set_num_threads(1);
    pthread_mutex_lock(&job_lock);
    pthread_mutex_lock(&mu);
    while (started < n - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, worker, (void *)(intptr_t)(started + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) break; /* run with fewer threads rather than fail */
        started++;
    }
    threads = started + 1 < n ? started + 1 : n;
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&job_lock);
}

int parallel_threads(void) {
    pthread_mutex_lock(&mu);
    int n = threads;
    pthread_mutex_unlock(&mu);
    return n;
}

void parallel_run(parallel_fn fn, void *ctx, int max_parts) {
    if (max_parts <= 1 || parallel_threads() <= 1) { /* no pool: no lock either, so that
                                                         single-threaded callers run side by side */
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&job_lock);
    pthread_mutex_lock(&mu);
    int parts = threads < max_parts ? threads : max_parts;
    if (parts < 1) parts = 1;
    if (parts > 1) {
        job_fn = fn;
        job_ctx = ctx;
        job_parts = parts;
        pending = parts - 1;
        generation++;
        pthread_cond_broadcast(&wake);
    }
    pthread_mutex_unlock(&mu);
    fn(ctx, 0, parts);
    pthread_mutex_lock(&mu);
    while (pending > 0) pthread_cond_wait(&done, &mu);
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&job_lock);
}
