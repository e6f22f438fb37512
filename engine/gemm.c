/* gemm.c: packed-weight matmul with deterministic rows (see gemm.h).
 *
 * Layout: panel j holds output columns [16j, 16j+16) as (K, 16): for each
 * k, the 16 weights W[16j + c][k]. A micro-kernel computes a block of up to
 * 6 rows x 32 columns (two panels): for every k it broadcasts A[r][k] and
 * does acc[r] += A[r][k] * panel[k][:] (fused multiply-add), so element
 * (i, n) is always fma(A[i][K-1], W[n][K-1], ... fma(A[i][0], W[n][0], 0)),
 * in that order, whatever M is. In a short last row block the missing
 * rows repeat its first row and their results are dropped.
 *
 * Threads: the column panels are split among a small pthread pool
 * (gemm_set_threads); each thread computes whole columns for all rows, so
 * the split does not change any value either. */
#include "gemm.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MR 6                 /* rows per micro-kernel call */
#define NR (2 * GEMM_PANEL)  /* columns per micro-kernel call */

int gemm_pack(const float *W, int N, int K, packed_weight *out) {
    memset(out, 0, sizeof(*out));
    out->N = N;
    out->K = K;
    /* an even number of panels: the kernels work on pairs */
    out->panels = ((N + NR - 1) / NR) * 2;
    size_t n = (size_t)out->panels * K * GEMM_PANEL;
    void *p = NULL;
    if (posix_memalign(&p, 64, n * sizeof(float)) != 0) return -1;
    float *d = p;
    for (int j = 0; j < out->panels; j++)
        for (int k = 0; k < K; k++)
            for (int c = 0; c < GEMM_PANEL; c++) {
                int col = j * GEMM_PANEL + c;
                d[((size_t)j * K + k) * GEMM_PANEL + c] = col < N ? W[(size_t)col * K + k] : 0.0f;
            }
    out->data = d;
    return 0;
}

float gemm_packed_get(const packed_weight *p, int n, int k) {
    int j = n / GEMM_PANEL, c = n % GEMM_PANEL;
    return p->data[((size_t)j * p->K + k) * GEMM_PANEL + c];
}

void gemm_pack_free(packed_weight *p) {
    free(p->data);
    memset(p, 0, sizeof(*p));
}

/* ---- micro-kernels: acc (MR, NR) = A (MR rows, stride lda) @ panels pj, pj+1 ---- */

typedef void (*kernel_fn)(const float *const *A, const float *P0, const float *P1, int K,
                          float *acc /* MR * NR */);

static void kernel_generic(const float *const *A, const float *P0, const float *P1, int K,
                           float *acc) {
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++) {
            const float *P = c < GEMM_PANEL ? P0 : P1;
            int cc = c % GEMM_PANEL;
            float s = 0.0f;
            for (int k = 0; k < K; k++) s = fmaf(A[r][k], P[(size_t)k * GEMM_PANEL + cc], s);
            acc[r * NR + c] = s;
        }
}

__attribute__((target("avx2,fma"))) static void kernel_avx2(const float *const *A,
                                                            const float *P0, const float *P1,
                                                            int K, float *acc) {
    __m256 c[MR][4];
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++) c[r][q] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m256 b0 = _mm256_load_ps(P0 + (size_t)k * GEMM_PANEL);
        __m256 b1 = _mm256_load_ps(P0 + (size_t)k * GEMM_PANEL + 8);
        __m256 b2 = _mm256_load_ps(P1 + (size_t)k * GEMM_PANEL);
        __m256 b3 = _mm256_load_ps(P1 + (size_t)k * GEMM_PANEL + 8);
        for (int r = 0; r < MR; r++) {
            __m256 a = _mm256_broadcast_ss(A[r] + k);
            c[r][0] = _mm256_fmadd_ps(a, b0, c[r][0]);
            c[r][1] = _mm256_fmadd_ps(a, b1, c[r][1]);
            c[r][2] = _mm256_fmadd_ps(a, b2, c[r][2]);
            c[r][3] = _mm256_fmadd_ps(a, b3, c[r][3]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++) _mm256_storeu_ps(acc + r * NR + 8 * q, c[r][q]);
}

__attribute__((target("avx512f"))) static void kernel_avx512(const float *const *A,
                                                             const float *P0, const float *P1,
                                                             int K, float *acc) {
    __m512 c[MR][2];
    for (int r = 0; r < MR; r++) c[r][0] = c[r][1] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m512 b0 = _mm512_load_ps(P0 + (size_t)k * GEMM_PANEL);
        __m512 b1 = _mm512_load_ps(P1 + (size_t)k * GEMM_PANEL);
        for (int r = 0; r < MR; r++) {
            __m512 a = _mm512_set1_ps(A[r][k]);
            c[r][0] = _mm512_fmadd_ps(a, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(a, b1, c[r][1]);
        }
    }
    for (int r = 0; r < MR; r++) {
        _mm512_storeu_ps(acc + r * NR, c[r][0]);
        _mm512_storeu_ps(acc + r * NR + 16, c[r][1]);
    }
}

static kernel_fn kernel;
static const char *kernel_name_str;
static pthread_once_t kernel_once = PTHREAD_ONCE_INIT;

