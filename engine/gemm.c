/* gemm.c: packed-weight matmul with deterministic rows (see gemm.h).
 *
 * Weights: panel j holds output columns [16j, 16j+16) as (K, 16): for each
 * k, the 16 weights W[16j + c][k]. Panels come in threes: a tile is 48
 * output columns (N is padded with zero columns to a multiple of 48); the
 * AMX kernel's 2 x 2 block takes them two at a time (32 columns).
 *
 * Blocking (as BLIS and OpenBLAS do it): the threads take tiles of output
 * columns in chunks (AVX2 and bf16, which read A packed: 4 panels, or two
 * tiles, at a time from a shared counter; the others: two tiles at a time
 * for one image's rows, else one equal share each); within a chunk, K is
 * cut into blocks (768; 192 for the generic
 * kernel, 256 for AMX); for each block, rows of A in passes (all of one image's rows at
 * once where A is packed, else 60-64), and for each pass every tile of the
 * chunk runs the micro-kernel over the pass's rows, MR at a time. A tile
 * is 48 columns for the AVX-512 kernels (8 x 48: the tile's block of
 * weights, 144 KB, or 72 KB of bf16 pairs, comes from L2 while the rows
 * pass; fp32 reads A's rows in place) and one 16-column panel for the AVX2
 * kernel (6 x 16: the panel's block streams from L2; A comes packed
 * k-major, 6 rows side by side, all of it packed once before the tiles
 * start, into the caller's scratch). bf16 converts A into the same k-major
 * layout (8 rows side by side), also once for all threads; the AMX kernel
 * (16 x 48 or 32 x 32, in tiles; its section below) into blocks of 16
 * rows x 16 pairs, one tile each.
 *
 * Determinism: the micro-kernel loads the partial sums of the previous K
 * block from the output (exact float32 values), continues with fused
 * multiply-adds in k order and stores them. So element (i, n) is always
 * fma(A[i][K-1], W[n][K-1], ... fma(A[i][0], W[n][0], 0)) + bias[n], in that
 * order, whatever M is, wherever the row sits, however many threads split
 * the columns. (The kernels' loops are fully unrolled by pragmas so that
 * the accumulators live in registers.) Tiles at the edges (rows past M, columns past N) run on a
 * small buffer with the same arithmetic. */
#include "gemm.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "dnnl_gemm.h"
#include "parallel.h"
#include "simd.h"

#define NR (3 * GEMM_PANEL) /* columns per tile */
#define MR_MAX 32           /* rows per micro-kernel call, at most (AMX's 2 x 2 block: 32) */
#define AMX_PAIRS 16        /* pairs per AMX tile row (64 bytes), and rows per tile */
#define KC 192              /* generic kernel's K block: its tile's weights (36 KB) fit L1 */
#define KC_BIG                                                                                               \
    768 /* the AVX2, AVX-512 and bf16 K block: one block for K = 768 (C
                                written once, never reloaded); the tile's block comes from L2
                                (measured against 192 and 256: bench/results/NOTES.md) */
/* The AMX kernel's K block: a tile's block of weights (128 pairs x 48
 * columns, 24 KB) stays in L1 while the row groups pass, so a step of 16
 * pairs loads only A's 1 KB from L2 (with 768, 4 KB a step came from L2
 * for 48 cycles of tdpbf16ps). Reasoned, not yet measured on an AMX CPU
 * (bench/README.md). A multiple of 32: whole tile steps. A build may set
 * another (-DKC_AMX=768: bench/amx_decide.sh times both). */
#ifndef KC_AMX
#define KC_AMX 256
#endif
#if KC_AMX % 32 != 0
#error "KC_AMX must be a multiple of 32 (whole 16-pair tile steps)"
#endif
#define MC 64        /* rows of A per pass over a tile (8 row groups, at most) */
#define GEMM_CHUNK 4 /* AVX2: panels a part takes at a time */
#define MC_ONE_PASS                                                                                          \
    264 /* A packed (AVX2, bf16): up to this many rows (one image's
                                tokens at 224 and below), a single pass over the weights */

/* fp32 -> bf16, round to nearest even (the weights are finite: the loader
 * refuses NaN and infinity). */
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* An activation to bf16 exactly as vcvtne2ps2bf16 converts it (the scalar
 * tails of pack_rows_bf16 must agree with pack8_bf16 bit for bit, or a row
 * alone, in the short last group, would differ from the same row in a full
 * group): a denormal input is a zero of its sign (else the largest ones
 * would round up to the smallest normal bf16, which vdpbf16ps does not
 * flush), a NaN stays a quiet NaN (rounding could carry it into infinity or
 * the sign bit), the rest rounds to nearest even. */
static uint16_t act_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Packed weights' geometry, the same for every packing: panels of
 * GEMM_PANEL columns, whole tiles of NR; bf16 pair rows (ceil(K / 2)),
 * rounded up to a whole AMX step. */
static int panel_count(int N) { return ((N + NR - 1) / NR) * 3; }
static int bf16_pair_rows(int K) { return ((K + 1) / 2 + AMX_PAIRS - 1) / AMX_PAIRS * AMX_PAIRS; }

static int pack_bf16(const float *W, int N, int K, packed_weight *out) {
    int K2 = bf16_pair_rows(K);
    out->prows = K2;
    size_t n = (size_t)out->panels * K2 * GEMM_PANEL;
    void *p = NULL;
    if (posix_memalign(&p, 64, n * sizeof(uint32_t)) != 0) return -1;
    uint32_t *d = p;
    for (int j = 0; j < out->panels; j++)
        for (int k2 = 0; k2 < K2; k2++)
            for (int c = 0; c < GEMM_PANEL; c++) {
                int col = j * GEMM_PANEL + c, k = 2 * k2;
                float lo = col < N && k < K ? W[(size_t)col * K + k] : 0.0f;
                float hi = col < N && k + 1 < K ? W[(size_t)col * K + k + 1] : 0.0f;
                d[((size_t)j * K2 + k2) * GEMM_PANEL + c] = to_bf16(lo) | (uint32_t)to_bf16(hi) << 16;
            }
    out->bf16 = d;
    return 0;
}

