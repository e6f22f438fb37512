/* kernels.h: the numeric building blocks of the forward pass.
 *
 * Owns: LayerNorm, the activations, RoPE's pairwise rotation and one head
 * of attention (scores, softmax, weighted sum), each for AVX-512, AVX2 and
 * plain C (attention: OpenBLAS), handed out through a context's kernel
 * table (dispatch.h); attention for one image over a range of heads (q and
 * k rotated first); and matmul for the head (OpenBLAS sgemm plus bias).
 * kernels.c holds the element-wise kernels, attention.c attention; the
 * vector helpers both use are simd.h.
 * Shapes are in the comments; every array is row-major float32. */
#ifndef COMROPE_KERNELS_H
#define COMROPE_KERNELS_H

#include <stddef.h>

#include "dispatch.h"
#include "model_config.h"

/* out (T, OC) = inp (T, C) @ weight^T + bias; weight is (OC, C) as PyTorch
 * stores Linear weights; bias (OC) may be NULL. */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int T, int C,
                    int OC);

/* One image's attention, heads [h0, h1), with the kernels of `kt`. qkv is
 * (T, 3*D) with q (already scaled) in columns [0, D), k in [D, 2D), v in
 * [2D, 3D); out is (T, D) with row stride ld_out; scores is 64-byte aligned
 * scratch of attention_scratch_floats(kt, T, head_dim) floats (a multiple
 * of 16; it grows with T, so scratch sized for the largest T serves every
 * smaller one). rot (or NULL) rotates q and k first, as RoPE does: channels
 * (2i, 2i+1), i < npairs, of token t of head h by (cos, sin) =
 * rot[(((h - h0) * T + t) * npairs + i) * 2 + {0, 1}] (rotation.h's
 * head-major ROT_PAIRS table of one layer, from head h0 on); qkv itself is
 * only read. bf16 != 0 (a model loaded for bf16 compute) rounds q, k, v and
 * the probabilities to bf16 for the two products (fp32 sums) where the
 * table has a bf16 head kernel (AVX-512 with AVX512-BF16) or runs attention
 * on its bf16 GEMM (kt->attention_gemm); otherwise fp32. */
size_t attention_scratch_floats(const kernel_table *kt, int T, int head_dim);
void attention_forward(const kernel_table *kt, float *out, int ld_out, const float *qkv, float *scores, int T,
                       int heads, int head_dim, int h0, int h1, const float *rot, int npairs, int bf16);

#endif
