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
 * The kernel comes from the caller's kernel table (dispatch.h: AVX-512,
 * AVX2+FMA or portable C, and AVX512-BF16 or AMX tiles for bf16-packed
 * weights); the tests compare the fp32 ones against OpenBLAS, the bf16 ones
 * against an fp64 sum of the bf16-rounded values. */
#ifndef COMROPE_GEMM_H
#define COMROPE_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "dispatch.h"
#include "parallel.h"

#define GEMM_PANEL 16 /* output columns per packed panel */

/* W (N, K) repacked as panels of (K, 16), zero-padded to a multiple of 48
 * columns (the kernels' tile); or, for bf16 compute, as panels of
 * (prows, 16) pairs of bf16 values (W[n][2k], W[n][2k+1]), prows being
 * ceil(K/2) rounded up to 16 with zero pairs: 16 panel rows are one AMX
 * tile of weights (the vdpbf16ps kernel never reads the padding). */
typedef struct {
    int N, K;
    int panels;
    int prows;                /* bf16: rows of pairs per panel; else 0 */
    float *data;              /* fp32: panels * K * 16 floats, 64-byte aligned, owned; else NULL */
    uint32_t *bf16;           /* bf16: panels * prows * 16 pairs, owned; else NULL */
    struct dnnl_weight *dnnl; /* bf16 through oneDNN (dnnl_gemm.h): its weights, owned;
                                 else NULL. The bf16 panels stay beside them: the
                                 kernel of a context without a oneDNN runner */
} packed_weight;

enum { GEMM_FP32 = 0, GEMM_BF16 = 1 };

/* Who runs the bf16 GEMMs: AUTO (oneDNN on AMX CPUs where the build has
 * it, else our own vdpbf16ps kernel), OWN (always that kernel), ONEDNN
 * (always oneDNN: tests and benchmarks on CPUs without AMX), AMX (our own
 * AMX tile kernel: CPUs with AMX only; opt-in until it is measured against
 * oneDNN on one, bench/README.md). fp32 is always ours. */
enum { GEMM_BACKEND_AUTO = 0, GEMM_BACKEND_OWN = 1, GEMM_BACKEND_ONEDNN = 2, GEMM_BACKEND_AMX = 3 };
/* "auto", "own", "onednn", "amx" */
const char *gemm_backend_name(int backend);
int gemm_backend_parse(const char *name, int *out);

/* Packs W (N, K) for fp32 or bf16 compute (weights rounded to nearest
 * even). The packed form is the same for every kernel of its precision
 * (plain C: any CPU packs; whether a kernel can run it is the kernel
 * table's business). Returns 0, or -1 (out of memory). */
int gemm_pack(const float *W, int N, int K, int precision, packed_weight *out);
void gemm_pack_free(packed_weight *p);

/* W[n][k] read back from the packed form (tests and tools; fp32 only). */
float gemm_packed_get(const packed_weight *p, int n, int k);

/* out (M, N) = A (M, K) @ W^T + bias (N, may be NULL), with the kernel of
 * `kt` for W's precision (a bf16-packed W needs kt->gemm_bf16; with oneDNN
 * weights and kt->dnnl, oneDNN's matmul, the activation after it). The columns
 * are split among `pool`'s threads (NULL: the caller alone). With a
 * bf16-packed W, A is rounded to bf16 as it is packed and the products
 * accumulate in fp32. `scratch` (gemm_scratch_floats(kt, M, K, W's
 * precision) floats, owned by the caller, reused between calls) holds A
 * repacked for the kernel, or only A's last, short row group padded with
 * zeros. */
void gemm_forward(const kernel_table *kt, thread_pool *pool, float *out, const float *A,
                  const packed_weight *W, const float *bias, int M, float *scratch);
/* The same, then out = act(out) (an `activation` of model_config.h, or
 * GEMM_NO_ACT), applied by each thread to the columns it just finished
 * while they are still in its cache: the MLP's activation without a pass
 * of its own over the (M, N) output. Each value is computed exactly as
 * kt->activation would. */
#define GEMM_NO_ACT (-1)
void gemm_forward_act(const kernel_table *kt, thread_pool *pool, float *out, const float *A,
                      const packed_weight *W, const float *bias, int M, float *scratch, int act);
/* Floats of scratch for M rows of K with weights packed for `precision`
 * (for the fp32 kernels that read A in place: only a zero-padded copy of
 * A's last, short row group, the kernel's rows x K). */
size_t gemm_scratch_floats(const kernel_table *kt, int M, int K, int precision);
/* The same for bf16-packed weights, whatever the bf16 kernel. */
size_t gemm_bf16_scratch_floats(int M, int K);

/* Activations as bf16-packed weights, for a GEMM against them (attention
 * on the bf16 GEMM: its keys, and its values transposed): W (N, K) with
 * element (n, k) at X[n * ld + k], or with `transposed` at X[k * ld + n],
 * rounded as the bf16 kernels round activations (vcvtne2ps2bf16: nearest
 * even, denormals to zero), into the caller's `words` (64-byte aligned,
 * gemm_bf16_act_words(N, K) of them, reused); *out describes them and
 * owns nothing (no gemm_pack_free). Needs AVX512-BF16. */
size_t gemm_bf16_act_words(int N, int K);
void gemm_pack_bf16_act(const float *X, int ld, int transposed, int N, int K, uint32_t *words,
                        packed_weight *out);

/* Our AMX kernel for bf16-packed weights (tdpbf16ps on 16 x 16 tiles), in
 * one of two blocks per call: GEMM_AMX_1X3, A's rows 16 at a time against
 * a 48-column tile of W (three accumulator tiles), or GEMM_AMX_2X2, 32 rows
 * against 32 columns (four accumulators, all eight tiles, a tile load per
 * tdpbf16ps instead of 4 per 3). Both give the same bits. For a context's
 * kernel table (kt->gemm_bf16); NULL where this CPU has no AMX-BF16 or
 * Linux did not grant the tile state (cpu_has_amx_bf16), or for an unknown
 * shape. Bit for bit batch invariant like the others. Which block is
 * faster is for an AMX CPU to measure (bench/README.md): GEMM_AMX_DEFAULT
 * is the one the engine uses unless told (vit_options.amx_shape). */
enum { GEMM_AMX_1X3 = 0, GEMM_AMX_2X2 = 1 };
#define GEMM_AMX_DEFAULT GEMM_AMX_1X3
const gemm_kernel *gemm_amx_kernel(int shape);
/* "1x3", "2x2" */
const char *gemm_amx_shape_name(int shape);
int gemm_amx_shape_parse(const char *name, int *out);

/* The same kernel with each tile instruction computed in C as the Intel
 * SDM defines it (tdpbf16ps: per row and column, the even and the odd
 * products of the 16 pairs in two fused fp32 sums, then added to C;
 * denormals read and written as zero): its packing, blocking and edges
 * run on any CPU, so the tests check them everywhere and compare the
 * hardware against it where AMX exists. vector_pack: A converted to bf16
 * with AVX512-BF16 as the hardware kernel does (NULL where the CPU lacks
 * it), else in C. Tests only; slow. */
const gemm_kernel *gemm_amx_emulated(int shape, int vector_pack);

#endif