int gemm_pack(const float *W, int N, int K, int precision, packed_weight *out) {
    memset(out, 0, sizeof(*out));
    out->N = N;
    out->K = K;
    out->panels = panel_count(N);
    if (precision == GEMM_BF16) return pack_bf16(W, N, K, out);
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

/* ---- activations as bf16 panels (attention's keys and values) ---- */

size_t gemm_bf16_act_words(int N, int K) { return (size_t)panel_count(N) * bf16_pair_rows(K) * GEMM_PANEL; }

__attribute__((target("avx512f,avx512bf16"))) void gemm_pack_bf16_act(const float *X, int ld, int transposed,
                                                                      int N, int K, uint32_t *words,
                                                                      packed_weight *out) {
    memset(out, 0, sizeof(*out));
    out->N = N;
    out->K = K;
    out->panels = panel_count(N);
    out->prows = bf16_pair_rows(K);
    out->bf16 = words;
    int prows = out->prows, K2 = (K + 1) / 2;
    for (int j = 0; j < out->panels; j++) {
        uint32_t *panel = words + (size_t)j * prows * GEMM_PANEL;
        int n0 = j * GEMM_PANEL;
        if (transposed) { /* W = X^T: pair row k2 is X's rows 2k2 and 2k2+1, 16 columns from n0 */
            for (int k2 = 0; k2 < prows; k2++) {
                __m512i lo =
                    k2 < K2 ? bf16_lanes(X + (size_t)(2 * k2) * ld + n0, N - n0) : _mm512_setzero_si512();
                __m512i hi = 2 * k2 + 1 < K ? bf16_lanes(X + (size_t)(2 * k2 + 1) * ld + n0, N - n0)
                                            : _mm512_setzero_si512();
                _mm512_storeu_si512(panel + (size_t)k2 * GEMM_PANEL,
                                    _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
            continue;
        }
        /* W = X: column c of the panel is row n0 + c of X, its K values as pairs down the panel */
        memset(panel, 0, sizeof(uint32_t) * (size_t)prows * GEMM_PANEL);
        for (int c = 0; c < GEMM_PANEL && n0 + c < N; c++) {
            const float *x = X + (size_t)(n0 + c) * ld;
            for (int k = 0; k < K; k += 32) {
                __m512i p =
                    (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(tail_mask_int(K - k - 16), x + k + 16),
                                                 _mm512_maskz_loadu_ps(tail_mask_int(K - k), x + k));
                uint32_t pairs[16];
                _mm512_storeu_si512(pairs, p);
                for (int q = 0; q < 16 && k / 2 + q < K2; q++)
                    panel[(size_t)(k / 2 + q) * GEMM_PANEL + c] = pairs[q];
            }
        }
    }
}

float gemm_packed_get(const packed_weight *p, int n, int k) {
    int j = n / GEMM_PANEL, c = n % GEMM_PANEL;
    return p->data[((size_t)j * p->K + k) * GEMM_PANEL + c];
}

static const char *const backend_names[] = {"auto", "own", "onednn", "amx"};
#define BACKENDS ((int)(sizeof(backend_names) / sizeof(backend_names[0])))

const char *gemm_backend_name(int backend) {
    return backend >= 0 && backend < BACKENDS ? backend_names[backend] : "unknown";
}

int gemm_backend_parse(const char *name, int *out) {
    for (int i = 0; i < BACKENDS; i++)
        if (strcmp(name, backend_names[i]) == 0) {
            *out = i;
            return 0;
        }
    return -1;
}

void gemm_pack_free(packed_weight *p) {
    free(p->data);
    free(p->bf16);
    dnnl_weight_free(p->dnnl);
    memset(p, 0, sizeof(*p));
}

/* ---- micro-kernels ----
 * C (MR, 48), row stride ldc, (+)= A (MR, kc) . [B0 B1 B2] (kc, 16 each),
 * where A's element (r, k) is Ap[r*rs + k*ks] (fp32: the rows of A in
 * place, rs = K, ks = 1; bf16: a packed block, rs = 1, ks = MR).
 * first != 0 starts from zero, else from the partial sums in C; bias
 * (48 values, or NULL) is added to the finished sums of the last K block. */

typedef void (*kernel_fn)(const void *Ap, size_t rs, size_t ks, const void *B0, const void *B1,
                          const void *B2, int kc, float *C, size_t ldc, int first, const float *bias);

struct gemm_kernel {
    const char *name;
    kernel_fn fn;
    int mr;              /* rows per call */
    int np;              /* 16-column panels per call: 3 (a 48-column tile), 2 (AMX's 2 x 2 block) or 1 */
    int pack;            /* 1 reads A from a copy packed once for all threads (k-major groups, or
                            AMX's 16 x 16 blocks), 0 in place */
    int kc;              /* K block (even: a bf16 pair never straddles two blocks) */
    int pairs;           /* 0: elements are fp32 values; 1: pairs of bf16 values (two k per element) */
    int tiles;           /* 1: AMX's layout: A packed in 16 x 16 blocks of pairs (pack_rows_amx),
                  each K block's pairs rounded up to 16 with zeros; 0: k-major groups */
    int vector_pack;     /* tiles: A converted with AVX512-BF16 (else in C) */
    void (*enter)(void); /* run by each thread before its first call (AMX: load the
                             tile configuration), or NULL */
    void (*leave)(void); /* and after its last (AMX: release the tiles), or NULL */
};

static void kernel_generic(const void *Ap_, size_t rs, size_t ks, const void *B0, const void *B1,
                           const void *B2, int kc, float *C, size_t ldc, int first, const float *bias) {
    enum { MR = 4 };
    const float *Ap = Ap_, *B[3] = {B0, B1, B2};
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++) {
            const float *Bp = B[c / GEMM_PANEL];
            int cc = c % GEMM_PANEL;
            float s = first ? 0.0f : C[r * ldc + c];
            for (int k = 0; k < kc; k++) s = fmaf(Ap[r * rs + k * ks], Bp[(size_t)k * GEMM_PANEL + cc], s);
            C[r * ldc + c] = bias ? s + bias[c] : s;
        }
}

/* AVX2: 6 rows x one 16-column panel (12 accumulators, as BLIS and
 * OpenBLAS shape theirs). The blocked loop calls it panel by panel, all
 * row groups of a pass over one panel before the next: the panel's block
 * (KC_BIG x 16, 48 KB) streams from L2 and the packed rows from L2/L3;
 * reloading C from L3 once per smaller K block cost more (gemm.c's top). */
__attribute__((target("avx2,fma"))) static void kernel_avx2(const void *Ap_, size_t rs, size_t ks,
                                                            const void *B_, const void *unused1,
                                                            const void *unused2, int kc, float *C, size_t ldc,
                                                            int first, const float *bias) {
    enum { MR = 6 };
    (void)rs; /* A comes packed (pack_rows_f32): element (r, k) at Ap[k * 6 + r] */
    (void)ks;
    (void)unused1;
    (void)unused2;
    const float *B = B_, *a = Ap_;
    __m256 c[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        c[r][0] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(C + r * ldc);
        c[r][1] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(C + r * ldc + 8);
    }
#pragma GCC unroll 4
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(B + (size_t)k * GEMM_PANEL);
        __m256 b1 = _mm256_load_ps(B + (size_t)k * GEMM_PANEL + 8);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m256 av = _mm256_broadcast_ss(a + k * MR + r);
            c[r][0] = _mm256_fmadd_ps(av, b0, c[r][0]);
            c[r][1] = _mm256_fmadd_ps(av, b1, c[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        if (bias) {
            c[r][0] = _mm256_add_ps(c[r][0], _mm256_loadu_ps(bias));
            c[r][1] = _mm256_add_ps(c[r][1], _mm256_loadu_ps(bias + 8));
        }
        _mm256_storeu_ps(C + r * ldc, c[r][0]);
        _mm256_storeu_ps(C + r * ldc + 8, c[r][1]);
    }
}

__attribute__((target("avx512f"))) static void kernel_avx512(const void *Ap_, size_t rs, size_t ks,
                                                             const void *B0_, const void *B1_,
                                                             const void *B2_, int kc, float *C, size_t ldc,
                                                             int first, const float *bias) {
    enum { MR = 8 };
    const float *B0 = B0_, *B1 = B1_, *B2 = B2_, *a[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) a[r] = (const float *)Ap_ + r * rs;
    __m512 c[MR][3];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 3
        for (int q = 0; q < 3; q++)
            c[r][q] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(C + r * ldc + 16 * q);
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(B0 + (size_t)k * GEMM_PANEL);
        __m512 b1 = _mm512_load_ps(B1 + (size_t)k * GEMM_PANEL);
        __m512 b2 = _mm512_load_ps(B2 + (size_t)k * GEMM_PANEL);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512 av = _mm512_set1_ps(a[r][k * ks]);
            c[r][0] = _mm512_fmadd_ps(av, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(av, b1, c[r][1]);
            c[r][2] = _mm512_fmadd_ps(av, b2, c[r][2]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 3
        for (int q = 0; q < 3; q++)
            _mm512_storeu_ps(C + r * ldc + 16 * q,
                             bias ? _mm512_add_ps(c[r][q], _mm512_loadu_ps(bias + 16 * q)) : c[r][q]);
}

/* C (8, 48) (+)= Ap (kc2, 8) . [B0 B1 B2] (kc2, 16) where every element is
 * a pair of bf16 values: vdpbf16ps adds both products of a pair into the
 * fp32 accumulator. */
__attribute__((target("avx512f,avx512bf16"))) static void
kernel_bf16(const void *Ap_, size_t rs, size_t ks, const void *B0_, const void *B1_, const void *B2_, int kc2,
            float *C, size_t ldc, int first, const float *bias) {
    enum { MR = 8 };
    const uint32_t *B0 = B0_, *B1 = B1_, *B2 = B2_, *a[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) a[r] = (const uint32_t *)Ap_ + r * rs;
    __m512 c[MR][3];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 3
        for (int q = 0; q < 3; q++)
            c[r][q] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(C + r * ldc + 16 * q);
    for (int k = 0; k < kc2; k++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(B0 + (size_t)k * GEMM_PANEL);
        __m512bh b1 = (__m512bh)_mm512_load_si512(B1 + (size_t)k * GEMM_PANEL);
        __m512bh b2 = (__m512bh)_mm512_load_si512(B2 + (size_t)k * GEMM_PANEL);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r][k * ks]);
            c[r][0] = _mm512_dpbf16_ps(c[r][0], av, b0);
            c[r][1] = _mm512_dpbf16_ps(c[r][1], av, b1);
            c[r][2] = _mm512_dpbf16_ps(c[r][2], av, b2);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 3
        for (int q = 0; q < 3; q++)
            _mm512_storeu_ps(C + r * ldc + 16 * q,
                             bias ? _mm512_add_ps(c[r][q], _mm512_loadu_ps(bias + 16 * q)) : c[r][q]);
}

static const gemm_kernel kernel_avx512_entry = {
    .name = "avx512", .fn = kernel_avx512, .mr = 8, .np = 3, .pack = 0, .kc = KC_BIG, .pairs = 0};
static const gemm_kernel kernel_avx2_entry = {
    .name = "avx2", .fn = kernel_avx2, .mr = 6, .np = 1, .pack = 1, .kc = KC_BIG, .pairs = 0};
static const gemm_kernel kernel_generic_entry = {
    .name = "generic", .fn = kernel_generic, .mr = 4, .np = 3, .pack = 0, .kc = KC, .pairs = 0};
/* every bf16-packed weight (gemm_pack refuses bf16 without AVX512-BF16) */
static const gemm_kernel kernel_bf16_entry = {
    .name = "avx512bf16", .fn = kernel_bf16, .mr = 8, .np = 3, .pack = 1, .kc = KC_BIG, .pairs = 1};

/* ---- AMX ----
 * C (16, 48) (+)= A (16 rows, ku pairs) . [B0 B1 B2] (ku pairs, 16 each)
 * in tiles: tmm0-2 hold C's three 16 x 16 blocks in fp32, tmm3 16 rows x
 * 16 pairs of A, tmm4-6 16 rows of each panel. A panel row is 16 pairs
 * (64 bytes) and the bf16 panels are padded to 16-row multiples, so a
 * tile of weights is 16 consecutive panel rows as packed (1 KB) and
 * nothing is repacked for AMX. A comes packed by pack_rows_amx: for each
 * step of 16 pairs, a 16 x 16 block of the group's rows (1 KB), the
 * padding zero. tdpbf16ps adds, for each row m and column n, the 16 pair
 * products of the step in pair order: element (i, n) is one sum over k
 * in an order fixed by K alone (per K block, C reloaded from the output
 * between blocks as the other kernels do), so rows stay batch invariant. */

/* ldtilecfg's 64 bytes (palette 1): tiles 0-7 all 16 rows of 64 bytes
 * (the 1 x 3 block uses 0-6, the 2 x 2 block all eight).
 * A constant, not a local: GCC's _tile_loadconfig tells the compiler it
 * reads 8 bytes, so stores into a local configuration could be dropped. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tilecfg;

static const amx_tilecfg amx_config __attribute__((aligned(64))) = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

/* The tile state is per thread: each thread of a GEMM configures it
 * before its first call (gemm_part) and releases it after its last. */
__attribute__((target("amx-tile"))) static void amx_enter(void) { _tile_loadconfig(&amx_config); }
__attribute__((target("amx-tile"))) static void amx_leave(void) { _tile_release(); }

/* C (rows, 16 * panels) of ldc floats: the bias added to the finished sums. */
__attribute__((target("avx512f"))) static void add_bias_tiles(float *C, size_t ldc, const float *bias,
                                                              int rows, int panels) {
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < panels; q++)
            _mm512_storeu_ps(C + r * ldc + 16 * q, _mm512_add_ps(_mm512_loadu_ps(C + r * ldc + 16 * q),
                                                                 _mm512_loadu_ps(bias + 16 * q)));
}

__attribute__((target("amx-tile,amx-bf16,avx512f"))) static void
kernel_amx(const void *Ap_, size_t rs, size_t ks, const void *B0_, const void *B1_, const void *B2_, int ku,
           float *C, size_t ldc, int first, const float *bias) {
    (void)rs; /* A packed in blocks of 16 x 16 pairs (pack_rows_amx) */
    (void)ks;
    const uint32_t *A = Ap_, *B0 = B0_, *B1 = B1_, *B2 = B2_;
    long ldb = (long)(ldc * sizeof(float));
    /* GCC's tileloadd asm does not say it reads memory: this barrier keeps
     * every store before it (the caller's, should this ever be inlined)
     * ahead of the loads. A store added below it, before a load that reads
     * it, would need another. (tilestored does clobber memory.) */
    __asm__ volatile("" ::: "memory");
    if (first) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
    } else {
        _tile_loadd(0, C, ldb);
        _tile_loadd(1, C + 16, ldb);
        _tile_loadd(2, C + 32, ldb);
    }
    for (int s = 0; s < ku; s += AMX_PAIRS) {
        size_t o = (size_t)s * GEMM_PANEL; /* the step's block: 16 rows of 16 pairs */
        _tile_loadd(3, A + o, 64);
        _tile_loadd(4, B0 + o, 64);
        _tile_dpbf16ps(0, 3, 4);
        _tile_loadd(5, B1 + o, 64);
        _tile_dpbf16ps(1, 3, 5);
        _tile_loadd(6, B2 + o, 64);
        _tile_dpbf16ps(2, 3, 6);
    }
    _tile_stored(0, C, ldb);
    _tile_stored(1, C + 16, ldb);
    _tile_stored(2, C + 32, ldb);
    if (bias) add_bias_tiles(C, ldc, bias, AMX_PAIRS, 3);
}

/* The 2 x 2 block: C (32, 32) (+)= A (32 rows, ku pairs) . [B0 B1], in
 * tmm0-3 (C's blocks: rows 0-15 and 16-31 by columns 0-15 and 16-31),
 * tmm4-5 the two groups of 16 rows of A (pack_rows_amx: the second group
 * right after the first, 16 x ku pairs on), tmm6-7 the two panels. Four
 * tile loads feed four tdpbf16ps (the 1 x 3 block: four for three), and
 * all eight tiles are in use. The same sums in the same order as the
 * 1 x 3 block: the two give the same bits. B2 is unused (two panels). */
__attribute__((target("amx-tile,amx-bf16,avx512f"))) static void
kernel_amx22(const void *Ap_, size_t rs, size_t ks, const void *B0_, const void *B1_, const void *B2_, int ku,
             float *C, size_t ldc, int first, const float *bias) {
    (void)rs;
    (void)ks;
    (void)B2_;
    const uint32_t *A0 = Ap_, *B0 = B0_, *B1 = B1_;
    const uint32_t *A1 = A0 + (size_t)AMX_PAIRS * ku;
    float *C1 = C + AMX_PAIRS * ldc; /* rows 16-31 */
    long ldb = (long)(ldc * sizeof(float));
    __asm__ volatile("" ::: "memory"); /* as in kernel_amx */
    if (first) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    } else {
        _tile_loadd(0, C, ldb);
        _tile_loadd(1, C + 16, ldb);
        _tile_loadd(2, C1, ldb);
        _tile_loadd(3, C1 + 16, ldb);
    }
    for (int s = 0; s < ku; s += AMX_PAIRS) {
        size_t o = (size_t)s * GEMM_PANEL;
        _tile_loadd(4, A0 + o, 64);
        _tile_loadd(6, B0 + o, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, B1 + o, 64);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, A1 + o, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, C, ldb);
    _tile_stored(1, C + 16, ldb);
    _tile_stored(2, C1, ldb);
    _tile_stored(3, C1 + 16, ldb);
    if (bias) add_bias_tiles(C, ldc, bias, 2 * AMX_PAIRS, 2);
}

/* A bf16 value as tdpbf16ps reads it: denormals are zero. */
static float bf16_daz(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* tdpbf16ps reads and writes fp32 with denormals as zeros (DAZ, FTZ). */
static float ftz(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
    memcpy(&x, &u, 4);
    return x;
}

/* tdpbf16ps in C, as the Intel SDM's operation section defines it: for
 * each row m and column n, the even and the odd products of the 16 pairs
 * accumulate in two fp32 sums that start at zero, each by a fused
 * multiply-add in pair order; then c[m][n] + (even + odd). Every step
 * rounds to nearest even and flushes denormals (DAZ and FTZ). (The
 * Intrinsics Guide's shorter form, c += lo * lo then += hi * hi per pair,
 * rounds differently.) Whether the silicon agrees bit for bit is for an
 * AMX CPU to tell: test_gemm amx prints the difference. */
static void tdpbf16ps_c(float *c, const uint32_t *a, const uint32_t *b) {
    for (int m = 0; m < AMX_PAIRS; m++)
        for (int n = 0; n < GEMM_PANEL; n++) {
            float even = 0.0f, odd = 0.0f;
            for (int k = 0; k < AMX_PAIRS; k++) {
                uint32_t x = a[m * AMX_PAIRS + k], w = b[k * GEMM_PANEL + n];
                even = ftz(fmaf(bf16_daz((uint16_t)x), bf16_daz((uint16_t)w), even));
                odd = ftz(fmaf(bf16_daz((uint16_t)(x >> 16)), bf16_daz((uint16_t)(w >> 16)), odd));
            }
            c[m * GEMM_PANEL + n] = ftz(ftz(c[m * GEMM_PANEL + n]) + ftz(even + odd));
        }
}

/* Either block with each tile instruction computed in C
 * (gemm_amx_emulated): groups of 16 rows (two for the 2 x 2 block, the
 * second 16 x ku pairs after the first) by `panels` panels. */
static void amx_emulated(const uint32_t *A, const uint32_t *const *B, int groups, int panels, int ku,
                         float *C, size_t ldc, int first, const float *bias) {
    float t[AMX_PAIRS * GEMM_PANEL]; /* one accumulator tile */
    for (int g = 0; g < groups; g++)
        for (int q = 0; q < panels; q++) {
            float *c = C + (size_t)g * AMX_PAIRS * ldc + 16 * q;
            for (int r = 0; r < AMX_PAIRS; r++)
                for (int n = 0; n < GEMM_PANEL; n++) t[r * GEMM_PANEL + n] = first ? 0.0f : c[r * ldc + n];
            for (int s = 0; s < ku; s += AMX_PAIRS) {
                size_t o = (size_t)s * GEMM_PANEL;
                tdpbf16ps_c(t, A + (size_t)g * AMX_PAIRS * ku + o, B[q] + o);
            }
            for (int r = 0; r < AMX_PAIRS; r++)
                for (int n = 0; n < GEMM_PANEL; n++)
                    c[r * ldc + n] = bias ? t[r * GEMM_PANEL + n] + bias[16 * q + n] : t[r * GEMM_PANEL + n];
        }
}

static void kernel_amx_emulated(const void *Ap, size_t rs, size_t ks, const void *B0, const void *B1,
                                const void *B2, int ku, float *C, size_t ldc, int first, const float *bias) {
    (void)rs;
    (void)ks;
    const uint32_t *B[3] = {B0, B1, B2};
    amx_emulated(Ap, B, 1, 3, ku, C, ldc, first, bias);
}

static void kernel_amx22_emulated(const void *Ap, size_t rs, size_t ks, const void *B0, const void *B1,
                                  const void *B2, int ku, float *C, size_t ldc, int first,
                                  const float *bias) {
    (void)rs;
    (void)ks;
    (void)B2;
    const uint32_t *B[2] = {B0, B1};
    amx_emulated(Ap, B, 2, 2, ku, C, ldc, first, bias);
}

/* Each block on the tiles, and emulated with A converted in C or, as the
 * tiles' kernel does, with AVX512-BF16: [shape][variant]. */
enum { AMX_TILES = 0, AMX_EMULATED = 1, AMX_EMULATED_VECTOR = 2 };
static const gemm_kernel amx_entries[2][3] =
    {
        [GEMM_AMX_1X3] =
            {
                [AMX_TILES] = {.name = "amx",
                               .fn = kernel_amx,
                               .mr = AMX_PAIRS,
                               .np = 3,
                               .pack = 1,
                               .kc = KC_AMX,
                               .pairs = 1,
                               .tiles = 1,
                               .vector_pack = 1,
                               .enter = amx_enter,
                               .leave = amx_leave},
                [AMX_EMULATED] = {.name = "amx-emulated",
                                  .fn = kernel_amx_emulated,
                                  .mr = AMX_PAIRS,
                                  .np = 3,
                                  .pack = 1,
                                  .kc = KC_AMX,
                                  .pairs = 1,
                                  .tiles = 1,
                                  .vector_pack = 0},
                [AMX_EMULATED_VECTOR] = {.name = "amx-emulated-vector",
                                         .fn = kernel_amx_emulated,
                                         .mr = AMX_PAIRS,
                                         .np = 3,
                                         .pack = 1,
                                         .kc = KC_AMX,
                                         .pairs = 1,
                                         .tiles = 1,
                                         .vector_pack = 1},
            },
        [GEMM_AMX_2X2] =
            {
                [AMX_TILES] = {.name = "amx-2x2",
                               .fn = kernel_amx22,
                               .mr = 2 * AMX_PAIRS,
                               .np = 2,
                               .pack = 1,
                               .kc = KC_AMX,
                               .pairs = 1,
                               .tiles = 1,
                               .vector_pack = 1,
                               .enter = amx_enter,
                               .leave = amx_leave},
                [AMX_EMULATED] = {.name = "amx-2x2-emulated",
                                  .fn = kernel_amx22_emulated,
                                  .mr = 2 * AMX_PAIRS,
                                  .np = 2,
                                  .pack = 1,
                                  .kc = KC_AMX,
                                  .pairs = 1,
                                  .tiles = 1,
                                  .vector_pack = 0},
                [AMX_EMULATED_VECTOR] = {.name = "amx-2x2-emulated-vector",
                                         .fn = kernel_amx22_emulated,
                                         .mr = 2 * AMX_PAIRS,
                                         .np = 2,
                                         .pack = 1,
                                         .kc = KC_AMX,
                                         .pairs = 1,
                                         .tiles = 1,
                                         .vector_pack = 1},
            },
};

static int amx_shape_valid(int shape) { return shape == GEMM_AMX_1X3 || shape == GEMM_AMX_2X2; }

/* AMX CPUs have AVX512-BF16 too (Sapphire Rapids on); the kernel's
 * packing of A uses it */
const gemm_kernel *gemm_amx_kernel(int shape) {
    if (!amx_shape_valid(shape) || !cpu_has_amx_bf16() || !cpu_has_avx512bf16()) return NULL;
    return &amx_entries[shape][AMX_TILES];
}

const gemm_kernel *gemm_amx_emulated(int shape, int vector_pack) {
    if (!amx_shape_valid(shape)) return NULL;
    if (!vector_pack) return &amx_entries[shape][AMX_EMULATED];
    return cpu_has_avx512bf16() ? &amx_entries[shape][AMX_EMULATED_VECTOR] : NULL;
}

static const char *const amx_shape_names[] = {"1x3", "2x2"};

const char *gemm_amx_shape_name(int shape) { return amx_shape_valid(shape) ? amx_shape_names[shape] : "?"; }

int gemm_amx_shape_parse(const char *name, int *out) {
    for (int i = 0; i < 2; i++)
        if (strcmp(name, amx_shape_names[i]) == 0) {
            *out = i;
            return 0;
        }
    return -1;
}

void gemm_fill_table(kernel_table *kt, cpu_isa isa) {
    switch (isa) {
    case CPU_ISA_AVX512:
        kt->gemm = &kernel_avx512_entry;
        kt->gemm_bf16 = cpu_has_avx512bf16() ? &kernel_bf16_entry : NULL;
        break;
    case CPU_ISA_AVX2: kt->gemm = &kernel_avx2_entry; break;
    case CPU_ISA_SCALAR: kt->gemm = &kernel_generic_entry; break;
    }
}

/* ---- the blocked loop ---- */

typedef struct {
    float *out;
    const float *A;
    const packed_weight *W;
    const float *bias;
    int M;
    const gemm_kernel *kernel;
    float *Ap;              /* packing kernels: all of A, packed by pack_part (caller's scratch; bf16
                     pairs are 32-bit too, stored here as uint32_t) */
    float *pad;             /* kernels reading A in place: A's last, short row group (M % mr rows)
                     zero-padded to mr rows of K (caller's scratch), or NULL */
    int Mp;                 /* M rounded up to the kernel's rows */
    int act;                /* activation applied to finished columns, or GEMM_NO_ACT */
    activation_fn activate; /* the table's activation kernel */
    int chunk;              /* tiles a part takes at a time */
    int next;               /* the first tile nobody has taken (atomic) */
} gemm_job;

/* Eight full rows of A, 32 k at a time, as bf16 pairs in the packed layout
 * (pair k2 of row r at dst[k2*8 + r]): vcvtne2ps2bf16 rounds a row's 32
 * floats into 16 pairs, then a 8 x 16 transpose of those 32-bit pairs in
 * registers (unpack 32, unpack 64 within 128-bit lanes; each lane of u[j]
 * is 4 rows at one k2). Returns the pairs done (a multiple of 16); the
 * rest of the block goes through act_to_bf16, which converts as the
 * instruction does. Scalar, the conversion was 17% of a bf16 ViT-B
 * forward (each thread converting its own copy). */
__attribute__((target("avx512f,avx512bf16"))) static int pack8_bf16(const float *src, int K, int kc,
                                                                    uint32_t *dst) {
    int k2 = 0;
    for (; 2 * k2 + 32 <= kc; k2 += 16) {
        __m512i R[8], t[8], u[8];
        for (int r = 0; r < 8; r++) {
            const float *p = src + (size_t)r * K + 2 * k2;
            R[r] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + 16), _mm512_loadu_ps(p));
        }
        for (int r = 0; r < 8; r += 2) {
            t[r] = _mm512_unpacklo_epi32(R[r], R[r + 1]);
            t[r + 1] = _mm512_unpackhi_epi32(R[r], R[r + 1]);
        }
        for (int h = 0; h < 8; h += 4) { /* rows h..h+3 */
            u[h + 0] = _mm512_unpacklo_epi64(t[h], t[h + 2]);
            u[h + 1] = _mm512_unpackhi_epi64(t[h], t[h + 2]);
            u[h + 2] = _mm512_unpacklo_epi64(t[h + 1], t[h + 3]);
            u[h + 3] = _mm512_unpackhi_epi64(t[h + 1], t[h + 3]);
        }
        /* lane l of u[j] (rows 0-3) and of u[4+j] (rows 4-7): pair k2 + 4l + j */
        uint32_t *d = dst + (size_t)k2 * 8;
        for (int j = 0; j < 4; j++) {
            _mm_storeu_si128((__m128i *)(d + (0 + j) * 8), _mm512_extracti32x4_epi32(u[j], 0));
            _mm_storeu_si128((__m128i *)(d + (0 + j) * 8 + 4), _mm512_extracti32x4_epi32(u[4 + j], 0));
            _mm_storeu_si128((__m128i *)(d + (4 + j) * 8), _mm512_extracti32x4_epi32(u[j], 1));
            _mm_storeu_si128((__m128i *)(d + (4 + j) * 8 + 4), _mm512_extracti32x4_epi32(u[4 + j], 1));
            _mm_storeu_si128((__m128i *)(d + (8 + j) * 8), _mm512_extracti32x4_epi32(u[j], 2));
            _mm_storeu_si128((__m128i *)(d + (8 + j) * 8 + 4), _mm512_extracti32x4_epi32(u[4 + j], 2));
            _mm_storeu_si128((__m128i *)(d + (12 + j) * 8), _mm512_extracti32x4_epi32(u[j], 3));
            _mm_storeu_si128((__m128i *)(d + (12 + j) * 8 + 4), _mm512_extracti32x4_epi32(u[4 + j], 3));
        }
    }
    return k2;
}

