/* parallel.h: the engine's thread pool.
 *
 * Owns: a few worker threads that run one job at a time, split into `parts`
 * pieces; the caller's thread does piece 0. Between jobs a worker polls for
 * 0.2 ms, then sleeps on a condition variable (why: parallel.c). GEMMs
 * split their columns and attention its heads over it. Because our pool
 * owns the cores, OpenBLAS (used inside a piece for attention's products on
 * CPUs without AVX2, and by the tests) is kept single-threaded: two pools
 * that busy-wait against each other on 2 cores lose a third of the time. */
#ifndef COMROPE_PARALLEL_H
#define COMROPE_PARALLEL_H

/* Pieces of one job (1: everything runs on the caller). Also sets OpenBLAS
 * to one thread. Safe to call at any time; jobs from several threads at
 * once are serialized. */
void parallel_set_threads(int n);
int parallel_threads(void);

/* Runs fn(ctx, part, parts) for part = 0 .. parts-1, part 0 on the caller,
 * and returns when all are done. parts = min(parallel_threads(), max_parts). */
typedef void (*parallel_fn)(void *ctx, int part, int parts);
void parallel_run(parallel_fn fn, void *ctx, int max_parts);

#endif
