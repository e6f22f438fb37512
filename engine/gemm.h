/* gemm.h: our matrix multiply for the token-wise layers.
 *
 * Owns: weights packed once at load into column panels, and
 * out (M, N) = A (M, K) @ W^T + bias with W stored (N, K) as PyTorch does.
 *
 * Why not OpenBLAS here: its sgemm picks different kernels for different M
 * (row tails, tiny M), so a row's result depends on how many other rows are
 * in the call, and a ragged batch would change an image's logits. Every
 * output element here is one sequential sum over k, whatever M is and
 * wherever the row sits, so batch composition cannot change a result.
 * The kernel is chosen once by cpuid (AVX-512, AVX2+FMA, or portable C);
 * the tests compare each against OpenBLAS. */
#ifndef COMROPE_GEMM_H
#define COMROPE_GEMM_H

#include <stddef.h>
#include <stdint.h>

#define GEMM_PANEL 16   /* output columns per packed panel */

/* W (N, K) repacked as panels of (K, 16), zero-padded to a multiple of 48
 * columns (the kernels' tile); or, for bf16 compute, as panels of
 * (ceil(K/2), 16) pairs of bf16 values (W[n][2k], W[n][2k+1]). */
typedef struct {
    int N, K;
    int panels;
    float *data;        /* fp32: panels * K * 16 floats, 64-byte aligned, owned; else NULL */
    uint32_t *bf16;     /* bf16: panels * ceil(K/2) * 16 pairs, owned; else NULL */
} packed_weight;

enum { GEMM_FP32 = 0, GEMM_BF16 = 1 };

/* Packs W (N, K) for fp32 or bf16 compute (weights rounded to nearest
 * even). Returns 0, or -1 (out of memory, or bf16 on a CPU without
 * AVX512-BF16: see gemm_bf16_supported). */
int gemm_pack(const float *W, int N, int K, int precision, packed_weight *out);

/* 1 when this CPU runs the bf16 kernel (AVX512-BF16). */
int gemm_bf16_supported(void);
void gemm_pack_free(packed_weight *p);

/* W[n][k] read back from the packed form (tests and tools; fp32 only). */
float gemm_packed_get(const packed_weight *p, int n, int k);

/* out (M, N) = A (M, K) @ W^T + bias (N, may be NULL). The columns are
 * split among the engine's thread pool (parallel.h). With a bf16-packed W,
 * A is rounded to bf16 as it is packed and the products accumulate in fp32.
 * `scratch` (gemm_scratch_floats(M, K, W's precision) floats, owned by the
 * caller, reused between calls) holds A repacked for the kernel, or only
 * A's last, short row group padded with zeros. */
void gemm_forward(float *out, const float *A, const packed_weight *W, const float *bias, int M,
                  float *scratch);
/* The same, then out = act(out) (an `activation` of model_config.h, or
 * GEMM_NO_ACT), applied by each thread to the columns it just finished
 * while they are still in its cache: the MLP's activation without a pass
 * of its own over the (M, N) output. Each value is computed exactly as
 * activation_forward would (kernels.h). */
#define GEMM_NO_ACT (-1)
void gemm_forward_act(float *out, const float *A, const packed_weight *W, const float *bias, int M,
                      float *scratch, int act);
/* Floats of scratch for M rows of K with weights packed for `precision`
 * (for the fp32 kernels that read A in place, chosen by cpuid or forced:
 * only a zero-padded copy of A's last rows, 8 x K). */
size_t gemm_scratch_floats(int M, int K, int precision);

/* Same as parallel_set_threads (parallel.h): threads that share one
 * gemm_forward, the caller included (default 1). */
void gemm_set_threads(int n);

/* Which kernel gemm_forward uses: "avx512", "avx2" or "generic". */
const char *gemm_kernel_name(void);

/* Forces a kernel (tests): "avx512", "avx2", "generic", or NULL for the
 * cpuid choice. Returns 0, or -1 when the CPU lacks it. */
int gemm_force_kernel(const char *name);

#endif