/* bf16: rows [i0, i0+rows) x columns [k0, k0+kc) of A as pairs
 * (A[i][k], A[i][k+1]) rounded to bf16, k-major in groups of mr rows (the
 * kernel reads element (r, k2) at Ap[k2*mr + r]); the k past an odd block
 * and the missing rows are 0. */
static void pack_rows_bf16(const float *A, int K, int i0, int rows, int k0, int kc, int mr, uint32_t *Ap) {
    int kc2 = (kc + 1) / 2;
    for (int g = 0; g < rows; g += mr) {
        uint32_t *dst = Ap + (size_t)g * kc2;
        int gr = rows - g < mr ? rows - g : mr, done = 0;
        if (gr == 8 && mr == 8) done = pack8_bf16(A + (size_t)(i0 + g) * K + k0, K, kc, dst);
        for (int r = 0; r < mr; r++) {
            const float *src = r < gr ? A + (size_t)(i0 + g + r) * K + k0 : NULL;
            for (int k2 = done; k2 < kc2; k2++) {
                float lo = src ? src[2 * k2] : 0.0f;
                float hi = src && 2 * k2 + 1 < kc ? src[2 * k2 + 1] : 0.0f;
                dst[k2 * mr + r] = act_to_bf16(lo) | (uint32_t)act_to_bf16(hi) << 16;
            }
        }
    }
}

