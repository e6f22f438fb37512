/* dnnl_gemm.h: oneDNN's bf16 matmul primitive as a GEMM backend (optional).
 *
 * Owns: weights in bf16, in the layout oneDNN's matmul chose for them
 * (reordered once at load), and per engine context a runner: oneDNN's
 * engine and stream and a cache of matmul primitives by shape (M, N, K),
 * each made the first time its shape is seen and reused, never made per
 * call. Built only where CMake found oneDNN (COMROPE_HAVE_DNNL); elsewhere
 * dnnl_gemm_available() is 0 and the rest report that it is absent.
 *
 * Why: AMX. oneDNN (2.5 and later, Debian's 2.6 included) runs its bf16
 * matmul on AMX tiles by default where the CPU and Linux (5.16+) allow it;
 * no ONEDNN_MAX_CPU_ISA is needed. On CPUs without AMX our own vdpbf16ps
 * kernel is kept (measured: bench/dnnl_gemm_bench.c, README "Precision").
 *
 * Numbers: A is rounded to bf16 (nearest even) as it is converted, the
 * products accumulate in fp32, as with our bf16 kernel, but oneDNN picks
 * its blocking (and so the order of the sums) per shape, and each piece of
 * the pool runs a slice of rows whose size depends on M: an image's logits
 * may change in the last bits with the batch it is in. The same
 * batch composition gives the same logits, call after call (one primitive
 * per shape, deterministic): tests/test_parity.c checks both what holds
 * and the tolerance. */
#ifndef COMROPE_DNNL_GEMM_H
#define COMROPE_DNNL_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "parallel.h"

typedef struct dnnl_weight dnnl_weight;
typedef struct dnnl_runner dnnl_runner;

/* 1 when this build has oneDNN. */
int dnnl_gemm_available(void);

/* W (N, K) (PyTorch's Linear layout) as oneDNN's bf16 weights for
 * out = A @ W^T. Returns 0, or -1 with a message (ENGINE_ERR_MEMORY,
 * engine_error.h, when an allocation was refused; dnnl_runner_new alike). */
int dnnl_weight_new(const float *W, int N, int K, dnnl_weight **out, char *err, size_t errlen);
void dnnl_weight_free(dnnl_weight *w);

/* One context's oneDNN state for a pool of `threads` pieces: a stream and
 * the primitives of each piece. */
int dnnl_runner_new(int threads, dnnl_runner **out, char *err, size_t errlen);
void dnnl_runner_free(dnnl_runner *r);

/* out (M, N) = A (M, K) @ W^T + bias (N, may be NULL), the rows split
 * among `pool`'s pieces (at most the runner's), each running oneDNN on one
 * thread. scratch holds A in bf16: M * K values. Returns 0; or, with a
 * message, -1 (a shape oneDNN cannot run, or no build with oneDNN) or
 * ENGINE_ERR_MEMORY (its zero bias refused). */
int dnnl_gemm_run(dnnl_runner *r, thread_pool *pool, float *out, const float *A, const dnnl_weight *W,
                  const float *bias, int M, uint16_t *scratch, char *err, size_t errlen);

#endif
