/* bench/fma_peak.c: this machine's fp32 fused multiply-add peak, measured.
 *
 *   comrope-fma-peak [--threads T] [--ms M] [--op fma|bf16|amx]
 *
 * Every thread runs a loop of nothing but independent vector FMAs on
 * registers (12 accumulators: enough to cover the FMA latency of every x86
 * core we know, 4-5 cycles on 2 pipes), with the widest vectors the CPU has
 * (AVX-512, else AVX2 + FMA), all threads at once, for about M ms (default
 * 200) per try, 5 tries. Prints one JSON line: the ISA, each thread's best
 * rate and their sum in GFLOP/s (an FMA counts 2 flops per lane).
 * --op bf16 runs AVX512-BF16's vdpbf16ps instead (two bf16 products added
 * into each fp32 lane: 4 flops per lane), the ceiling of the engine's bf16
 * GEMM kernel; where the CPU lacks it, it prints {"skipped": ...}.
 * --op amx runs AMX's tdpbf16ps on tiles (4 accumulator tiles of 16 x 16
 * fp32, each step 16 x 16 x 32 bf16 products: 16384 flops), the ceiling of
 * a bf16 GEMM on AMX (oneDNN's, PyTorch's bf16 autocast); where the CPU or
 * the kernel lacks AMX (cpu.h: cpu_has_amx_bf16), it prints
 * {"skipped": "no AMX ..."} and exits 0. 
 *
 * Why: the performance issue's targets are ratios to other systems, and what
 * a ratio can reach depends on how close those systems already are to the
 * CPU's limit. bench/run.py measures this next to them (same pinning, same
 * thread count) and reports every system's images/s as a share of it. A
 * loop of register-only FMAs is the ceiling no GEMM passes: it has no loads,
 * no stores and no dependencies but the accumulators' own. */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* acc = acc * m + c converges (to c / (1 - m)): no overflow, no denormals,
 * whatever the iteration count. m, c and the starting values are read from
 * volatiles: with constants a compiler may prove an accumulator already sits
 * at the fixed point and drop its multiply-adds (clang did, for a[1] = 1),
 * and the count would then be too high. The sum of all lanes is returned so
 * that no accumulator is dead. (The pragmas unroll the loops over the
 * accumulators so that they live in registers.) */
static volatile float mul_v = 0.999f, add_v = 1e-3f, start_v = 0.5f;