/* Six rows, eight k at a time: an 8 x 8 transpose (rows 6 and 7 zero) in
 * registers, each k's six values stored as 8 floats whose last two the
 * next store overwrites; the group's last k stores exactly six, so the
 * group writes 6 * kc floats and nothing past them (threads pack
 * neighbouring groups at once). Scalar, the packing took ~1.4 ns per
 * float, 4% of a ViT-B forward. */
__attribute__((target("avx2"))) static void pack6_avx2(const float *const *src, int kc, float *dst) {
    const __m256 z = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= kc; k += 8) {
        __m256 t0 = _mm256_unpacklo_ps(_mm256_loadu_ps(src[0] + k), _mm256_loadu_ps(src[1] + k));
        __m256 t1 = _mm256_unpackhi_ps(_mm256_loadu_ps(src[0] + k), _mm256_loadu_ps(src[1] + k));
        __m256 t2 = _mm256_unpacklo_ps(_mm256_loadu_ps(src[2] + k), _mm256_loadu_ps(src[3] + k));
        __m256 t3 = _mm256_unpackhi_ps(_mm256_loadu_ps(src[2] + k), _mm256_loadu_ps(src[3] + k));
        __m256 t4 = _mm256_unpacklo_ps(_mm256_loadu_ps(src[4] + k), _mm256_loadu_ps(src[5] + k));
        __m256 t5 = _mm256_unpackhi_ps(_mm256_loadu_ps(src[4] + k), _mm256_loadu_ps(src[5] + k));
        /* u: rows 0-3, v: rows 4-5 and two zeros; lanes 0-3 hold k+j, 4-7 k+j+4 */
        __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                       _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
        __m256 v[4] = {_mm256_shuffle_ps(t4, z, 0x44), _mm256_shuffle_ps(t4, z, 0xEE),
                       _mm256_shuffle_ps(t5, z, 0x44), _mm256_shuffle_ps(t5, z, 0xEE)};
        float *d = dst + (size_t)k * 6;
        for (int j = 0; j < 4; j++) _mm256_storeu_ps(d + 6 * j, _mm256_permute2f128_ps(u[j], v[j], 0x20));
        for (int j = 0; j < 3; j++)
            _mm256_storeu_ps(d + 6 * (j + 4), _mm256_permute2f128_ps(u[j], v[j], 0x31));
        __m256 last = _mm256_permute2f128_ps(u[3], v[3], 0x31);
        if (k + 8 < kc) {
            _mm256_storeu_ps(d + 42, last); /* its last two floats: the next k's place */
        } else { /* the group's end: six floats exactly (another thread may own what follows) */
            _mm_storeu_ps(d + 42, _mm256_castps256_ps128(last));
            _mm_storel_pi((__m64 *)(d + 46), _mm256_extractf128_ps(last, 1));
        }
    }
    for (; k < kc; k++)
        for (int r = 0; r < 6; r++) dst[k * 6 + r] = src[r][k];
}

