/* rotation.h: the rotations of RoPE, LieRE and ComRoPE.
 *
 * Owns: token positions on the patch grid, the matrix exponential (double,
 * scaling and squaring with a Pade approximant), the real Schur form of a
 * skew-symmetric block (which turns ComRoPE's commuting blocks into plain
 * pairwise rotations with learned frequencies), the per-layer rotation
 * parameters of a loaded model, and the per-resolution tables of cos/sin (or
 * of LieRE's full blocks) that the forward applies to q and k.
 *
 * Two shapes of rotation exist after loading:
 *   ROT_PAIRS  (vanilla-rope, comrope-ap, comrope-ld): channels (2i, 2i+1)
 *              of every head, i < npairs, rotate by the angle
 *              pos_0*freq[.., i, 0] + pos_1*freq[.., i, 1]; the remaining
 *              channels (odd block sizes) do not rotate.
 *   ROT_BLOCKS (liere): every b x b block of a head is multiplied by
 *              expm(pos_0*G_0 + pos_1*G_1), one matrix per token. */
#ifndef COMROPE_ROTATION_H
#define COMROPE_ROTATION_H

#include <stddef.h>
#include <stdint.h>

#include "dispatch.h"
#include "model_config.h"

typedef enum { ROT_NONE = 0, ROT_PAIRS, ROT_BLOCKS } rotation_kind;

typedef struct {
    rotation_kind kind;
    int layers, heads, head_dim;
    /* ROT_PAIRS */
    int npairs;   /* rotated pairs per head */
    double *freq; /* [layers][heads][npairs][2], owned */
    /* ROT_BLOCKS */
    int block;   /* b */
    int nblocks; /* head_dim / b */
    double *gen; /* [layers][heads][2][nblocks][b][b] generators per axis, owned */
} vit_rotation;

/* A rotation table for one grid of ph x pw patches (tokens = 1 + ph*pw). */
typedef struct {
    int ph, pw, tokens;
    float *data; /* ROT_PAIRS: [layers][heads][tokens][npairs][2] (cos, sin);
                      ROT_BLOCKS: [layers][tokens][heads][nblocks][b*b]; owned */
    size_t floats;
} rotation_table;

/* Positions of the tokens of a ph x pw grid: pos[2*t + a] for token t (the
 * class token first, then row-major patches) on axis a (0 = row, 1 = column). */
void vit_positions(const vit_config *cfg, int ph, int pw, double *pos);

/* expm of the n x n row-major matrix A into out (n <= 64). */
void expm_double(const double *A, int n, double *out);

/* Real Schur form of a skew-symmetric b x b matrix S (row-major):
 * S = Q * blockdiag([0,-w_0; w_0,0], ..., [0,-w_{m-1}; w_{m-1},0], 0, ...) * Q^T
 * with m = b/2 (rounded down), Q orthogonal. Q is row-major; its column
 * 2i, 2i+1 are the pair i (S q_{2i} = w_i q_{2i+1}), the last column (b odd)
 * spans the kernel. w_i >= 0. Returns 0, or -1 if b > 64. */
int skew_schur(const double *S, int b, double *Q, double *w);

/* Floats of a table per token (its floats: tokens times this; 0 for
 * ROT_NONE): what a bound on cached tokens of tables bounds in memory. */
size_t rotation_token_floats(const vit_rotation *rot);

/* Builds the table for a ph x pw grid. Returns 0 or ENGINE_ERR_MEMORY. */
int rotation_table_build(const vit_rotation *rot, const vit_config *cfg, int ph, int pw, rotation_table *out);
void rotation_table_free(rotation_table *t);

/* Rotates q and k of heads [h0, h1) in `tokens` rows of the layer's fused
 * qkv activations (row stride ld floats; q at column 0, k at column D), in
 * place; ROT_PAIRS through `rotate_pairs` (a kernel table's). (Per head:
 * the forward rotates each head in the thread that runs its attention,
 * right before it.) */
void rotation_apply(const vit_rotation *rot, const rotation_table *table, int layer, float *qkv, int ld,
                    int tokens, int h0, int h1, rotate_pairs_fn rotate_pairs);

/* The rotation parameters of a model of config c, zeroed, sized for its
 * position encoding (ROT_PAIRS frequencies, ROT_BLOCKS generators, or
 * ROT_NONE). Returns 0, or ENGINE_ERR_MEMORY (engine_error.h). */
int rotation_init(vit_rotation *rot, const vit_config *c, char *err, size_t errlen);

/* comrope-ap / comrope-ld, layer `layer`: folds each block's Schur basis
 * into the q and k rows of qkv_w (3D, D) and qkv_b (3D), and sets the
 * layer's pair frequencies from freqs (H, 1, nb, b, b) and, for
 * comrope-ld, multiplier (2, nb). Returns 0, or ENGINE_ERR_MEMORY. */
int rotation_fold_commuting(const vit_config *c, vit_rotation *rot, int layer, float *qkv_w, float *qkv_b,
                            const float *freqs, const float *multiplier, char *err, size_t errlen);

/* liere: the generators of layer l from its freqs (H, 2, nb, b, b). */
void rotation_set_liere(const vit_config *c, vit_rotation *rot, int l, const float *freqs);

/* vanilla-rope: the pair frequencies of layer l (from theta_base). */
void rotation_set_vanilla(const vit_config *c, vit_rotation *rot, int l);

void vit_rotation_free(vit_rotation *rot);

#endif
