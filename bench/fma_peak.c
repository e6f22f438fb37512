/* bench/fma_peak.c: this machine's fp32 fused multiply-add peak, measured.
 *
 *   comrope-fma-peak [--threads T] [--ms M]
 *
 * Every thread runs a loop of nothing but independent vector FMAs on
 * registers (12 accumulators: enough to cover the FMA latency of every x86
 * core we know, 4-5 cycles on 2 pipes), with the widest vectors the CPU has
 * (AVX-512, else AVX2 + FMA), all threads at once, for about M ms (default
 * 200) per try, 5 tries. Prints one JSON line: the ISA, each thread's best
 * rate and their sum in GFLOP/s (an FMA counts 2 flops per lane).
 *
 * Why: the performance issue's targets are ratios to other systems, and what
 * a ratio can reach depends on how close those systems already are to the
 * CPU's limit. bench/run.py measures this next to them (same pinning, same
 * thread count) and reports every system's images/s as a share of it. A
 * loop of register-only FMAs is the ceiling no GEMM passes: it has no loads,
 * no stores and no dependencies but the accumulators' own. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* acc = acc * m + c converges (to c / (1 - m)): no overflow, no denormals,
 * whatever the iteration count. The sum of the accumulators is returned so
 * that the compiler cannot drop the loop. (The pragmas unroll the loops over
 * the accumulators so that they live in registers.) */
__attribute__((target("avx2,fma"), noinline)) static float loop_avx2(long iters) {
    __m256 a[12], m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long n = 0; n < iters; n++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    __m256 s = a[0];
#pragma GCC unroll 11
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0];
}

__attribute__((target("avx512f"), noinline)) static float loop_avx512(long iters) {
    __m512 a[12], m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < iters; n++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    __m512 s = a[0];
#pragma GCC unroll 11
    for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

typedef struct {
    int wide;          /* 1: AVX-512, 0: AVX2 */
    long iters;        /* per try */
    int tries;
    pthread_barrier_t *start;
    double best_gflops; /* out */
    float sink;         /* out: keeps the loops' results alive */
} worker_arg;

static void *worker(void *p) {
    worker_arg *w = p;
    int lanes = w->wide ? 16 : 8;
    w->best_gflops = 0;
    for (int t = 0; t < w->tries; t++) {
        pthread_barrier_wait(w->start); /* every thread's try runs at the same time */
        double t0 = now_s();
        w->sink += w->wide ? loop_avx512(w->iters) : loop_avx2(w->iters);
        double dt = now_s() - t0;
        double g = (double)w->iters * 12 * lanes * 2 / dt / 1e9;
        if (g > w->best_gflops) w->best_gflops = g;
    }
    return NULL;
}

int main(int argc, char **argv) {
    int threads = 1, ms = 200;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--ms") == 0) ms = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "comrope-fma-peak: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (threads < 1 || threads > 1024 || ms < 1 || ms > 60000 || argc % 2 == 0) {
        fprintf(stderr, "usage: comrope-fma-peak [--threads T] [--ms M]\n");
        return 2;
    }
    __builtin_cpu_init();
    int wide = __builtin_cpu_supports("avx512f");
    if (!wide && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
        printf("{\"skipped\": \"no AVX2+FMA on this CPU\"}\n");
        return 0;
    }
    /* size a try from a short calibration run on this thread */
    long iters = 1000000;
    double t0 = now_s();
    float sink = wide ? loop_avx512(iters) : loop_avx2(iters);
    double dt = now_s() - t0;
    iters = (long)((double)iters * (ms / 1e3) / (dt > 1e-6 ? dt : 1e-6));
    if (iters < 1000) iters = 1000;

    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    worker_arg *args = calloc((size_t)threads, sizeof(*args));
    pthread_t *tids = calloc((size_t)threads, sizeof(*tids));
    if (!args || !tids) {
        fprintf(stderr, "comrope-fma-peak: out of memory\n");
        return 1;
    }
    for (int i = 0; i < threads; i++) {
        args[i] = (worker_arg){wide, iters, 5, &start, 0, 0};
        if (pthread_create(&tids[i], NULL, worker, &args[i]) != 0) {
            fprintf(stderr, "comrope-fma-peak: cannot start thread %d\n", i);
            return 1;
        }
    }
    double total = 0;
    printf("{\"isa\": \"%s\", \"threads\": %d, \"per_thread_gflops\": [", wide ? "avx512" : "avx2",
           threads);
    for (int i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        sink += args[i].sink;
        total += args[i].best_gflops;
        printf("%s%.1f", i ? ", " : "", args[i].best_gflops);
    }
    /* sink is a finite sum of converging accumulators; printing it keeps it */
    printf("], \"gflops\": %.1f, \"checksum\": %.3g}\n", total, (double)sink);
    pthread_barrier_destroy(&start);
    free(args);
    free(tids);
    return 0;
}