/* fp32 for the packing kernels (AVX2): the same block layout as
 * pack_rows_bf16, one float per k; full groups of six through pack6_avx2,
 * the last, short group zero-padded. */
static void pack_rows_f32(const float *A, int K, int i0, int rows, int k0, int kc, int mr, float *Ap) {
    for (int g = 0; g < rows; g += mr) {
        float *dst = Ap + (size_t)g * kc;
        const float *src[MR_MAX];
        int gr = rows - g < mr ? rows - g : mr;
        for (int r = 0; r < mr; r++) src[r] = A + (size_t)(i0 + g + (r < gr ? r : 0)) * K + k0;
        if (gr == mr && mr == 6) { /* the AVX2 kernel's groups */
            pack6_avx2(src, kc, dst);
            continue;
        }
        for (int k = 0; k < kc; k++)
            for (int r = 0; r < mr; r++) dst[k * mr + r] = r < gr ? src[r][k] : 0.0f;
    }
}

/* Elements of packed A per row for a K block of kc: kc (fp32), ceil(kc/2)
 * pairs (bf16), rounded up to whole 16-pair tile steps for AMX. */
static int block_rows(const gemm_kernel *kn, int kc) {
    if (!kn->pairs) return kc;
    int ku = (kc + 1) / 2;
    return kn->tiles ? (ku + AMX_PAIRS - 1) / AMX_PAIRS * AMX_PAIRS : ku;
}