static void choose_kernel(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        kernel = kernel_avx512;
        kernel_name_str = "avx512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        kernel = kernel_avx2;
        kernel_name_str = "avx2";
    } else {
        kernel = kernel_generic;
        kernel_name_str = "generic";
    }
}

const char *gemm_kernel_name(void) {
    pthread_once(&kernel_once, choose_kernel);
    return kernel_name_str;
}

int gemm_force_kernel(const char *name) {
    pthread_once(&kernel_once, choose_kernel);
    if (!name) {
        choose_kernel();
        return 0;
    }
    if (strcmp(name, "generic") == 0) {
        kernel = kernel_generic;
    } else if (strcmp(name, "avx2") == 0) {
        if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return -1;
        kernel = kernel_avx2;
    } else if (strcmp(name, "avx512") == 0) {
        if (!__builtin_cpu_supports("avx512f")) return -1;
        kernel = kernel_avx512;
    } else {
        return -1;
    }
    kernel_name_str = name;
    return 0;
}

/* Columns [pair_begin, pair_end) of panel pairs, all rows. */
static void gemm_columns(float *out, const float *A, const packed_weight *W, const float *bias,
                         int M, int pair_begin, int pair_end) {
    int K = W->K, N = W->N;
    float acc[MR * NR];
    const float *rowp[MR];
    for (int i = 0; i < M; i += MR) {
        int rows = M - i < MR ? M - i : MR;
        for (int r = 0; r < MR; r++) rowp[r] = A + (size_t)(i + (r < rows ? r : 0)) * K;
        for (int jp = pair_begin; jp < pair_end; jp++) {
            const float *P0 = W->data + (size_t)(2 * jp) * K * GEMM_PANEL;
            const float *P1 = P0 + (size_t)K * GEMM_PANEL;
            kernel(rowp, P0, P1, K, acc);
            int col0 = jp * NR, cols = N - col0 < NR ? N - col0 : NR;
            for (int r = 0; r < rows; r++) {
                float *o = out + (size_t)(i + r) * N + col0;
                for (int c = 0; c < cols; c++) o[c] = acc[r * NR + c] + (bias ? bias[col0 + c] : 0.0f);
            }
        }
    }
}

/* ---- a small pool: worker threads sleep on a condition variable ---- */

typedef struct {
    float *out;
    const float *A;
    const packed_weight *W;
    const float *bias;
    int M;
} gemm_job;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;   /* one job at a time */
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER, pool_done = PTHREAD_COND_INITIALIZER;
static int pool_threads = 1;      /* participants including the caller */
static int pool_started;          /* worker threads running */
static uint64_t pool_generation;
static int pool_pending;
static gemm_job pool_job;

static void run_share(const gemm_job *j, int part, int parts) {
    int pairs = j->W->panels / 2;
    int b = (int)((long)pairs * part / parts), e = (int)((long)pairs * (part + 1) / parts);
    if (b < e) gemm_columns(j->out, j->A, j->W, j->bias, j->M, b, e);
}

static void *pool_worker(void *arg) {
    int part = (int)(long)arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool_mu);
    for (;;) {
        while (pool_generation == seen) pthread_cond_wait(&pool_wake, &pool_mu);
        seen = pool_generation;
        gemm_job j = pool_job;
        int parts = pool_threads;
        pthread_mutex_unlock(&pool_mu);
        if (part < parts) run_share(&j, part, parts);
        pthread_mutex_lock(&pool_mu);
        if (part < parts && --pool_pending == 0) pthread_cond_signal(&pool_done);
    }
    return NULL;
}

void gemm_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > 64) n = 64;
    pthread_mutex_lock(&pool_lock);
    pthread_mutex_lock(&pool_mu);
    while (pool_started < n - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, pool_worker, (void *)(long)(pool_started + 1)) != 0) {
            pthread_attr_destroy(&attr);
            break;
        }
        pthread_attr_destroy(&attr);
        pool_started++;
    }
    pool_threads = pool_started + 1 < n ? pool_started + 1 : n;
    pthread_mutex_unlock(&pool_mu);
    pthread_mutex_unlock(&pool_lock);
}

void gemm_forward(float *out, const float *A, const packed_weight *W, const float *bias, int M) {
    pthread_once(&kernel_once, choose_kernel);
    gemm_job j = {out, A, W, bias, M};
    /* Small products are not worth waking anyone. */
    if ((double)M * W->N * W->K < 2e5) {
        gemm_columns(out, A, W, bias, M, 0, W->panels / 2);
        return;
    }
    pthread_mutex_lock(&pool_lock);
    pthread_mutex_lock(&pool_mu);
    int parts = pool_threads;
    pool_job = j;
    pool_pending = parts - 1;
    if (parts > 1) {
        pool_generation++;
        pthread_cond_broadcast(&pool_wake);
    }
    pthread_mutex_unlock(&pool_mu);
    run_share(&j, 0, parts);
    pthread_mutex_lock(&pool_mu);
    while (pool_pending > 0) pthread_cond_wait(&pool_done, &pool_mu);
    pthread_mutex_unlock(&pool_mu);
    pthread_mutex_unlock(&pool_lock);
}