__attribute__((target("avx2,fma"), noinline)) static float loop_avx2(long iters) {
    __m256 a[12], m = _mm256_set1_ps(mul_v), c = _mm256_set1_ps(add_v);
    float a0 = start_v;
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps(a0 * (float)(i + 1));
    for (long n = 0; n < iters; n++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    __m256 s = a[0];
#pragma GCC unroll 11
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    float out[8], sum = 0;
    _mm256_storeu_ps(out, s);
    for (int i = 0; i < 8; i++) sum += out[i];
    return sum;
}

__attribute__((target("avx512f"), noinline)) static float loop_avx512(long iters) {
    __m512 a[12], m = _mm512_set1_ps(mul_v), c = _mm512_set1_ps(add_v);
    float a0 = start_v;
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps(a0 * (float)(i + 1));
    for (long n = 0; n < iters; n++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    __m512 s = a[0];
#pragma GCC unroll 11
    for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

/* 24 accumulators of vdpbf16ps: acc += a0*b0 + a1*b1 per fp32 lane (its
 * latency is longer than the FMA's: with 12, Zen 5 reached 1.83x the FMA
 * rate, with 24 2.0x, as 8 x 48 bf16 GEMM kernels have). The
 * inputs (2^-10 and 2^-20, from volatiles) make each addition 2^-29, below
 * half an ulp of the accumulators (0.5 and up): they stay where they start,
 * normal and finite, for any count (the instruction's speed does not depend
 * on its values). */
enum { BF16_ACC = 24 };
static volatile uint32_t bf16_pair_a = 0x3a803a80u, bf16_pair_b = 0x35803580u; /* 2^-10, 2^-20 */

__attribute__((target("avx512f,avx512bf16"), noinline)) static float loop_bf16(long iters) {
    __m512 a[BF16_ACC];
    __m512bh x = (__m512bh)_mm512_set1_epi32((int)bf16_pair_a);
    __m512bh y = (__m512bh)_mm512_set1_epi32((int)bf16_pair_b);
    float a0 = start_v;
#pragma GCC unroll 24
    for (int i = 0; i < BF16_ACC; i++) a[i] = _mm512_set1_ps(a0 * (float)(i + 1));
    for (long n = 0; n < iters; n++)
#pragma GCC unroll 24
        for (int i = 0; i < BF16_ACC; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
    __m512 s = a[0];
#pragma GCC unroll 23
    for (int i = 1; i < BF16_ACC; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

/* The tile configuration ldtilecfg reads (64 bytes, palette 1). */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tilecfg;

static volatile uint16_t amx_a = 0x3a80, amx_b = 0x3580; /* 2^-10, 2^-20 in bf16 */

/* tmm0..3 accumulate, tmm4, 5 (16 rows of 32 bf16) times tmm6, 7: a 2 x 2
 * block, four independent tdpbf16ps per iteration as a GEMM's inner loop
 * has, with no loads in the loop. The tile state is per thread: each
 * thread configures and releases its own. */
__attribute__((target("amx-tile,amx-bf16"), noinline)) static float loop_amx(long iters) {
    amx_tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
    static _Thread_local uint16_t a[16 * 32], b[16 * 32];
    static _Thread_local float c[16 * 16];
    for (int i = 0; i < 16 * 32; i++) {
        a[i] = amx_a;
        b[i] = amx_b;
    }
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a, 64);
    _tile_loadd(6, b, 64);
    _tile_loadd(7, b, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (long i = 0; i < iters; i++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    float s = 0;
    _tile_stored(0, c, 64);
    s += c[0];
    _tile_stored(3, c, 64);
    s += c[255];
    _tile_release();
    return s;
}

enum { TRIES = 5 };
enum { OP_FMA_AVX2, OP_FMA_AVX512, OP_BF16, OP_AMX };

static float run_loop(int op, long iters) {
    if (op == OP_AMX) return loop_amx(iters);
    if (op == OP_BF16) return loop_bf16(iters);
    return op == OP_FMA_AVX512 ? loop_avx512(iters) : loop_avx2(iters);
}

typedef struct {
    int op;                      /* OP_* */
    long iters;                  /* per try */
    pthread_barrier_t *start;    /* all threads start each try together */
    double t0[TRIES], t1[TRIES]; /* out: when each try began and ended */
    float sink;                  /* out: keeps the loops' results alive */
} worker_arg;

static void *worker(void *p) {
    worker_arg *w = p;
    for (int t = 0; t < TRIES; t++) {
        pthread_barrier_wait(w->start);
        w->t0[t] = now_s();
        w->sink += run_loop(w->op, w->iters);
        w->t1[t] = now_s();
    }
    return NULL;
}

/* "--threads 2": 2; anything else (trailing text, out of [lo, hi]): -1 */
static int parse_int(const char *text, int lo, int hi) {
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < lo || v > hi) return -1;
    return (int)v;
}

int main(int argc, char **argv) {
    int threads = 1, ms = 200, bf16 = 0, amx = 0;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) {
            fprintf(stderr, "comrope-fma-peak: %s needs a value\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--threads") == 0) threads = parse_int(argv[i + 1], 1, 1024);
        else if (strcmp(argv[i], "--ms") == 0) ms = parse_int(argv[i + 1], 1, 60000);
        else if (strcmp(argv[i], "--op") == 0 && strcmp(argv[i + 1], "fma") == 0) bf16 = 0;
        else if (strcmp(argv[i], "--op") == 0 && strcmp(argv[i + 1], "bf16") == 0) bf16 = 1;
        else if (strcmp(argv[i], "--op") == 0 && strcmp(argv[i + 1], "amx") == 0) amx = 1;
        else if (strcmp(argv[i], "--op") == 0) {
            fprintf(stderr, "comrope-fma-peak: --op %s: want fma, bf16 or amx\n", argv[i + 1]);
            return 2;
        } else {
            fprintf(stderr, "comrope-fma-peak: unknown option %s\n", argv[i]);
            return 2;
        }
        if (threads < 0 || ms < 0) {
            fprintf(stderr, "comrope-fma-peak: %s %s: want --threads 1..1024, --ms 1..60000\n", argv[i],
                    argv[i + 1]);
            return 2;
        }
    }
    __builtin_cpu_init();
    int wide = __builtin_cpu_supports("avx512f");
    if (bf16 && !(wide && __builtin_cpu_supports("avx512bf16"))) {
        printf("{\"skipped\": \"no AVX512-BF16 on this CPU\"}\n");
        return 0;
    }
    char why[256];
    if (amx && cpu_amx_unavailable(cpu_get_features(), why, sizeof(why))) {
        printf("{\"skipped\": \"%s\"}\n", why);
        return 0;
    }
    if (!wide && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
        printf("{\"skipped\": \"no AVX2+FMA on this CPU\"}\n");
        return 0;
    }
    int op = amx ? OP_AMX : bf16 ? OP_BF16 : wide ? OP_FMA_AVX512 : OP_FMA_AVX2;
    /* size a try from a short calibration run on this thread */
    long iters = 1000000;
    double t0 = now_s();
    float sink = run_loop(op, iters);
    double dt = now_s() - t0;
    iters = (long)((double)iters * (ms / 1e3) / (dt > 1e-6 ? dt : 1e-6));
    if (iters < 1000) iters = 1000;

    int rc = 1, started = 0;
    pthread_barrier_t start;
    worker_arg *args = calloc((size_t)threads, sizeof(*args));
    pthread_t *tids = calloc((size_t)threads, sizeof(*tids));
    if (!args || !tids) {
        fprintf(stderr, "comrope-fma-peak: out of memory\n");
        goto cleanup;
    }
    if (pthread_barrier_init(&start, NULL, (unsigned)threads) != 0) {
        fprintf(stderr, "comrope-fma-peak: cannot make a barrier for %d threads\n", threads);
        goto cleanup;
    }
    for (; started < threads; started++) {
        args[started] = (worker_arg){.op = op, .iters = iters, .start = &start};
        if (pthread_create(&tids[started], NULL, worker, &args[started]) != 0) {
            /* the others would wait at the barrier for ever */
            fprintf(stderr, "comrope-fma-peak: cannot start thread %d\n", started);
            exit(1);
        }
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        sink += args[i].sink;
    }
    pthread_barrier_destroy(&start);

    /* A try's rate is all its flops over the time from its first thread's
     * start to its last thread's end: a thread that ran while another was
     * descheduled does not count as running beside it. The best try wins. */
    /* per iteration: 12 FMAs of 16 or 8 lanes x 2 flops; 24 vdpbf16ps of 16
     * lanes x 4; 4 tdpbf16ps of 16 x 16 x 32 products x 2 */
    double per_iter = op == OP_AMX          ? 4 * 16 * 16 * 32 * 2
                      : op == OP_BF16       ? BF16_ACC * 64
                      : op == OP_FMA_AVX512 ? 12 * 32
                                            : 12 * 16;
    double per_thread_flops = (double)iters * per_iter, best = 0;
    int best_try = 0;
    for (int t = 0; t < TRIES; t++) {
        double lo = args[0].t0[t], hi = args[0].t1[t];
        for (int i = 1; i < threads; i++) {
            if (args[i].t0[t] < lo) lo = args[i].t0[t];
            if (args[i].t1[t] > hi) hi = args[i].t1[t];
        }
        double g = per_thread_flops * threads / (hi - lo) / 1e9;
        if (g > best) {
            best = g;
            best_try = t;
        }
    }
    printf("{\"isa\": \"%s\", \"threads\": %d, \"per_thread_gflops\": [",
           op == OP_AMX    ? "amx-bf16"
           : op == OP_BF16 ? "avx512bf16"
           : wide          ? "avx512"
                           : "avx2",
           threads);
    for (int i = 0; i < threads; i++)
        printf("%s%.1f", i ? ", " : "",
               per_thread_flops / (args[i].t1[best_try] - args[i].t0[best_try]) / 1e9);
    /* sink is a finite sum of converging accumulators; printing it keeps it */
    printf("], \"gflops\": %.1f, \"checksum\": %.3g}\n", best, (double)sink);
    rc = 0;
cleanup:
    free(args);
    free(tids);
    return rc;
}