/* One row's 16 pairs from 32 floats: vcvtne2ps2bf16 rounds them as
 * act_to_bf16 does, in order (the low half of each pair the even k). */
__attribute__((target("avx512f,avx512bf16"))) static void pairs16_bf16(const float *src, uint32_t *dst) {
    _mm512_storeu_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src)));
}

/* AMX: rows [i0, i0+rows) x columns [k0, k0+kc) of A as bf16 pairs in
 * groups of 16 rows; a group is ku/16 blocks of 16 rows x 16 pairs (one
 * tile each, 1 KB), pair k2 of row r at dst[(k2/16)*256 + r*16 + k2%16];
 * `padded` rows in all (rows rounded up to the kernel's: the 2 x 2 block
 * reads 32). Missing rows, the k past an odd block and the pairs past kc
 * are 0. Full
 * runs of 32 floats convert with AVX512-BF16 where the kernel asks
 * (vector_pack), the rest with act_to_bf16, which gives the same bits. */
static void pack_rows_amx(const float *A, int K, int i0, int rows, int padded, int k0, int kc, int ku,
                          int vector, uint32_t *Ap) {
    for (int g = 0; g < padded; g += AMX_PAIRS) {
        uint32_t *grp = Ap + (size_t)g * ku;
        for (int r = 0; r < AMX_PAIRS; r++) {
            const float *src = g + r < rows ? A + (size_t)(i0 + g + r) * K + k0 : NULL;
            for (int s = 0; s < ku; s += AMX_PAIRS) {
                uint32_t *d = grp + (size_t)s * AMX_PAIRS + r * AMX_PAIRS;
                if (src && vector && 2 * (s + AMX_PAIRS) <= kc) {
                    pairs16_bf16(src + 2 * s, d);
                    continue;
                }
                for (int p = 0; p < AMX_PAIRS; p++) {
                    int k = 2 * (s + p);
                    float lo = src && k < kc ? src[k] : 0.0f;
                    float hi = src && k + 1 < kc ? src[k + 1] : 0.0f;
                    d[p] = act_to_bf16(lo) | (uint32_t)act_to_bf16(hi) << 16;
                }
            }
        }
    }
}

