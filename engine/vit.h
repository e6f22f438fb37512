/* vit.h: a loaded ComRoPE ViT and its forward pass.
 *
 * Owns: the model (config, weights in one allocation, rotation parameters,
 * the image preparation of the checkpoint), loading a checkpoint directory,
 * and the ragged-batch forward: N images of any sizes in one call, their
 * tokens concatenated for the token-wise layers, attention per image.
 *
 * Threads: a vit_model is read-only after vit_load and may be shared; each
 * thread that runs forwards owns a vit_context (its thread pool, kernel
 * table and workspace). Contexts share nothing, so their forwards run at
 * once. */
#ifndef COMROPE_VIT_H
#define COMROPE_VIT_H

#include <stddef.h>
#include <stdint.h>

#include "dispatch.h"
#include "engine_error.h"
#include "gemm.h"
#include "image.h"
#include "model_config.h"
#include "parallel.h"
#include "rotation.h"

typedef struct {
    float *ln1_w, *ln1_b; // (D)
    packed_weight qkv;    // (3D, D): q, k, v stacked; q rows pre-scaled by head_dim^-0.5,
                          // q and k rows of ComRoPE models turned into the Schur basis
    float *qkv_b;         // (3D), scaled and turned likewise
    packed_weight out;    // (D, D)
    float *out_b;         // (D)
    float *ln2_w, *ln2_b; // (D)
    packed_weight fc1;    // (I, D)
    float *fc1_b;         // (I)
    packed_weight fc2;    // (D, I)
    float *fc2_b;         // (D)
} vit_layer;

typedef struct {
    packed_weight patch; // (D, C*p*p): the stride-p convolution as a matrix
    float *class_emb;    // (D)
    float *ape_mid;      // (P0, D) or NULL: the APE table's middle column, the only
                         // column the official sampling ever reads
    float *pre_ln_w, *pre_ln_b;
    vit_layer *layers; // L layers (owned array; its pointers point into params)
    float *post_ln_w, *post_ln_b;
    float *head_w, *head_b;   // (K, D), or the first Linear (M, D) of an MLP head
    float *head2_w, *head2_b; // (K, M) or NULL
} vit_weights;

typedef struct {
    vit_config cfg;
    image_prep prep; // how images become input (preprocessor_config.json or default)
    vit_weights w;
    float *params; // the one allocation every unpacked weight points into;
                   // the big matrices live packed (gemm.h), only once
    size_t num_params;
    vit_rotation rot;
    char *dir;               // the checkpoint directory (owned)
    int max_tokens;          // per image; larger resolutions are refused
    int precision;           // GEMM_FP32 or GEMM_BF16
    precision_choice choice; // how precision was chosen (asked, auto's table, warnings)
    int backend;             // GEMM_BACKEND_OWN, _ONEDNN or _AMX: who runs the bf16 GEMMs
    int amx_shape;           // GEMM_AMX_1X3 or _2X2: our AMX kernel's block (backend AMX)
    int attention_gemm;      // bf16: attention as two GEMMs on the bf16 GEMM kernel (ignored in fp32)
} vit_model;

/* Knobs of a loaded model; vit_default_options() fills every one. */
typedef struct {
    int precision;      // GEMM_FP32 (default: exact), GEMM_BF16 (opt-in: AVX512-BF16
                        // products with fp32 sums; about 3 significant digits; honoured
                        // even where it does not pay, with choice.warn set), or
                        // PRECISION_AUTO (bf16 where bf16_pays(), else fp32: dispatch.h)
    int max_tokens;     // per image; larger resolutions are refused
    int isa;            // the level the model's contexts will run at (CPU_ISA_BEST, or
                        // forced lower: no bf16 below avx512), for the choice above
    int gemm_backend;   // GEMM_BACKEND_AUTO (oneDNN for bf16 on AMX CPUs where the build
                        // has it, else ours), _OWN, _ONEDNN or _AMX (bf16 only; gemm.h)
    int amx_shape;      // GEMM_AMX_DEFAULT, or the other block of our AMX kernel (gemm.h):
                        // for benchmarks until one is measured faster on an AMX CPU
    int attention_gemm; // 1: a bf16 model's attention runs as two GEMMs on its bf16 GEMM
                        // kernel (with gemm-backend amx: on the tiles); 0 (default): on the
                        // attention kernels (bf16 where it pays, else fp32). For benchmarks
                        // until measured on an AMX CPU (bench/README.md)
} vit_options;

vit_options vit_default_options(void);

/* Loads `dir` (config.json, model.safetensors, optional
 * preprocessor_config.json: none there, image_prep_default's; there and not
 * a regular file, or unreadable, refused) with `opt` (NULL: the defaults).
 * No file of it is waited on (a FIFO is refused at once). Returns 0 and a
 * model to release with vit_free; or, with a message naming the file, key
 * or tensor, -1, or ENGINE_ERR_MEMORY (engine_error.h) when an allocation
 * was refused (the same files may load later). */
int vit_load(const char *dir, const vit_options *opt, vit_model **out, char *err, size_t errlen);
void vit_free(vit_model *m);

/* One image's pixels: (C, h, w), normalized, as the model takes them. */
typedef struct {
    int h, w;
    const float *pixels;
} vit_image;

/* Sees the residual stream x (T, D) of a forward's whole batch (image i's
 * tokens are rows [start[i], start[i+1]) of n images) after the embeddings
 * and pre-LayerNorm (stage 0) and after each encoder layer l (stage l + 1);
 * for debugging parity layer by layer, and for tests. Runs on the thread
 * that called the forward. */
