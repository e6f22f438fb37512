/* parallel.c: a small thread pool that spins briefly, then sleeps (see parallel.h).
 *
 * Why spin at all: a forward pass hands the pool about a hundred jobs, a few
 * microseconds apart. A worker that goes to sleep on a condition variable
 * after each one has to be woken for the next, and on a virtual machine a
 * sleeping vCPU is halted: waking it costs tens of microseconds, and more
 * when the host has given the core to someone else meanwhile (measured on
 * a 2-vCPU VM: ~40 us per job, and runs of the same forward spread +-20%).
 * So a worker that finishes a job keeps polling for the next one for up to
 * SPIN_NS, and the caller polls for the workers' pieces for as long, before
 * either falls back to the condition variables. Between requests the pool
 * sleeps, so an idle daemon uses no CPU. OpenBLAS is kept to one thread
 * (below), so no other pool spins against this one. */
#include "parallel.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

void openblas_set_num_threads(int num_threads);

#define SPIN_NS 200000 /* 0.2 ms: longer than any gap inside a forward pass */

static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
static int threads = 1;        /* pieces per job, the caller included */
static int started;            /* worker threads running (part numbers 1..started) */
/* The current job's number and its piece count in one atomic word,
 * (number << 16) | parts, so that a worker reads both at once: a worker
 * outside the job (part >= parts) may lag behind while the next job is
 * being written, and must never read the other fields. */
static uint64_t job_word;      /* written under mu, read with atomics */
static int pending;            /* workers still busy with the current job; atomic */
static parallel_fn job_fn;     /* the job: written before job_word, stable until pending is 0 */
static void *job_ctx;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* One turn of a polling loop: pauses, and says whether the SPIN_NS budget
 * that started at the loop's first turn (*start, 0 before it) lasts.
 * The clock costs ~20 ns, so it is read every 64 turns. */
static int keep_polling(unsigned *turn, uint64_t *start) {
    _mm_pause();
    if ((*turn)++ % 64 != 0) return 1;
    uint64_t t = now_ns();
    if (*start == 0) *start = t;
    return t - *start <= SPIN_NS;
}

static void *worker(void *arg) {
    int part = (int)(intptr_t)arg;
    uint64_t seen = 0;
    for (;;) {
        unsigned turn = 0;
        uint64_t start = 0;
        while (__atomic_load_n(&job_word, __ATOMIC_ACQUIRE) == seen && keep_polling(&turn, &start)) {
        }
        if (__atomic_load_n(&job_word, __ATOMIC_ACQUIRE) == seen) { /* the budget ran out: sleep */
            pthread_mutex_lock(&mu);
            while (__atomic_load_n(&job_word, __ATOMIC_ACQUIRE) == seen)
                pthread_cond_wait(&wake, &mu);
            pthread_mutex_unlock(&mu);
        }
        seen = __atomic_load_n(&job_word, __ATOMIC_ACQUIRE);
        int parts = (int)(seen & 0xffff);
        if (part >= parts) continue;
        /* job_fn and job_ctx stay as they are until this piece is done: the
         * caller holds job_lock until pending is 0. */
        job_fn(job_ctx, part, parts);
        if (__atomic_sub_fetch(&pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&mu); /* the caller may be between its check and its wait */
            pthread_cond_signal(&done);
            pthread_mutex_unlock(&mu);
        }
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
    if (parts > 1) {
        job_fn = fn;
        job_ctx = ctx;
        __atomic_store_n(&pending, parts - 1, __ATOMIC_RELAXED);
        /* release: a worker that sees the new word sees the job */
        uint64_t next = ((job_word >> 16) + 1) << 16 | (uint64_t)parts;
        __atomic_store_n(&job_word, next, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&wake);
    }
    pthread_mutex_unlock(&mu);
    fn(ctx, 0, parts);
    unsigned turn = 0;
    uint64_t start = 0;
    while (__atomic_load_n(&pending, __ATOMIC_ACQUIRE) > 0 && keep_polling(&turn, &start)) {
    }
    if (__atomic_load_n(&pending, __ATOMIC_ACQUIRE) > 0) { /* the budget ran out: sleep */
        pthread_mutex_lock(&mu);
        while (__atomic_load_n(&pending, __ATOMIC_ACQUIRE) > 0) pthread_cond_wait(&done, &mu);
        pthread_mutex_unlock(&mu);
    }
    pthread_mutex_unlock(&job_lock);
}