/* Tiles of W for the kernel: its panels per call (3, 2 or 1) into W's
 * (3 per 48 columns), the last tile of 2 perhaps one panel only. */
static int gemm_tile_count(const packed_weight *W, const gemm_kernel *kn) {
    return (W->panels + kn->np - 1) / kn->np;
}

/* The AVX2 and bf16 kernels read A packed once for all threads into the
 * caller's scratch (pack_part); the others read A in place. */
static int shared_pack(const gemm_kernel *kn) { return kn->pack; }

/* Tiles [t0, t1) (48 columns, 32 for AMX's 2 x 2 block, or one 16-column
 * panel for AVX2), all rows.
 * The AVX-512 and generic fp32 kernels read A in place (a K block of 8 rows
 * is 24 KB, 6 KB for generic: L1 holds it); the AVX2 and bf16 kernels read all of A packed
 * beforehand by pack_part (shared_pack). Elements of packed W
 * are 4 bytes either way (an fp32 value, or a pair of bf16 values covering
 * two k), so one loop serves both: `per` k values per element. The K block is even,
 * so a pair never straddles two K blocks. The bias goes in with the last
 * K block's stores. */
static void gemm_tiles(const gemm_job *j, int t0, int t1, float *edge, float *edge_bias) {
    const packed_weight *W = j->W;
    const gemm_kernel *kn = j->kernel;
    int K = W->K, N = W->N, M = j->M, mr = kn->mr, per = kn->pairs ? 2 : 1;
    int nr = kn->np * GEMM_PANEL;      /* columns per tile */
    int Ku = kn->pairs ? W->prows : K; /* rows per panel */
    /* rows per pass: a multiple of mr (no short group inside the matrix) */
    int mc = (MC / mr) * mr;
    /* One image streams its weights from memory once: with one pass over all
     * rows, every weight read from DRAM serves every row; in passes of 60 rows
     * the first pass waits on DRAM and the others on L3. */
    if (shared_pack(kn) && M <= MC_ONE_PASS) mc = j->Mp;
    const char *wbase = kn->pairs ? (const char *)W->bf16 : (const char *)W->data;
    size_t panel_bytes = (size_t)Ku * GEMM_PANEL * 4;
    for (int k0 = 0; k0 < K; k0 += kn->kc) {
        int kc = K - k0 < kn->kc ? K - k0 : kn->kc, ku = block_rows(kn, kc);
        int first = k0 == 0, last = k0 + kc == K;
        for (int i0 = 0; i0 < M; i0 += mc) {
            int rows = M - i0 < mc ? M - i0 : mc;
            for (int t = t0; t < t1; t++) {
                int col0 = t * nr, cols = N - col0 < nr ? N - col0 : nr;
                if (cols <= 0) break; /* only padding is left (a one-panel tile past N) */
                const char *B0 =
                    wbase + (size_t)(kn->np * t) * panel_bytes + (size_t)(k0 / per) * GEMM_PANEL * 4;
                /* the tile's other panels; a 2-panel tile past the last
                 * panel (3 per 48 columns) reads its first twice: those
                 * columns are past N, the edge buffer takes them */
                int more = W->panels - kn->np * t - 1;
                if (more > kn->np - 1) more = kn->np - 1;
                const char *B1 = more >= 1 ? B0 + panel_bytes : B0, *B2 = more >= 2 ? B1 + panel_bytes : B0;
                const float *bias = last && j->bias ? j->bias + col0 : NULL;
                if (bias && cols < nr) { /* the bias has only N values */
                    memcpy(edge_bias, bias, sizeof(float) * (size_t)cols);
                    bias = edge_bias;
                }
                for (int g = 0; g < rows; g += mr) {
                    int gr = rows - g < mr ? rows - g : mr;
                    const void *Ag;
                    size_t rs, ks;
                    if (shared_pack(kn)) { /* block k0 at element (k0 / per) * Mp */
                        Ag = (const uint32_t *)j->Ap + (size_t)(k0 / per) * j->Mp + (size_t)(i0 + g) * ku;
                        rs = 1;
                        ks = (size_t)mr;
                    } else if (gr == mr) {
                        Ag = j->A + (size_t)(i0 + g) * K + k0;
                        rs = (size_t)K;
                        ks = 1;
                    } else { /* A's last rows: the padded copy gemm_forward_act made */
                        Ag = j->pad + k0;
                        rs = (size_t)K;
                        ks = 1;
                    }
                    float *C = j->out + (size_t)(i0 + g) * N + col0;
                    /* The next call's output rows: they sit far apart (N floats), usually
                     * in L3 by now; fetching them while this call runs saves its stall. */
                    if (g + mr < rows)
                        for (int r = 0; r < mr && g + mr + r < rows; r++)
                            for (int c = 0; c < nr; c += 16)
                                __builtin_prefetch(C + (size_t)(mr + r) * N + c, 1, 3);
                    if (gr == mr && cols == nr) {
                        kn->fn(Ag, rs, ks, B0, B1, B2, ku, C, (size_t)N, first, bias);
                        continue;
                    }
                    /* edge tile: the same arithmetic on a full-size buffer */
                    for (int r = 0; r < gr && !first; r++)
                        memcpy(edge + r * nr, C + (size_t)r * N, sizeof(float) * (size_t)cols);
                    kn->fn(Ag, rs, ks, B0, B1, B2, ku, edge, (size_t)nr, first, bias);
                    for (int r = 0; r < gr; r++)
                        memcpy(C + (size_t)r * N, edge + r * nr, sizeof(float) * (size_t)cols);
                }
            }
            /* the pass's rows of these tiles are final: activate them while
             * they are in this core's cache */
            if (last && j->act != GEMM_NO_ACT) {
                int c0 = t0 * nr, c1 = t1 * nr < N ? t1 * nr : N;
                for (int r = 0; r < rows && c0 < c1; r++)
                    j->activate(j->out + (size_t)(i0 + r) * N + c0, (size_t)(c1 - c0), (activation)j->act);
            }
        }
    }
}

