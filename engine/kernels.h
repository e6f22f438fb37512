/* kernels.h: the numeric building blocks of the forward pass.
 *
 * Owns: matmul (OpenBLAS sgemm plus bias), LayerNorm, the activations,
 * RoPE's pairwise rotation, and attention for one image (q and k rotated,
 * scores, softmax, weighted sum, per head: our AVX-512 or AVX2 kernels,
 * OpenBLAS on CPUs with neither). Shapes
 * are in the comments; every array is row-major float32. */
#ifndef COMROPE_KERNELS_H
#define COMROPE_KERNELS_H

#include <stddef.h>

#include "model_config.h"

/* out (T, OC) = inp (T, C) @ weight^T + bias; weight is (OC, C) as PyTorch
 * stores Linear weights; bias (OC) may be NULL. */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                    int T, int C, int OC);

/* out (T, C) = LayerNorm(inp (T, C)) * weight + bias; out may equal inp. */
void layernorm_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int T, int C, float eps);

/* In place over n values. */
void activation_forward(float *x, size_t n, activation act);

/* The vector code of LayerNorm, the activations and the softmax: "avx512",
 * "avx2" or "scalar", chosen from cpuid. kernels_force_isa picks one (NULL:
 * back to cpuid) and returns -1 when the CPU lacks it; for tests and
 * benchmarks, not thread-safe against running kernels. */
int kernels_force_isa(const char *name);
const char *kernels_isa_name(void);

/* One image's attention, heads [h0, h1). qkv is (T, 3*D) with q (already
 * scaled) in columns [0, D), k in [D, 2D), v in [2D, 3D); out is (T, D)
 * with row stride ld_out; scores is 64-byte aligned scratch of
 * attention_scratch_floats(T, head_dim) floats (a multiple of 16; it grows
 * with T, so scratch sized for the largest T serves every smaller one).
 * rot (or NULL) rotates q and k first, as RoPE does: channels (2i, 2i+1),
 * i < npairs, of token t of head h by (cos, sin) =
 * rot[(((h - h0) * T + t) * npairs + i) * 2 + {0, 1}] (rotation.h's
 * head-major ROT_PAIRS table of one layer, from head h0 on); qkv itself is
 * only read. bf16 != 0 (a model loaded for bf16 compute) rounds q, k, v and
 * the probabilities to bf16 for the two products (fp32 sums), where the CPU
 * has AVX512-BF16 and the AVX-512 kernels are in use; otherwise fp32. */
size_t attention_scratch_floats(int T, int head_dim);
void attention_forward(float *out, int ld_out, const float *qkv, float *scores, int T,
                       int heads, int head_dim, int h0, int h1, const float *rot, int npairs,
                       int bf16);

/* RoPE's rotation: n / 2 pairs (x[2i], x[2i+1]) rotated by (cs[2i],
 * cs[2i+1]) = (cos, sin) into dst (dst may be x). */
void rotate_pairs_forward(float *dst, const float *x, const float *cs, int n);

#endif
