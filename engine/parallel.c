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
#include <stdlib.h>
#include <time.h>

void openblas_set_num_threads(int num_threads);

#define SPIN_NS 200000    /* 0.2 ms: longer than any gap inside a forward pass */
#define STOP_PARTS 0xffff /* a job word with this piece count tells the workers to exit */

typedef struct {
    thread_pool *pool;
    int part;
} worker_arg;

struct thread_pool {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    int threads;      /* pieces per job, the caller included */
    int started;      /* worker threads running (part numbers 1..started) */
    pthread_t *tids;  /* (threads - 1) */
    worker_arg *args; /* (threads - 1) */
    /* The current job's number and its piece count in one atomic word,
     * (number << 16) | parts, so that a worker reads both at once: a worker
     * outside the job (part >= parts) may lag behind while the next job is
     * being written, and must never read the other fields. */
    uint64_t job_word;  /* written under mu, read with atomics */
    int pending;        /* workers still busy with the current job; atomic */
    parallel_fn job_fn; /* the job: written before job_word, stable until pending is 0 */
    void *job_ctx;
};

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
    thread_pool *p = ((worker_arg *)arg)->pool;
    int part = ((worker_arg *)arg)->part;
    uint64_t seen = 0;
    for (;;) {
        unsigned turn = 0;
        uint64_t start = 0;
        while (__atomic_load_n(&p->job_word, __ATOMIC_ACQUIRE) == seen && keep_polling(&turn, &start)) {}
        if (__atomic_load_n(&p->job_word, __ATOMIC_ACQUIRE) == seen) { /* the budget ran out: sleep */
            pthread_mutex_lock(&p->mu);
            while (__atomic_load_n(&p->job_word, __ATOMIC_ACQUIRE) == seen)
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        seen = __atomic_load_n(&p->job_word, __ATOMIC_ACQUIRE);
        int parts = (int)(seen & 0xffff);
        if (parts == STOP_PARTS) return NULL;
        if (part >= parts) continue;
        /* job_fn and job_ctx stay as they are until this piece is done: the
         * caller waits until pending is 0. */
        p->job_fn(p->job_ctx, part, parts);
        if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&p->mu); /* the caller may be between its check and its wait */
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

/* Publishes the next job word (parts pieces) and wakes the sleepers. mu held. */
static void publish(thread_pool *p, uint64_t parts) {
    /* release: a worker that sees the new word sees the job */
    uint64_t next = ((p->job_word >> 16) + 1) << 16 | parts;
    __atomic_store_n(&p->job_word, next, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->wake);
}

thread_pool *thread_pool_new(int threads) {
    if (threads < 1) threads = 1;
    if (threads > 256) threads = 256;
    openblas_set_num_threads(1);
    thread_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->tids = calloc((size_t)threads, sizeof(pthread_t));
    p->args = calloc((size_t)threads, sizeof(worker_arg));
    if (!p->tids || !p->args) {
        thread_pool_free(p);
        return NULL;
    }
    while (p->started < threads - 1) {
        worker_arg *a = &p->args[p->started];
        a->pool = p;
        a->part = p->started + 1;
        if (pthread_create(&p->tids[p->started], NULL, worker, a) != 0)
            break; /* run with fewer threads rather than fail */
        p->started++;
    }
    p->threads = p->started + 1;
    return p;
}

void thread_pool_free(thread_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    publish(p, STOP_PARTS);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++) pthread_join(p->tids[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->tids);
    free(p->args);
    free(p);
}

int thread_pool_threads(const thread_pool *p) { return p ? p->threads : 1; }

void thread_pool_run(thread_pool *p, parallel_fn fn, void *ctx, int max_parts) {
    int parts = p && p->threads < max_parts ? p->threads : max_parts;
    if (!p || parts <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->job_fn = fn;
    p->job_ctx = ctx;
    __atomic_store_n(&p->pending, parts - 1, __ATOMIC_RELAXED);
    publish(p, (uint64_t)parts);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, parts);
    unsigned turn = 0;
    uint64_t start = 0;
    while (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0 && keep_polling(&turn, &start)) {}
    if (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0) { /* the budget ran out: sleep */
        pthread_mutex_lock(&p->mu);
        while (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
