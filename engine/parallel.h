/* parallel.h: a thread pool, owned by one engine context.
 *
 * Owns: threads - 1 worker threads that run one job at a time, split into
 * `parts` pieces; the caller's thread does piece 0. Between jobs a worker
 * polls for 0.2 ms, then sleeps on a condition variable (why: parallel.c).
 * GEMMs split their columns and attention its heads over it.
 *
 * Each engine context (vit.h) has its own pool, so the forwards of two
 * contexts run at once on their own threads: nothing is shared between
 * pools. A pool is driven by one thread at a time (its context's caller).
 * Because the pools own the cores, OpenBLAS (used inside a piece for
 * attention's products on CPUs without AVX2, and for the head) is kept
 * single-threaded: two pools that busy-wait against each other on 2 cores
 * lose a third of the time. */
#ifndef COMROPE_PARALLEL_H
#define COMROPE_PARALLEL_H

typedef struct thread_pool thread_pool;

/* A pool of `threads` pieces per job, the caller included (< 1: 1; no
 * worker thread is started for 1). Fewer when the system refuses threads.
 * Also sets OpenBLAS to one thread. Returns NULL when out of memory. */
thread_pool *thread_pool_new(int threads);

/* Stops and joins the workers. NULL is a no-op. */
void thread_pool_free(thread_pool *pool);

/* Pieces per job, the caller included (1 for a NULL pool). */
int thread_pool_threads(const thread_pool *pool);

/* Runs fn(ctx, part, parts) for part = 0 .. parts-1, part 0 on the caller,
 * and returns when all are done. parts = min(thread_pool_threads(pool),
 * max_parts); a NULL pool runs everything on the caller. */
typedef void (*parallel_fn)(void *ctx, int part, int parts);
void thread_pool_run(thread_pool *pool, parallel_fn fn, void *ctx, int max_parts);

#endif
