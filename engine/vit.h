/* vit.h: a loaded ComRoPE ViT and its forward pass.
 *
 * Owns: the model (config, weights in one allocation, rotation parameters,
 * the image preparation of the checkpoint), loading a checkpoint directory,
 * and the ragged-batch forward: N images of any sizes in one call, their
 * tokens concatenated for the token-wise layers, attention per image.
 *
 * Threads: a vit_model is read-only after vit_load and may be shared; each
 * thread that runs forwards owns one vit_workspace (activations arena and
 * rotation-table cache). */
#ifndef COMROPE_VIT_H
#define COMROPE_VIT_H

#include <stddef.h>
#include <stdint.h>

#include "gemm.h"
#include "image.h"
#include "model_config.h"
#include "rotation.h"

typedef struct {
    float *ln1_w, *ln1_b;     // (D)
    packed_weight qkv;        // (3D, D): q, k, v stacked; q rows pre-scaled by head_dim^-0.5,
                              // q and k rows of ComRoPE models turned into the Schur basis
    float *qkv_b;             // (3D), scaled and turned likewise
    packed_weight out;        // (D, D)
    float *out_b;             // (D)
    float *ln2_w, *ln2_b;     // (D)
    packed_weight fc1;        // (I, D)
    float *fc1_b;             // (I)
    packed_weight fc2;        // (D, I)
    float *fc2_b;             // (D)
} vit_layer;

typedef struct {
    packed_weight patch;      // (D, C*p*p): the stride-p convolution as a matrix
    float *class_emb;         // (D)
    float *ape_mid;           // (P0, D) or NULL: the APE table's middle column, the only
                              // column the official sampling ever reads
    float *pre_ln_w, *pre_ln_b;
    vit_layer *layers;        // L layers (owned array; its pointers point into params)
    float *post_ln_w, *post_ln_b;
    float *head_w, *head_b;   // (K, D), or the first Linear (M, D) of an MLP head
    float *head2_w, *head2_b; // (K, M) or NULL
} vit_weights;

typedef struct {
    vit_config cfg;
    image_prep prep;          // how images become input (preprocessor_config.json or default)
    vit_weights w;
    float *params;            // the one allocation every unpacked weight points into;
                              // the big matrices live packed (gemm.h), only once
    size_t num_params;
    vit_rotation rot;
    char *dir;                // the checkpoint directory (owned)
    int max_tokens;           // per image; larger resolutions are refused
    int precision;            // GEMM_FP32 or GEMM_BF16
} vit_model;

/* Knobs of a loaded model; vit_default_options() fills every one. */
typedef struct {
    int precision;   // GEMM_FP32 (default: exact) or GEMM_BF16 (opt-in: AVX512-BF16
                     // products with fp32 sums; about 3 significant digits)
    int max_tokens;  // per image; larger resolutions are refused
} vit_options;

vit_options vit_default_options(void);

/* Loads `dir` (config.json, model.safetensors, optional
 * preprocessor_config.json) with `opt` (NULL: the defaults). Returns 0 and a
 * model to release with vit_free, or -1 with a message naming the file, key
 * or tensor. */
int vit_load(const char *dir, const vit_options *opt, vit_model **out, char *err,
             size_t errlen);
void vit_free(vit_model *m);

/* One image's pixels: (C, h, w), normalized, as the model takes them. */
typedef struct {
    int h, w;
    const float *pixels;
} vit_image;

#define VIT_ROTATION_CACHE 16

/* Per-thread scratch: the activation arena and the per-image bookkeeping
 * grow to the largest batch seen and are reused (no allocation per forward
 * once warm); rotation tables are cached per grid (ph, pw). */
typedef struct {
    const vit_model *model;
    float *arena;             // activations; prefaulted when allocated
    size_t arena_floats;
    int *start;               // (images + 1) token offsets of each image in the batch
    const rotation_table **rot; // (images) each image's rotation table
    size_t images_cap;
    double *pos;              // (2 * tokens) positions of one image
    size_t pos_cap;
    rotation_table cache[VIT_ROTATION_CACHE];
    uint64_t cache_stamp[VIT_ROTATION_CACHE];
    uint64_t clock;
} vit_workspace;

vit_workspace *vit_workspace_new(const vit_model *m);
void vit_workspace_free(vit_workspace *ws);

/* Floating-point work of one image at h x w, in GFLOP (multiply-adds count
 * two): the GEMMs, attention's two products and the head. */
double vit_gflop(const vit_model *m, int h, int w);

/* Checks that h x w is a resolution the model can run: positive multiples
 * of the patch size, at most max_tokens tokens. The message names the
 * nearest valid sizes. Returns 0 or -1. */
int vit_check_resolution(const vit_model *m, int h, int w, char *err, size_t errlen);

/* Tokens of one image at h x w (valid sizes): the class token and one per
 * patch. The batch limits (max-batch-tokens) count these. */
int vit_image_tokens(const vit_model *m, int h, int w);

/* Logits (n, num_class) for n images of any valid sizes. Batch composition
 * does not change an image's logits (beyond float rounding of the GEMMs).
 * Returns 0, or -1 with a message naming the image. */
int vit_forward_ragged(const vit_model *m, vit_workspace *ws, const vit_image *images, int n,
                       float *logits, char *err, size_t errlen);

/* Adds the sampled absolute position embedding of T tokens at positions
 * pos (2 per token, from vit_positions) to x (T, D). No-op without an APE. */
void vit_add_ape(const vit_model *m, float *x, const double *pos, int T);

#endif
