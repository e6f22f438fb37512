/* rotation.c: positions, expm, the Schur fold and rotation tables (see rotation.h).
 *
 * Everything that defines a rotation is computed in double and rounded to
 * float32 once, in the tables: a float32 expm is visibly inexact, and the
 * tables are built once per resolution, so double costs nothing that matters. */
#include "rotation.h"
#include "engine_error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define MAX_BLOCK 64

void vit_positions(const vit_config *cfg, int ph, int pw, double *pos) {
    /* The class token sits at cls_position on every axis, also when
     * axis_scale is false (the official code never divides it). */
    pos[0] = cfg->cls_position;
    pos[1] = cfg->cls_position;
    for (int r = 0; r < ph; r++) {
        for (int c = 0; c < pw; c++) {
            double *p = pos + 2 * (1 + r * pw + c);
            if (cfg->axis_scale) {
                p[0] = (r + 0.5) / ph;
                p[1] = (c + 0.5) / pw;
            } else {
                p[0] = r;
                p[1] = c;
            }
        }
    }
}

/* ---- small dense linear algebra in double (n <= MAX_BLOCK) ---- */

static void matmul_nn(const double *A, const double *B, double *C, int n) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < n; k++) s += A[i * n + k] * B[k * n + j];
            C[i * n + j] = s;
        }
}

/* Solves D X = N for X (n x n) by Gaussian elimination with partial
 * pivoting; D and N are overwritten. */
static void solve(double *D, double *N, int n) {
    for (int col = 0; col < n; col++) {
        int piv = col;
        for (int r = col + 1; r < n; r++)
            if (fabs(D[r * n + col]) > fabs(D[piv * n + col])) piv = r;
        if (piv != col) {
            for (int k = 0; k < n; k++) {
                double t = D[col * n + k];
                D[col * n + k] = D[piv * n + k];
                D[piv * n + k] = t;
                t = N[col * n + k];
                N[col * n + k] = N[piv * n + k];
                N[piv * n + k] = t;
            }
        }
        double d = D[col * n + col];
        for (int r = 0; r < n; r++) {
            if (r == col) continue;
            double f = D[r * n + col] / d;
            if (f == 0) continue;
            for (int k = 0; k < n; k++) {
                D[r * n + k] -= f * D[col * n + k];
                N[r * n + k] -= f * N[col * n + k];
            }
        }
    }
    for (int r = 0; r < n; r++)
        for (int k = 0; k < n; k++) N[r * n + k] /= D[r * n + r];
}

void expm_double(const double *A, int n, double *out) {
    /* Scaling and squaring with the [6/6] Pade approximant: scale A by 2^-s
     * so that its infinity norm is <= 0.5, where the approximant's relative
     * error is below 1e-16, then square s times. */
    static const double c[7] = {1.0, 1.0 / 2, 5.0 / 44, 1.0 / 66, 1.0 / 792, 1.0 / 15840, 1.0 / 665280};
    double X[MAX_BLOCK * MAX_BLOCK], P[MAX_BLOCK * MAX_BLOCK], T[MAX_BLOCK * MAX_BLOCK];
    double N[MAX_BLOCK * MAX_BLOCK], D[MAX_BLOCK * MAX_BLOCK];
    double norm = 0;
    for (int i = 0; i < n; i++) {
        double row = 0;
        for (int j = 0; j < n; j++) row += fabs(A[i * n + j]);
        if (row > norm) norm = row;
    }
    int s = 0;
    if (norm > 0.5) s = (int)ceil(log2(norm / 0.5));
    double scale = ldexp(1.0, -s);
    for (int i = 0; i < n * n; i++) X[i] = A[i] * scale;

    /* N = sum c_k X^k, D = sum (-1)^k c_k X^k */
    for (int i = 0; i < n * n; i++) {
        N[i] = 0;
        D[i] = 0;
        P[i] = 0;
    }
    for (int i = 0; i < n; i++) {
        P[i * n + i] = 1;
        N[i * n + i] = c[0];
        D[i * n + i] = c[0];
    }
    for (int k = 1; k <= 6; k++) {
        matmul_nn(P, X, T, n);
        memcpy(P, T, sizeof(double) * (size_t)(n * n));
        double sign = (k % 2) ? -1.0 : 1.0;
        for (int i = 0; i < n * n; i++) {
            N[i] += c[k] * P[i];
            D[i] += sign * c[k] * P[i];
        }
    }
    solve(D, N, n);
    for (int k = 0; k < s; k++) {
        matmul_nn(N, N, T, n);
        memcpy(N, T, sizeof(double) * (size_t)(n * n));
    }
    memcpy(out, N, sizeof(double) * (size_t)(n * n));
}