/* The packing kernels' A: row groups split among the parts, each packing
 * its groups for every K block, so that every row is packed once for all
 * the threads (each packing all of A for itself cost 5-6% of a forward on
 * 2 threads, against 3.4% on one). Block k0 of width kc starts at element
 * (k0 / per) * Mp (per: k values per element, 2 for bf16 pairs); its group
 * of rows [i, i + mr) at + i * block_rows(kc) (ceil(kc / per), for AMX
 * rounded up to whole steps of 16 pairs). */
static void pack_part(void *ctx, int part, int parts) {
    const gemm_job *j = ctx;
    const gemm_kernel *kn = j->kernel;
    int groups = j->Mp / kn->mr, K = j->W->K;
    int g0 = (int)((long)groups * part / parts), g1 = (int)((long)groups * (part + 1) / parts);
    int i0 = g0 * kn->mr, i1 = g1 * kn->mr < j->M ? g1 * kn->mr : j->M;
    if (i0 >= i1) return;
    for (int k0 = 0; k0 < K; k0 += kn->kc) {
        int kc = K - k0 < kn->kc ? K - k0 : kn->kc;
        if (kn->tiles)
            pack_rows_amx(j->A, K, i0, i1 - i0, g1 * kn->mr - i0, k0, kc, block_rows(kn, kc), kn->vector_pack,
                          (uint32_t *)j->Ap + (size_t)(k0 / 2) * j->Mp + (size_t)i0 * block_rows(kn, kc));
        else if (kn->pairs)
            pack_rows_bf16(j->A, K, i0, i1 - i0, k0, kc, kn->mr,
                           (uint32_t *)j->Ap + (size_t)(k0 / 2) * j->Mp + (size_t)i0 * ((kc + 1) / 2));
        else
            pack_rows_f32(j->A, K, i0, i1 - i0, k0, kc, kn->mr, j->Ap + (size_t)k0 * j->Mp + (size_t)i0 * kc);
    }
}

/* Parts take chunks of tiles until none is left. A tile's result does not
 * depend on which part computes it, so any order gives the same output. */
static void gemm_part(void *ctx, int part, int parts) {
    gemm_job *j = ctx;
    (void)part;
    (void)parts;
    int tiles = gemm_tile_count(j->W, j->kernel);
    /* edge tiles' buffers (gemm_tiles), zeroed once per part: what they
     * keep between calls sits in rows and columns that are thrown away */
    float edge[MR_MAX * NR] __attribute__((aligned(64))) = {0};
    float edge_bias[NR] = {0};
    if (j->kernel->enter) j->kernel->enter();
    for (;;) {
        int t0 = __atomic_fetch_add(&j->next, j->chunk, __ATOMIC_RELAXED);
        if (t0 >= tiles) break;
        gemm_tiles(j, t0, t0 + j->chunk < tiles ? t0 + j->chunk : tiles, edge, edge_bias);
    }
    if (j->kernel->leave) j->kernel->leave();
}

size_t gemm_bf16_scratch_floats(int M, int K) { return (size_t)(M + MR_MAX) * (size_t)bf16_pair_rows(K); }

size_t gemm_scratch_floats(const kernel_table *kt, int M, int K, int precision) {
    /* bf16: M rounded up to the kernel's rows (at most MR_MAX) of ceil(K / 2)
     * pairs (each block's pairs, summed over the even blocks and the last
     * one, is that), the last block rounded up to a whole AMX step: the
     * same for every bf16 kernel, so a table may swap its kernel after
     * sizing the scratch */
    if (precision == GEMM_BF16) return gemm_bf16_scratch_floats(M, K);
    /* fp32 read in place (AVX-512, generic): only A's last, short row group,
     * zero-padded (gemm_forward_act) */
    if (!shared_pack(kt->gemm)) return (size_t)kt->gemm->mr * (size_t)K;
    /* M rounded up to MR is below M + MR_MAX */
    return (size_t)(M + MR_MAX) * (size_t)K;
}

void gemm_forward(const kernel_table *kt, thread_pool *pool, float *out, const float *A,
                  const packed_weight *W, const float *bias, int M, float *scratch) {
    gemm_forward_act(kt, pool, out, A, W, bias, M, scratch, GEMM_NO_ACT);
}

void gemm_forward_act(const kernel_table *kt, thread_pool *pool, float *out, const float *A,
                      const packed_weight *W, const float *bias, int M, float *scratch, int act) {
    /* oneDNN's matmul, where the context has a runner; should it refuse a
     * shape, our kernel computes it (the panels are there) */
    char err[256];
    if (W->dnnl && kt->dnnl &&
        dnnl_gemm_run(kt->dnnl, pool, out, A, W->dnnl, bias, M, (uint16_t *)scratch, err, sizeof(err)) == 0) {
        if (act != GEMM_NO_ACT) kt->activation(out, (size_t)M * W->N, (activation)act);
        return;
    }
    const gemm_kernel *kn = W->bf16 ? kt->gemm_bf16 : kt->gemm;
    gemm_job j = {.out = out,
                  .A = A,
                  .W = W,
                  .bias = bias,
                  .M = M,
                  .kernel = kn,
                  .Ap = scratch,
                  .pad = NULL,
                  .Mp = (M + kn->mr - 1) / kn->mr * kn->mr,
                  .act = act,
                  .activate = kt->activation,
                  .chunk = 0,
                  .next = 0};
    int tiles = gemm_tile_count(W, kn);
    /* Small products are not worth waking anyone. */
    int parts = (double)M * W->N * W->K < 2e5 ? 1 : tiles;
    int threads = thread_pool_threads(pool) < parts ? thread_pool_threads(pool) : parts;
    /* With A packed once for all, a part can take any tile: small chunks,
     * so that a core the host slows down for a while takes fewer of them
     * (equal halves left the other core waiting 2-3% of a forward), and a
     * chunk's output columns (4 panels x M rows: 50 KB at 224) stay in L2
     * across the K blocks (bf16: two 48-column tiles). Kernels that read A
     * in place take equal shares: each reads its rows once per pass for all
     * its tiles (small chunks of them cost AVX-512 4-6% at batch 8). */
    /* One image's rows (A in L2) read in place take chunks too: each chunk
     * re-reads A, but from L2, and a slowed core takes fewer of them
     * (bench/results/NOTES.md, "chunks for one image"). */
    if (shared_pack(kn)) j.chunk = (GEMM_CHUNK + kn->np - 1) / kn->np;
    else j.chunk = M <= MC_ONE_PASS ? 2 : (tiles + threads - 1) / threads;
    /* A's last, short row group for the kernels reading it in place: one
     * zero-padded copy for every tile and thread (made per pass and thread,
     * it cost 1.5% of a forward in memset and memcpy with chunks per tile) */
    int tail = M % kn->mr;
    if (!shared_pack(kn) && tail) {
        j.pad = scratch;
        memcpy(j.pad, A + (size_t)(M - tail) * W->K, sizeof(float) * (size_t)tail * W->K);
        memset(j.pad + (size_t)tail * W->K, 0, sizeof(float) * (size_t)(kn->mr - tail) * W->K);
    }
    if (shared_pack(kn)) thread_pool_run(pool, pack_part, &j, parts < j.Mp / kn->mr ? parts : j.Mp / kn->mr);
    thread_pool_run(pool, gemm_part, &j, parts);
}
