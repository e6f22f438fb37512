/* dispatch.h: the table of CPU kernels one engine context uses.
 *
 * Owns: the kernel_table struct (one function pointer per kernel kind:
 * GEMM, attention with its softmax, GELU and the other activations,
 * LayerNorm, RoPE's pairwise rotation) and choosing it once for an
 * instruction-set level (cpu.h). Kernels never ask cpuid themselves: the
 * context chooses its table when it is made, so two contexts may run at
 * different levels side by side (a test forcing AVX2 next to a daemon
 * worker on AVX-512), and a scalar table always exists to compare against.
 * Every entry of one table computes each value the same way wherever it
 * sits in a batch (tails masked, reductions per row), so batches stay
 * invariant within a table. */
#ifndef COMROPE_DISPATCH_H
#define COMROPE_DISPATCH_H

#include <stddef.h>

#include "cpu.h"
#include "model_config.h"

/* out (T, C) = LayerNorm(inp (T, C)) * weight + bias; out may equal inp. */
typedef void (*layernorm_fn)(float *out, const float *inp, const float *weight, const float *bias, int T,
                             int C, float eps);
/* In place over n values. */
typedef void (*activation_fn)(float *x, size_t n, activation act);
/* n / 2 pairs (x[2i], x[2i+1]) rotated by (cs[2i], cs[2i+1]) = (cos, sin)
 * into dst (dst may be x). */
typedef void (*rotate_pairs_fn)(float *dst, const float *x, const float *cs, int n);
/* One head of attention: out (T, hd) = softmax(q k^T) v, rows of q, k, v
 * and out `ld*` floats apart; scratch is 64-byte aligned, of
 * attention_scratch floats. */
typedef void (*attention_head_fn)(float *out, int ld_out, const float *q, int ldq, const float *k, int ldk,
                                  const float *v, int ldv, float *scratch, int T, int hd);

typedef struct gemm_kernel gemm_kernel; /* gemm.c's micro-kernel and its blocking */

typedef struct {
    cpu_isa isa;
    const char *name; /* cpu_isa_name(isa) */
    layernorm_fn layernorm;
    activation_fn activation;
    rotate_pairs_fn rotate_pairs;
    attention_head_fn attention_head;           /* fp32 */
    attention_head_fn attention_head_bf16;      /* bf16 products, fp32 sums; NULL below AVX-512
                                               or without AVX512-BF16, and in a context on a
                                               CPU where it does not pay (bf16_attention_pays) */
    size_t (*attention_scratch)(int T, int hd); /* floats either head kernel needs */
    const gemm_kernel *gemm;                    /* fp32-packed weights */
    const gemm_kernel *gemm_bf16;               /* bf16-packed weights: vdpbf16ps (NULL below AVX-512
                                               or without AVX512-BF16), or in a context whose
                                               model asked for gemm-backend amx, the AMX kernel */
    int attention_gemm;                         /* 1: a bf16 model's attention runs as two GEMMs on
                                               gemm_bf16 (the AMX tiles with gemm-backend amx;
                                               vit_options.attention_gemm), else on the head
                                               kernels; set before the context sizes its scratch */
    struct dnnl_runner *dnnl;                   /* the context's oneDNN state (dnnl_gemm.h) when its
                                               model's bf16 GEMMs run through oneDNN, else NULL;
                                               owned by the context, not chosen by ISA */
} kernel_table;

/* Fills *kt for `isa` (CPU_ISA_BEST: the best this CPU runs). Returns 0, or
 * -1 with a message when the CPU lacks the level. */
int kernel_table_init(kernel_table *kt, int isa, char *err, size_t errlen);

/* The precisions a model may ask for (gemm.h's GEMM_FP32 and GEMM_BF16,
 * and auto: the table below picks one). */
#define PRECISION_AUTO (-1)

/* "fp32", "bf16", "auto". */
const char *precision_name(int precision);
/* The precision named `name`. Returns 0, or -1 for an unknown name. */
int precision_parse(const char *name, int *out);

/* The table behind --precision auto: 1 when bf16 GEMMs run faster than
 * fp32 on a CPU with features `f`, 0 when they do not (or cannot run), and
 * in *why a sentence saying why (static). amx_backend: whether this build
 * has a GEMM backend that drives AMX tiles (dispatch_amx_backend()).
 * A table by CPU feature rather than a calibration forward at load: the
 * choice decides the logits, so it must not depend on how busy the machine
 * was during start-up (a shared host times anything unreliably), and the
 * same config on the same CPU must always give the same numbers. */
int bf16_pays(const cpu_features *f, int amx_backend, const char **why);

/* 1 when a bf16 model's attention products (QK^T and PV) should go
 * through vdpbf16ps (kt->attention_head_bf16) on a CPU with features `f`:
 * where it outruns an fp32 FMA (AMD Zen 4/5). On Intel it runs at about
 * half the FMA's FLOP rate (161 vs 310-328 GFLOP/s measured on a Xeon,
 * issue 25), so there a bf16 model's attention stays fp32, whichever
 * backend runs its GEMMs (AMX speeds up only those). Unmeasured vendors:
 * fp32. */
int bf16_attention_pays(const cpu_features *f);

/* 1 when this build has a GEMM backend that uses AMX tiles. */
int dispatch_amx_backend(void);

/* What a requested precision becomes for contexts at `isa` (CPU_ISA_BEST
 * or a forced level) on a CPU with features `f`. */
typedef struct {
    int precision;   /* GEMM_FP32 or GEMM_BF16 */
    int requested;   /* GEMM_FP32, GEMM_BF16 or PRECISION_AUTO */
    int bf16_pays;   /* bf16_pays() of this CPU */
    const char *why; /* bf16_pays()'s sentence */
    int warn;        /* 1: bf16 was asked where it does not pay (it is
                          honoured; the start-up log and the metadata say so) */
} precision_choice;

/* Returns 0, or -1 with a message when bf16 is asked where it cannot run
 * (no AVX512-BF16, or `isa` forced below avx512). Auto never fails: it
 * falls back to fp32. */
int precision_choose(int requested, int isa, const cpu_features *f, int amx_backend, precision_choice *out,
                     char *err, size_t errlen);

/* The modules' parts of a table, for a level this CPU runs (dispatch.c
 * calls them; nobody else needs to). */
void kernels_fill_table(kernel_table *kt, cpu_isa isa);   /* kernels.c */
void attention_fill_table(kernel_table *kt, cpu_isa isa); /* attention.c */
void gemm_fill_table(kernel_table *kt, cpu_isa isa);      /* gemm.c */

#endif