/* Cyclic Jacobi on the symmetric n x n matrix M (destroyed): eigenvalues in
 * lambda, eigenvectors as the columns of V (row-major). */
static void jacobi_eigen(double *M, int n, double *lambda, double *V) {
    for (int i = 0; i < n * n; i++) V[i] = 0;
    for (int i = 0; i < n; i++) V[i * n + i] = 1;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, total = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                total += M[i * n + j] * M[i * n + j];
                if (i != j) off += M[i * n + j] * M[i * n + j];
            }
        if (off <= 1e-30 * total || off == 0) break;
        for (int p = 0; p < n; p++) {
            for (int q = p + 1; q < n; q++) {
                double apq = M[p * n + q];
                if (apq == 0) continue;
                double theta = (M[q * n + q] - M[p * n + p]) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double cs = 1 / sqrt(t * t + 1), sn = t * cs;
                for (int k = 0; k < n; k++) { /* M = J^T M J */
                    double mkp = M[k * n + p], mkq = M[k * n + q];
                    M[k * n + p] = cs * mkp - sn * mkq;
                    M[k * n + q] = sn * mkp + cs * mkq;
                }
                for (int k = 0; k < n; k++) {
                    double mpk = M[p * n + k], mqk = M[q * n + k];
                    M[p * n + k] = cs * mpk - sn * mqk;
                    M[q * n + k] = sn * mpk + cs * mqk;
                }
                for (int k = 0; k < n; k++) {
                    double vkp = V[k * n + p], vkq = V[k * n + q];
                    V[k * n + p] = cs * vkp - sn * vkq;
                    V[k * n + q] = sn * vkp + cs * vkq;
                }
            }
        }
    }
    for (int i = 0; i < n; i++) lambda[i] = M[i * n + i];
}

/* Removes from x (length n) its components along the first m columns of Q
 * (twice, for stability); returns the norm of what remains. */
static double orthogonalize(double *x, const double *Q, int n, int m) {
    for (int pass = 0; pass < 2; pass++)
        for (int c = 0; c < m; c++) {
            double d = 0;
            for (int i = 0; i < n; i++) d += Q[i * n + c] * x[i];
            for (int i = 0; i < n; i++) x[i] -= d * Q[i * n + c];
        }
    double norm = 0;
    for (int i = 0; i < n; i++) norm += x[i] * x[i];
    return sqrt(norm);
}