typedef void (*vit_observer)(void *arg, int stage, const float *x, const int *start, int n, int T, int D);

/* Knobs of a context; vit_context_default_params() fills every one. */
typedef struct {
    int threads;          // pieces of each parallel step, the caller's thread included
    int isa;              // CPU_ISA_BEST, or a lower cpu_isa to force (tests, benchmarks)
    int max_images;       // images per forward
    int max_tokens;       // tokens per forward, all images together; raised to the model's
                          // per-image limit so that every valid image runs alone
    size_t memory_bytes;  // a limit on memory below the machine's physical memory (the daemon:
                          // its cgroup's memory.max), 0 (default) none: a workspace larger
                          // than the smaller of the two is refused (ENGINE_ERR_WORKSPACE)
    int memory_shares;    // contexts that hold such a workspace at once (the daemon: its workers),
                          // each bounded by its share of that memory; 0 or 1: this one alone
    size_t memory_held;   // bytes of that memory held already, by what is not these contexts
                          // (the daemon: weights, other models' workspaces); the shares are
                          // of what is left. 0 (default): none
    vit_observer observe; // NULL, or called after every stage of a forward
    void *observe_arg;
} vit_context_params;

vit_context_params vit_context_default_params(void);

/* What one thread needs to run forwards: a thread pool (threads - 1
 * workers), the kernel table chosen once for its ISA, and the workspace,
 * sized by max_images and max_tokens when the context is made: the
 * activation arena (address space reserved at once, pages written once
 * the first time a forward reaches them, so that first-touch faults stay
 * out of the GEMMs), the per-image bookkeeping, and rotation tables cached
 * per grid (ph, pw) up to the workspace's tokens of tables in all. A forward
 * over the limits is refused; nothing is allocated per forward but the
 * rotation table of a grid not seen lately. */
typedef struct {
    const vit_model *model;
    vit_context_params params;
    kernel_table kernels;
    thread_pool *pool;
    int tmax;     // tokens of the largest image a forward may hold
    float *arena; // activations
    size_t arena_floats;
    size_t arena_touched;       // floats of the arena written once already
    int *start;                 // (max_images + 1) token offsets of each image in the batch
    const rotation_table **rot; // (max_images) each image's rotation table
    double *pos;                // (2 * tmax) positions of one image
    rotation_table *cache;      // (cache_slots) tables by grid
    uint64_t *cache_stamp;      // (cache_slots) the forward that last used each
    int cache_slots;
    size_t cache_tokens;     // tokens of the cached tables, at most cache_max_tokens
    size_t cache_max_tokens; // the workspace's tokens (max_tokens, capped by max_images)
    uint64_t clock;          // forwards run
} vit_context;

/* Makes a context for `m` (which must outlive it) from `p` (NULL: the
 * defaults). Returns 0; or, with a message naming the parameter, -1 (an
 * ISA this CPU lacks, limits below 1, a bf16 model on a table without
 * bf16 kernels), ENGINE_ERR_WORKSPACE (engine_error.h: the workspace of
 * max_images / max_tokens is larger than its memory_shares share of the
 * memory memory_held leaves: lower them), or
 * ENGINE_ERR_MEMORY (an allocation was refused). */
int vit_context_new(const vit_model *m, const vit_context_params *p, vit_context **out, char *err,
                    size_t errlen);
void vit_context_free(vit_context *ctx);

/* Bytes of memory ctx's workspace may hold (the activation arena, reserved
 * at vit_context_new, and the most its rotation cache keeps): what a
 * caller that bounds the memory of several contexts (memory_held) counts
 * for it. */
size_t vit_context_bytes(const vit_context *ctx);

/* The memory the workspaces must fit in: this machine's physical memory,
 * or `asked` (vit_context_params.memory_bytes) where that is less; 0 when
 * neither is known. *bound (unless NULL) names the one that applied. The
 * bound vit_context_new checks against, for a caller that shows it. */
size_t vit_memory_bound(size_t asked, const char **bound);

/* Bytes of memory m's weights hold (the parameters and the packed
 * matrices); counted likewise. */
size_t vit_model_bytes(const vit_model *m);

/* Floating-point work of one image at h x w, in GFLOP (multiply-adds count
 * two): the GEMMs, attention's two products and the head. */
double vit_gflop(const vit_model *m, int h, int w);

/* Tokens of one h x w image (h, w multiples of the patch size): the class
 * token and one per patch. The one place that counts them. */
int vit_tokens(const vit_model *m, int h, int w);

/* Checks that h x w is a resolution the model can run: positive multiples
 * of the patch size, at most max_tokens tokens. The message names the
 * nearest valid sizes. Returns 0 or -1. */
int vit_check_resolution(const vit_model *m, int h, int w, char *err, size_t errlen);

/* Logits (n, num_class) of ctx's model for n images of any valid sizes, at
 * most max_images of them with at most max_tokens tokens in all. Batch
 * composition does not change an image's logits, bit for bit (gemm.h).
 * Returns 0; or, with a message naming the image or the limit, -1, or
 * ENGINE_ERR_MEMORY (a grid's rotation table refused memory). */
int vit_forward_ragged(vit_context *ctx, const vit_image *images, int n, float *logits, char *err,
                       size_t errlen);

/* Adds the sampled absolute position embedding of T tokens at positions
 * pos (2 per token, from vit_positions) to x (T, D). No-op without an APE. */
void vit_add_ape(const vit_model *m, float *x, const double *pos, int T);

#endif