int skew_schur(const double *S, int b, double *Q, double *w) {
    if (b > MAX_BLOCK) return -1;
    double M[MAX_BLOCK * MAX_BLOCK], V[MAX_BLOCK * MAX_BLOCK], lambda[MAX_BLOCK];
    int order[MAX_BLOCK], used[MAX_BLOCK];
    /* M = S^T S = -S^2 is symmetric and positive semi-definite; its
     * eigenvalues are the w_i^2, each twice. */
    double scale = 0;
    for (int i = 0; i < b; i++)
        for (int j = 0; j < b; j++) {
            double s = 0;
            for (int k = 0; k < b; k++) s += S[k * b + i] * S[k * b + j];
            M[i * b + j] = s;
            if (fabs(S[i * b + j]) > scale) scale = fabs(S[i * b + j]);
        }
    jacobi_eigen(M, b, lambda, V);
    for (int i = 0; i < b; i++) {
        order[i] = i;
        used[i] = 0;
    }
    for (int i = 1; i < b; i++) /* insertion sort, largest eigenvalue first */
        for (int j = i; j > 0 && lambda[order[j]] > lambda[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }

    /* Build Q column by column. For each pair take an eigenvector u of M
     * (orthogonal to what is chosen), v = S u / |S u|: then S u = w v and
     * S v = -w u with w = |S u|. The span of the chosen columns is invariant
     * under S, so its complement is too and the next u stays consistent even
     * when eigenvalues repeat. A u with S u ~ 0 pairs with any orthogonal
     * vector, at frequency 0. */
    double x[MAX_BLOCK], y[MAX_BLOCK];
    int m = 0; /* columns chosen */
    double tiny = 1e-13 * (scale > 0 ? scale : 1.0);
    for (int pair = 0; pair < b / 2; pair++) {
        double norm = 0;
        int cand = -1;
        for (int k = 0; k < b && cand < 0; k++) {
            if (used[order[k]]) continue;
            used[order[k]] = 1;
            for (int i = 0; i < b; i++) x[i] = V[i * b + order[k]];
            norm = orthogonalize(x, Q, b, m);
            if (norm > 0.5) cand = order[k];
        }
        if (cand < 0) { /* numerically impossible: fall back to a unit vector */
            for (int e = 0; e < b; e++) {
                for (int i = 0; i < b; i++) x[i] = (i == e);
                norm = orthogonalize(x, Q, b, m);
                if (norm > 0.5) break;
            }
        }
        for (int i = 0; i < b; i++) Q[i * b + m] = x[i] / norm;
        m++;
        for (int i = 0; i < b; i++) {
            double s = 0;
            for (int k = 0; k < b; k++) s += S[i * b + k] * Q[k * b + (m - 1)];
            y[i] = s;
        }
        double su = orthogonalize(y, Q, b, m);
        if (su <= tiny) { /* u is in the kernel: pair it with any other kernel vector */
            su = 0;
            for (int k = 0; k < b && su <= 0.5; k++) {
                if (used[order[k]]) continue;
                for (int i = 0; i < b; i++) y[i] = V[i * b + order[k]];
                su = orthogonalize(y, Q, b, m);
                if (su > 0.5) used[order[k]] = 1;
            }
            for (int e = 0; e < b && su <= 0.5; e++) {
                for (int i = 0; i < b; i++) y[i] = (i == e);
                su = orthogonalize(y, Q, b, m);
            }
        }
        for (int i = 0; i < b; i++) Q[i * b + m] = y[i] / su;
        m++;
        /* w = v^T S u, exactly the entry the Schur form has there */
        double wv = 0;
        for (int i = 0; i < b; i++) {
            double s = 0;
            for (int k = 0; k < b; k++) s += S[i * b + k] * Q[k * b + (m - 2)];
            wv += Q[i * b + (m - 1)] * s;
        }
        w[pair] = wv;
    }
    if (b % 2) { /* the last column spans the kernel */
        double norm = 0;
        for (int e = 0; e < b && norm <= 0.5; e++) {
            for (int i = 0; i < b; i++) x[i] = (i == e);
            norm = orthogonalize(x, Q, b, m);
        }
        for (int i = 0; i < b; i++) Q[i * b + m] = x[i] / norm;
    }
    return 0;
}

size_t rotation_token_floats(const vit_rotation *rot) {
    size_t LH = (size_t)rot->layers * (size_t)rot->heads;
    switch (rot->kind) {
    case ROT_PAIRS: return LH * (size_t)rot->npairs * 2;
    case ROT_BLOCKS: return LH * (size_t)rot->nblocks * (size_t)rot->block * (size_t)rot->block;
    default: return 0;
    }
}

int rotation_table_build(const vit_rotation *rot, const vit_config *cfg, int ph, int pw,
                         rotation_table *out) {
    memset(out, 0, sizeof(*out));
    out->ph = ph;
    out->pw = pw;
    out->tokens = 1 + ph * pw;
    if (rot->kind == ROT_NONE) return 0;
    int T = out->tokens, L = rot->layers, H = rot->heads;
    double *pos = malloc(sizeof(double) * 2 * (size_t)T);
    if (!pos) goto oom;
    vit_positions(cfg, ph, pw, pos);
    if (rot->kind == ROT_PAIRS) {
        int np = rot->npairs;
        out->floats = (size_t)T * rotation_token_floats(rot);
        out->data = malloc(sizeof(float) * (out->floats ? out->floats : 1));
        if (!out->data) goto oom;
        float *o = out->data;
        for (int l = 0; l < L; l++)
            for (int h = 0; h < H; h++)
                for (int t = 0; t < T; t++) {
                    const double *f = rot->freq + ((size_t)(l * H + h) * np) * 2;
                    for (int i = 0; i < np; i++) {
                        double angle = pos[2 * t] * f[2 * i] + pos[2 * t + 1] * f[2 * i + 1];
                        *o++ = (float)cos(angle);
                        *o++ = (float)sin(angle);
                    }
                }
    } else {
        int b = rot->block, nb = rot->nblocks;
        out->floats = (size_t)T * rotation_token_floats(rot);
        out->data = malloc(sizeof(float) * out->floats);
        if (!out->data) goto oom;
        double A[MAX_BLOCK * MAX_BLOCK], R[MAX_BLOCK * MAX_BLOCK];
        float *o = out->data;
        for (int l = 0; l < L; l++)
            for (int t = 0; t < T; t++)
                for (int h = 0; h < H; h++)
                    for (int j = 0; j < nb; j++) {
                        const double *g0 = rot->gen + ((((size_t)l * H + h) * 2 + 0) * nb + j) * b * b;
                        const double *g1 = rot->gen + ((((size_t)l * H + h) * 2 + 1) * nb + j) * b * b;
                        for (int i = 0; i < b * b; i++) A[i] = pos[2 * t] * g0[i] + pos[2 * t + 1] * g1[i];
                        expm_double(A, b, R);
                        for (int i = 0; i < b * b; i++) *o++ = (float)R[i];
                    }
    }
    free(pos);
    return 0;
oom:
    free(pos);
    /* empty (tokens 0), as a free cache slot is: a slot left with its
     * grid and no data was found by the next forward at that grid, which
     * read the NULL table (SIGSEGV) */
    memset(out, 0, sizeof(*out));
    return ENGINE_ERR_MEMORY;
}

void rotation_table_free(rotation_table *t) {
    free(t->data);
    memset(t, 0, sizeof(*t));
}

void rotation_apply(const vit_rotation *rot, const rotation_table *table, int layer, float *qkv, int ld,
                    int tokens, int h0, int h1, rotate_pairs_fn rotate_pairs) {
    int H = rot->heads, hd = rot->head_dim, D = H * hd;
    if (rot->kind == ROT_PAIRS) {
        int np = rot->npairs;
        /* head-major table: one head's rotation reads its cosines and sines
         * in one run (token-major, each token's 256 bytes sat 3 KB apart);
         * attention_forward reads the same table when it rotates itself */
        for (int h = h0; h < h1; h++)
            for (int t = 0; t < tokens; t++) {
                const float *cs = table->data + (((size_t)layer * H + h) * table->tokens + t) * np * 2;
                for (int which = 0; which < 2; which++) { /* q, then k */
                    float *x = qkv + (size_t)t * ld + which * D + h * hd;
                    rotate_pairs(x, x, cs, 2 * np);
                }
            }
    } else if (rot->kind == ROT_BLOCKS) {
        int b = rot->block, nb = rot->nblocks;
        float tmp[MAX_BLOCK];
        for (int t = 0; t < tokens; t++) {
            const float *Rt = table->data + (((size_t)layer * table->tokens + t) * H) * nb * b * b;
            for (int which = 0; which < 2; which++) {
                float *x = qkv + (size_t)t * ld + which * D;
                for (int h = h0; h < h1; h++)
                    for (int j = 0; j < nb; j++) {
                        float *xb = x + h * hd + j * b;
                        const float *R = Rt + ((size_t)h * nb + j) * b * b;
                        for (int r = 0; r < b; r++) {
                            float s = 0;
                            for (int k = 0; k < b; k++) s += R[r * b + k] * xb[k];
                            tmp[r] = s;
                        }
                        memcpy(xb, tmp, sizeof(float) * (size_t)b);
                    }
            }
        }
    }
}

/* ---- a model's rotation parameters, set as its checkpoint is read ---- */

int rotation_init(vit_rotation *r, const vit_config *c, char *err, size_t errlen) {
    r->layers = c->num_hidden_layers;
    r->heads = c->num_attention_heads;
    r->head_dim = c->head_dim;
    size_t LH = (size_t)r->layers * r->heads;
    switch (c->custom_pe_type) {
    case PE_VANILLA_ROPE:
    case PE_COMROPE_AP:
    case PE_COMROPE_LD:
        r->kind = ROT_PAIRS;
        r->npairs = c->custom_pe_type == PE_VANILLA_ROPE
                        ? c->head_dim / 2
                        : (c->head_dim / c->block_size) * (c->block_size / 2);
        r->freq = calloc(LH * r->npairs * 2 + 1, sizeof(double));
        if (!r->freq) goto oom;
        break;
    case PE_LIERE:
        r->kind = ROT_BLOCKS;
        r->block = c->block_size;
        r->nblocks = c->head_dim / c->block_size;
        r->gen = calloc(LH * 2 * r->nblocks * r->block * r->block, sizeof(double));
        if (!r->gen) goto oom;
        break;
    default: r->kind = ROT_NONE;
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory for the rotation parameters");
    return ENGINE_ERR_MEMORY;
}

/* comrope-ap / comrope-ld: fold each block's Schur basis into the q and k
 * rows of the layer (spec: "Attention with rotation"). For block j of head h
 * with S_j = F_j - F_j^T = Q_j W Q_j^T, R_j(s) q = Q_j rot(w s) Q_j^T q, and
 * q'.k' only sees Q_j^T q and Q_j^T k, so the rows of W_q and W_k become
 * Q_j^T times themselves and the layer is pairwise RoPE with frequencies w.
 * The pairs of all blocks come first in the head (channels 2i, 2i+1), the
 * one non-rotating channel of each odd block after them. */
int rotation_fold_commuting(const vit_config *c, vit_rotation *rot, int layer, float *qkv_w, float *qkv_b,
                            const float *freqs, const float *multiplier, char *err, size_t errlen) {
    int H = c->num_attention_heads, hd = c->head_dim, D = c->hidden_size, b = c->block_size;
    int nb = hd / b, half = b / 2, np = nb * half;
    double S[64 * 64], Q[64 * 64], w[32];
    double *rows = malloc(sizeof(double) * (size_t)hd * (D + 1));
    if (!rows) {
        snprintf(err, errlen, "out of memory folding layer %d", layer);
        return ENGINE_ERR_MEMORY;
    }
    for (int h = 0; h < H; h++) {
        double *f = rot->freq + ((size_t)layer * H + h) * np * 2;
        for (int which = 0; which < 2; which++) { /* q rows, then k rows */
            float *W = qkv_w + ((size_t)which * D + (size_t)h * hd) * D;
            float *B = qkv_b + (size_t)which * D + (size_t)h * hd;
            for (int j = 0; j < nb; j++) {
                const float *F = freqs + ((size_t)h * nb + j) * b * b;
                for (int r = 0; r < b; r++)
                    for (int k = 0; k < b; k++) S[r * b + k] = (double)F[r * b + k] - (double)F[k * b + r];
                skew_schur(S, b, Q, w);
                for (int col = 0; col < b; col++) {
                    /* new channel of column col of Q_j */
                    int ch = col < 2 * half ? 2 * (j * half + col / 2) + col % 2 : 2 * np + j;
                    double *row = rows + (size_t)ch * (D + 1);
                    for (int i = 0; i <= D; i++) row[i] = 0;
                    for (int r = 0; r < b; r++) {
                        double q = Q[r * b + col];
                        const float *src = W + (size_t)(j * b + r) * D;
                        for (int i = 0; i < D; i++) row[i] += q * src[i];
                        row[D] += q * B[j * b + r];
                    }
                }
                if (which == 0) {
                    for (int i = 0; i < half; i++) {
                        int a = (j * half + i);
                        double s0, s1; /* the block's scalar s = pos_0*s0 + pos_1*s1 */
                        if (c->custom_pe_type == PE_COMROPE_AP) {
                            s0 = (j % 2 == 0);
                            s1 = (j % 2 == 1);
                        } else {
                            s0 = multiplier[j];
                            s1 = multiplier[nb + j];
                        }
                        f[2 * a] = w[i] * s0;
                        f[2 * a + 1] = w[i] * s1;
                    }
                }
            }
            for (int ch = 0; ch < hd; ch++) {
                for (int i = 0; i < D; i++) W[(size_t)ch * D + i] = (float)rows[(size_t)ch * (D + 1) + i];
                B[ch] = (float)rows[(size_t)ch * (D + 1) + D];
            }
        }
    }
    free(rows);
    return 0;
}

/* liere: the generators of layer l, from its freqs (H, 2, nb, b, b). */
void rotation_set_liere(const vit_config *c, vit_rotation *rot, int l, const float *freqs) {
    int H = c->num_attention_heads, b = c->block_size, nb = c->head_dim / b;
    /* generator of axis a, block j: (F_{a,j} - F_{a,j}^T) / scale_factor, in double */
    for (int h = 0; h < H; h++)
        for (int a = 0; a < 2; a++)
            for (int j = 0; j < nb; j++) {
                const float *F = freqs + (((size_t)h * 2 + a) * nb + j) * b * b;
                double *G = rot->gen + ((((size_t)l * H + h) * 2 + a) * nb + j) * b * b;
                for (int r = 0; r < b; r++)
                    for (int k = 0; k < b; k++)
                        G[r * b + k] = ((double)F[r * b + k] - (double)F[k * b + r]) / c->scale_factor;
            }
}

/* vanilla-rope: the frequencies of layer l (no parameters: theta_base). */
void rotation_set_vanilla(const vit_config *c, vit_rotation *rot, int l) {
    int H = c->num_attention_heads, hd = c->head_dim;
    /* pair j of a head: axis j / n, frequency theta_base^(j mod n), n = head_dim/4 */
    int n = hd / 4;
    for (int h = 0; h < H; h++)
        for (int j = 0; j < hd / 2; j++) {
            double *fr = rot->freq + (((size_t)l * H + h) * (hd / 2) + j) * 2;
            double t = pow(c->theta_base, j % n);
            fr[0] = j / n == 0 ? t : 0;
            fr[1] = j / n == 1 ? t : 0;
        }
}

void vit_rotation_free(vit_rotation *rot) {
    free(rot->freq);
    free(rot->gen);
    memset(rot, 0, sizeof(*rot));
}
