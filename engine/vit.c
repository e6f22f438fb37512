/* vit.c: loading a ComRoPE ViT checkpoint and its forward pass (see vit.h).
 *
 * Read top to bottom: the parameter layout, loading (with the ComRoPE Schur
 * fold), the workspace, then the forward: patch embedding, APE, pre-LN, the
 * encoder layers (LN1, fused QKV, rotation, attention per image, out_proj,
 * LN2, MLP), post-LN of the class token and the head.
 *
 * The spec is ../shared/spec/model.md; the comments name its sections. */
#include "vit.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dnnl_gemm.h"
#include "engine_error.h"
#include "kernels.h"
#include "parallel.h"
#include "safetensors.h"
#include "small_file.h"

/* ------------------------------------------------------------------------ */
/* Parameter layout: every weight is a slice of one float allocation.        */

/* Sizes of the slices, in the order they are carved out of m->params. The
 * big matrices (patch embedding, qkv, out_proj, fc1, fc2) are not there:
 * they are packed for gemm_forward as they are read, and kept only packed. */
typedef struct {
    size_t class_emb, ape_mid, pre_ln, layer, post_ln, head_w, head_b, head2_w, head2_b;
} param_sizes;

static param_sizes sizes_of(const vit_config *c) {
    size_t D = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, K = (size_t)c->num_class;
    size_t M = (size_t)c->mlp_intermediate;
    param_sizes s;
    s.class_emb = D;
    s.ape_mid = c->has_ape ? (size_t)c->ape_side * D : 0;
    s.pre_ln = 2 * D;
    /* ln1 (2D) + qkv bias (3D) + out bias (D) + ln2 (2D) + fc1 bias (I) + fc2 bias (D) */
    s.layer = 2 * D + 3 * D + D + 2 * D + I + D;
    s.post_ln = 2 * D;
    s.head_w = (M ? M : K) * D;
    s.head_b = M ? M : K;
    s.head2_w = M ? K * M : 0;
    s.head2_b = M ? K : 0;
    return s;
}

static float *carve(float **cursor, size_t n) {
    float *p = *cursor;
    *cursor += n;
    return n ? p : NULL;
}

static void point_weights(vit_model *m) {
    const vit_config *c = &m->cfg;
    param_sizes s = sizes_of(c);
    size_t D = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    float *cur = m->params;
    vit_weights *w = &m->w;
    w->class_emb = carve(&cur, s.class_emb);
    w->ape_mid = carve(&cur, s.ape_mid);
    w->pre_ln_w = carve(&cur, D);
    w->pre_ln_b = carve(&cur, D);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        vit_layer *L = &w->layers[l];
        L->ln1_w = carve(&cur, D);
        L->ln1_b = carve(&cur, D);
        L->qkv_b = carve(&cur, 3 * D);
        L->out_b = carve(&cur, D);
        L->ln2_w = carve(&cur, D);
        L->ln2_b = carve(&cur, D);
        L->fc1_b = carve(&cur, I);
        L->fc2_b = carve(&cur, D);
    }
    w->post_ln_w = carve(&cur, D);
    w->post_ln_b = carve(&cur, D);
    w->head_w = carve(&cur, s.head_w);
    w->head_b = carve(&cur, s.head_b);
    w->head2_w = carve(&cur, s.head2_w);
    w->head2_b = carve(&cur, s.head2_b);
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                   */

static int pack(const vit_model *m, const float *W, int N, int K, packed_weight *out, char *err,
                size_t errlen) {
    if (gemm_pack(W, N, K, m->precision, out)) {
        snprintf(err, errlen, "out of memory packing a %dx%d weight", N, K);
        return ENGINE_ERR_MEMORY;
    }
    if (m->backend == GEMM_BACKEND_ONEDNN) return dnnl_weight_new(W, N, K, &out->dnnl, err, errlen);
    return 0;
}

/* Takes one tensor into dst; the shape is given as up to 5 dimensions. */
static int take(safetensors_file *f, const char *name, float *dst, char *err, size_t errlen, int ndim,
                int64_t d0, int64_t d1, int64_t d2, int64_t d3, int64_t d4) {
    int64_t shape[5] = {d0, d1, d2, d3, d4};
    return safetensors_take(f, name, ndim, shape, dst, err, errlen);
}

/* The APE table (1, P0, P0, D) reduced to its middle column (P0, D). The
 * official sampling (a 5-D grid_sample with grid (0, 2*pos_0-1, 2*pos_1-1))
 * reads column (P0-1)/2 only: the average of the two middle columns when P0
 * is even. */
static int load_ape(safetensors_file *f, const vit_config *c, float *ape_mid, char *err, size_t errlen) {
    size_t P0 = (size_t)c->ape_side, D = (size_t)c->hidden_size;
    float *table = malloc(sizeof(float) * P0 * P0 * D);
    if (!table) {
        snprintf(err, errlen, "out of memory for the position embedding");
        return ENGINE_ERR_MEMORY;
    }
    int rc = take(f, "vision_model.embeddings.position_embedding", table, err, errlen, 4, 1, (int64_t)P0,
                  (int64_t)P0, (int64_t)D, 0);
    if (rc == 0) {
        size_t lo = (P0 - 1) / 2, hi = P0 / 2; /* equal when P0 is odd */
        for (size_t r = 0; r < P0; r++)
            for (size_t d = 0; d < D; d++) {
                float a = table[(r * P0 + lo) * D + d], b = table[(r * P0 + hi) * D + d];
                ape_mid[r * D + d] = lo == hi ? a : 0.5f * a + 0.5f * b;
            }
    }
    free(table);
    return rc;
}

/* Reads the layer's attention weights (fused into qkv, packed) and its
 * rotation; `scratch` holds at least 3*D*D floats. */
static int load_attention(vit_model *m, safetensors_file *f, int l, float *scratch, char *err,
                          size_t errlen) {
    const vit_config *c = &m->cfg;
    int D = c->hidden_size, H = c->num_attention_heads, hd = c->head_dim, b = c->block_size;
    int nb = hd / b;
    vit_layer *L = &m->w.layers[l];
    char name[256];
    const char *proj[3] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof(name), "vision_model.encoder.layers.%d.self_attn.%s.weight", l, proj[i]);
        if (take(f, name, scratch + (size_t)i * D * D, err, errlen, 2, D, D, 0, 0, 0)) return -1;
        snprintf(name, sizeof(name), "vision_model.encoder.layers.%d.self_attn.%s.bias", l, proj[i]);
        if (take(f, name, L->qkv_b + (size_t)i * D, err, errlen, 1, D, 0, 0, 0, 0)) return -1;
    }
    snprintf(name, sizeof(name), "vision_model.encoder.layers.%d.self_attn.out_proj.bias", l);
    if (take(f, name, L->out_b, err, errlen, 1, D, 0, 0, 0, 0)) return -1;

    pe_type pe = c->custom_pe_type;
    int rc = -1;
    float *freqs = NULL, *mult = NULL;
    if (pe == PE_COMROPE_AP || pe == PE_COMROPE_LD || pe == PE_LIERE) {
        int axes = pe == PE_LIERE ? 2 : 1;
        freqs = malloc(sizeof(float) * (size_t)H * axes * nb * b * b);
        mult = malloc(sizeof(float) * 2 * (size_t)nb);
        if (!freqs || !mult) {
            snprintf(err, errlen, "out of memory for layer %d's rotation", l);
            rc = ENGINE_ERR_MEMORY;
            goto cleanup;
        }
        snprintf(name, sizeof(name), "vision_model.encoder.layers.%d.self_attn.freqs", l);
        if (take(f, name, freqs, err, errlen, 5, H, axes, nb, b, b)) goto cleanup;
        if (pe == PE_COMROPE_LD) {
            snprintf(name, sizeof(name), "vision_model.encoder.layers.%d.self_attn.multiplier", l);
            if (take(f, name, mult, err, errlen, 5, 1, 2, nb, 1, 1)) goto cleanup;
        }
    }
    if (pe == PE_COMROPE_AP || pe == PE_COMROPE_LD) {
        if ((rc = rotation_fold_commuting(c, &m->rot, l, scratch, L->qkv_b, freqs, mult, err, errlen)))
            goto cleanup;
    } else if (pe == PE_LIERE) {
        rotation_set_liere(c, &m->rot, l, freqs);
    } else if (pe == PE_VANILLA_ROPE) {
        rotation_set_vanilla(c, &m->rot, l);
    }
    /* q = q_proj(x) * head_dim^-0.5: folded into the q rows */
    float scale = 1.0f / sqrtf((float)hd);
    for (size_t i = 0; i < (size_t)D * D; i++) scratch[i] *= scale;
    for (int i = 0; i < D; i++) L->qkv_b[i] *= scale;
    if ((rc = pack(m, scratch, 3 * D, D, &L->qkv, err, errlen))) goto cleanup;
    snprintf(name, sizeof(name), "vision_model.encoder.layers.%d.self_attn.out_proj.weight", l);
    if ((rc = take(f, name, scratch, err, errlen, 2, D, D, 0, 0, 0))) goto cleanup;
    rc = pack(m, scratch, D, D, &L->out, err, errlen);
cleanup:
    free(freqs);
    free(mult);
    return rc;
}

/* Reads every tensor; the big matrices pass through `scratch` (at least
 * max(3D*D, I*D, D*C*p*p) floats) on their way to being packed. */
static int load_weights(vit_model *m, safetensors_file *f, float *scratch, char *err, size_t errlen) {
    const vit_config *c = &m->cfg;
    int D = c->hidden_size, I = c->intermediate_size, K = c->num_class, M = c->mlp_intermediate;
    int C = c->num_channels, p = c->patch_size;
    vit_weights *w = &m->w;
    char name[256];
    int rc; /* take's -1, or pack's and load_attention's ENGINE_ERR_MEMORY */

    if ((rc = take(f, "vision_model.embeddings.patch_embedding.weight", scratch, err, errlen, 4, D, C, p, p,
                   0)) ||
        (rc = pack(m, scratch, D, C * p * p, &w->patch, err, errlen)))
        return rc;
    if (take(f, "vision_model.embeddings.class_embedding", w->class_emb, err, errlen, 1, D, 0, 0, 0, 0))
        return -1;
    if (c->has_ape) {
        if ((rc = load_ape(f, c, w->ape_mid, err, errlen))) return rc;
    } else if (safetensors_has(f, "vision_model.embeddings.position_embedding")) {
        snprintf(err, errlen,
                 "%s: tensor \"vision_model.embeddings.position_embedding\" is present but "
                 "config.json has keep_ape true (which means no APE table)",
                 f->path);
        return -1;
    }
    if (take(f, "vision_model.pre_layrnorm.weight", w->pre_ln_w, err, errlen, 1, D, 0, 0, 0, 0) ||
        take(f, "vision_model.pre_layrnorm.bias", w->pre_ln_b, err, errlen, 1, D, 0, 0, 0, 0))
        return -1;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        vit_layer *L = &w->layers[l];
        struct {
            const char *suffix;
            float *dst;
            int n;
        } t[] = {
            {"layer_norm1.weight", L->ln1_w, D}, {"layer_norm1.bias", L->ln1_b, D},
            {"layer_norm2.weight", L->ln2_w, D}, {"layer_norm2.bias", L->ln2_b, D},
            {"mlp.fc1.bias", L->fc1_b, I},       {"mlp.fc2.bias", L->fc2_b, D},
        };
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
            snprintf(name, sizeof(name), "vision_model.encoder.layers.%d.%s", l, t[i].suffix);
            if (take(f, name, t[i].dst, err, errlen, 1, t[i].n, 0, 0, 0, 0)) return -1;
        }
        snprintf(name, sizeof(name), "vision_model.encoder.layers.%d.mlp.fc1.weight", l);
        if ((rc = take(f, name, scratch, err, errlen, 2, I, D, 0, 0, 0)) ||
            (rc = pack(m, scratch, I, D, &L->fc1, err, errlen)))
            return rc;
        snprintf(name, sizeof(name), "vision_model.encoder.layers.%d.mlp.fc2.weight", l);
        if ((rc = take(f, name, scratch, err, errlen, 2, D, I, 0, 0, 0)) ||
            (rc = pack(m, scratch, D, I, &L->fc2, err, errlen)))
            return rc;
        if ((rc = load_attention(m, f, l, scratch, err, errlen))) return rc;
    }
    if (take(f, "vision_model.post_layernorm.weight", w->post_ln_w, err, errlen, 1, D, 0, 0, 0, 0) ||
        take(f, "vision_model.post_layernorm.bias", w->post_ln_b, err, errlen, 1, D, 0, 0, 0, 0))
        return -1;
    if (M == 0) {
        if (take(f, "classification_head.weight", w->head_w, err, errlen, 2, K, D, 0, 0, 0) ||
            take(f, "classification_head.bias", w->head_b, err, errlen, 1, K, 0, 0, 0, 0))
            return -1;
    } else {
        if (take(f, "classification_head.0.weight", w->head_w, err, errlen, 2, M, D, 0, 0, 0) ||
            take(f, "classification_head.0.bias", w->head_b, err, errlen, 1, M, 0, 0, 0, 0) ||
            take(f, "classification_head.2.weight", w->head2_w, err, errlen, 2, K, M, 0, 0, 0) ||
            take(f, "classification_head.2.bias", w->head2_b, err, errlen, 1, K, 0, 0, 0, 0))
            return -1;
    }
    return safetensors_check_all_used(f, err, errlen);
}

vit_options vit_default_options(void) {
    /* 64x64 patches: 4097 tokens, about 3.5x the training grid of a ViT-B/16 at 512 */
    vit_options o = {.precision = GEMM_FP32,
                     .max_tokens = 4097,
                     .isa = CPU_ISA_BEST,
                     .gemm_backend = GEMM_BACKEND_AUTO,
                     .amx_shape = GEMM_AMX_DEFAULT};
    return o;
}

int vit_load(const char *dir, const vit_options *opt, vit_model **out, char *err, size_t errlen) {
    char path[4096];
    vit_model *m = NULL;
    safetensors_file f;
    float *scratch = NULL;
    int have_file = 0, rc = -1;

    *out = NULL;
    m = calloc(1, sizeof(*m));
    if (!m || !(m->dir = strdup(dir))) {
        snprintf(err, errlen, "out of memory");
        rc = ENGINE_ERR_MEMORY;
        goto cleanup;
    }
    vit_options o = opt ? *opt : vit_default_options();
    /* the backend asked for first, before the model's files: what it lacks
     * is the reason to give (a setting of the daemon, not of this model) */
    if (o.gemm_backend == GEMM_BACKEND_ONEDNN && !dnnl_gemm_available()) {
        snprintf(err, errlen, "gemm backend onednn: this build has no oneDNN (libdnnl-dev)");
        goto cleanup;
    }
    if (!gemm_amx_emulated(o.amx_shape, 0)) {
        snprintf(err, errlen, "amx shape %d: our AMX kernel's blocks are 1x3 and 2x2", o.amx_shape);
        goto cleanup;
    }
    if (o.gemm_backend == GEMM_BACKEND_AMX && !gemm_amx_kernel(o.amx_shape)) {
        char why[256] = "this CPU has AMX-BF16 but not AVX512-BF16, which our AMX kernel converts A with";
        cpu_amx_unavailable(cpu_get_features(), why, sizeof(why));
        snprintf(err, errlen, "gemm backend amx: %s", why);
        goto cleanup;
    }
    /* The AMX backend auto's table weighs: ours where asked; oneDNN where it
     * may run (auto or asked) and the build has it. Asked for our vdpbf16ps
     * kernel, there is none: on Intel bf16 would then be slower than fp32. */
    int amx_backend = o.gemm_backend == GEMM_BACKEND_AMX ||
                      ((o.gemm_backend == GEMM_BACKEND_AUTO || o.gemm_backend == GEMM_BACKEND_ONEDNN) &&
                       dispatch_amx_backend());
    if (precision_choose(o.precision, o.isa, cpu_get_features(), amx_backend, &m->choice, err, errlen))
        goto cleanup;
    if (o.max_tokens < 2) {
        snprintf(err, errlen, "max_tokens must be at least 2 (got %d)", o.max_tokens);
        goto cleanup;
    }
    /* Each file is asked what it is once it is open (small_file_read,
     * safetensors_open), never by a stat before: a FIFO put there after
     * the check blocked the open, and with it the repository's control
     * thread, for good. Only "not there" is told apart, for its message. */
    snprintf(path, sizeof(path), "%s/config.json", dir);
    int file_rc = vit_config_load(path, &m->cfg, err, errlen);
    if (file_rc == SMALL_FILE_MISSING)
        snprintf(err, errlen, "%s: no config.json in the model directory", dir);
    if (file_rc) {
        rc = file_rc;
        goto cleanup;
    }
    m->precision = m->choice.precision;
    /* who runs the bf16 GEMMs: the backend asked for; by default oneDNN
     * where it drives AMX, else our vdpbf16ps kernel */
    if ((o.gemm_backend == GEMM_BACKEND_ONEDNN || o.gemm_backend == GEMM_BACKEND_AMX) &&
        m->precision != GEMM_BF16) {
        snprintf(err, errlen, "gemm backend %s computes bf16 only (precision: %s)",
                 gemm_backend_name(o.gemm_backend), precision_name(m->precision));
        goto cleanup;
    }
    if (m->precision != GEMM_BF16) m->backend = GEMM_BACKEND_OWN;
    else if (o.gemm_backend == GEMM_BACKEND_ONEDNN || o.gemm_backend == GEMM_BACKEND_AMX)
        m->backend = o.gemm_backend;
    else if (o.gemm_backend == GEMM_BACKEND_AUTO && dnnl_gemm_available() && cpu_has_amx_bf16())
        m->backend = GEMM_BACKEND_ONEDNN;
    else m->backend = GEMM_BACKEND_OWN;
    m->amx_shape = o.amx_shape;
    m->attention_gemm = o.attention_gemm != 0;
    m->max_tokens = o.max_tokens;
    snprintf(path, sizeof(path), "%s/preprocessor_config.json", dir);
    m->prep = image_prep_default(); /* none there: the official code's */
    file_rc = image_prep_load(path, &m->prep, err, errlen);
    if (file_rc && file_rc != SMALL_FILE_MISSING) {
        rc = file_rc;
        goto cleanup;
    }
    if (file_rc && errlen) err[0] = '\0';

    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    file_rc = safetensors_open(path, &f, err, errlen);
    if (file_rc == SMALL_FILE_MISSING)
        snprintf(err, errlen, "%s: no model.safetensors in the model directory", dir);
    if (file_rc) {
        rc = file_rc;
        goto cleanup;
    }
    have_file = 1;

    param_sizes s = sizes_of(&m->cfg);
    m->num_params = s.class_emb + s.ape_mid + s.pre_ln + s.layer * (size_t)m->cfg.num_hidden_layers +
                    s.post_ln + s.head_w + s.head_b + s.head2_w + s.head2_b;
    size_t D = (size_t)m->cfg.hidden_size, I = (size_t)m->cfg.intermediate_size;
    size_t P = (size_t)m->cfg.num_channels * m->cfg.patch_size * m->cfg.patch_size;
    size_t big = D * P + (size_t)m->cfg.num_hidden_layers * (4 * D * D + 2 * I * D);
    /* Every parameter is in the file (2 bytes at least each); a config that
     * claims more than the file holds is refused before we allocate for it. */
    if (m->num_params + big > f.data_size / 2 + 1024 + D * D) {
        snprintf(err, errlen, "%s: config.json describes %zu parameters, more than model.safetensors holds",
                 dir, m->num_params + big);
        goto cleanup;
    }
    size_t scratch_n = 3 * D * D;
    if (I * D > scratch_n) scratch_n = I * D;
    if (D * P > scratch_n) scratch_n = D * P;
    m->params = malloc(sizeof(float) * m->num_params);
    m->w.layers = calloc((size_t)m->cfg.num_hidden_layers, sizeof(vit_layer));
    scratch = malloc(sizeof(float) * scratch_n);
    if (!m->params || !m->w.layers || !scratch) {
        snprintf(err, errlen, "out of memory for %zu parameters", m->num_params + big);
        rc = ENGINE_ERR_MEMORY;
        goto cleanup;
    }
    point_weights(m);
    if ((rc = rotation_init(&m->rot, &m->cfg, err, errlen))) goto cleanup;
    rc = load_weights(m, &f, scratch, err, errlen);
    /* A file written to since its open fails the load, also one that
     * failed already: the tensors read after the write were the new file's
     * bytes at the old one's offsets, and a NaN there, or a short read,
     * blamed a checkpoint that loads on its own. Out of memory stays that. */
    if (rc != ENGINE_ERR_MEMORY && safetensors_check_unchanged(&f, err, errlen)) rc = -1;
cleanup:
    free(scratch);
    if (have_file) safetensors_close(&f);
    if (rc != 0 && rc != ENGINE_ERR_MEMORY) rc = -1; /* SMALL_FILE_MISSING: told in err */
    if (rc != 0 && m) {
        vit_free(m);
        m = NULL;
    }
    *out = m;
    return rc;
}

void vit_free(vit_model *m) {
    if (!m) return;
    vit_config_free(&m->cfg);
    vit_rotation_free(&m->rot);
    gemm_pack_free(&m->w.patch);
    for (int l = 0; m->w.layers && l < m->cfg.num_hidden_layers; l++) {
        vit_layer *L = &m->w.layers[l];
        gemm_pack_free(&L->qkv);
        gemm_pack_free(&L->out);
        gemm_pack_free(&L->fc1);
        gemm_pack_free(&L->fc2);
    }
    free(m->params);
    free(m->w.layers);
    free(m->dir);
    free(m);
}

/* Bytes one packed matrix holds: its panels, and oneDNN's copy (bf16,
 * N x K: its own layout, about that size) where there is one. */
static size_t packed_bytes(const packed_weight *p) {
    size_t b = 0;
    if (p->data) b += (size_t)p->panels * (size_t)p->K * GEMM_PANEL * sizeof(float);
    if (p->bf16) b += (size_t)p->panels * (size_t)p->prows * GEMM_PANEL * sizeof(uint32_t);
    if (p->dnnl) b += (size_t)p->N * (size_t)p->K * sizeof(uint16_t);
    return b;
}

size_t vit_model_bytes(const vit_model *m) {
    size_t b = m->num_params * sizeof(float) + packed_bytes(&m->w.patch);
    for (int l = 0; m->w.layers && l < m->cfg.num_hidden_layers; l++) {
        const vit_layer *L = &m->w.layers[l];
        b += packed_bytes(&L->qkv) + packed_bytes(&L->out) + packed_bytes(&L->fc1) + packed_bytes(&L->fc2);
    }
    return b;
}

/* ------------------------------------------------------------------------ */
/* Context                                                                   */

int vit_tokens(const vit_model *m, int h, int w) {
    int p = m->cfg.patch_size;
    return 1 + (h / p) * (w / p); /* the class token, then the patches (prepend_cls is required) */
}

vit_context_params vit_context_default_params(void) {
    return (vit_context_params){
        .threads = 1,
        .isa = CPU_ISA_BEST,
        .max_images = 8,
        .max_tokens = 16384,
        .memory_bytes = 0,
        .memory_shares = 1,
        .memory_held = 0,
        .observe = NULL,
        .observe_arg = NULL,
    };
}

/* Rotation tables kept at least, whatever max_images is: a daemon that
 * sees a few resolutions in turn builds each once. */
#define ROTATION_CACHE_MIN_SLOTS 16

struct activations;
static size_t plan(const vit_context *ctx, size_t T, size_t Tmax, size_t parts, struct activations *a,
                   float *base);

size_t vit_memory_bound(size_t asked, const char **bound) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    size_t physical = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
    int use_asked = asked && (!physical || asked < physical);
    if (bound)
        *bound =
            use_asked ? "the memory limit (memory_bytes: the daemon's cgroup memory.max)" : "physical memory";
    return use_asked ? asked : physical;
}

/* The most memory the rotation cache holds: `tokens` tokens of tables
 * (rotation_for keeps it there), without malloc's headers. */
static size_t rotation_cache_bytes(const vit_model *m, size_t tokens) {
    return tokens * rotation_token_floats(&m->rot) * sizeof(float);
}

/* The memory of a workspace for batches of `tokens` tokens: its arena and
 * its rotation cache (vit_context_bytes once made). */
static size_t workspace_bytes(const vit_context *ctx, size_t tokens, size_t parts) {
    return plan(ctx, tokens, (size_t)ctx->tmax, parts, NULL, NULL) * sizeof(float) +
           rotation_cache_bytes(ctx->model, tokens);
}

/* Parts of one parallel step: no more than the heads (attention's unit). */
static int context_parts(const vit_context *ctx) {
    int t = thread_pool_threads(ctx->pool), H = ctx->model->cfg.num_attention_heads;
    return t < H ? t : H;
}

int vit_context_new(const vit_model *m, const vit_context_params *p, vit_context **out, char *err,
                    size_t errlen) {
    vit_context_params q = p ? *p : vit_context_default_params();
    *out = NULL;
    if (q.threads < 1 || q.max_images < 1 || q.max_tokens < 1) {
        snprintf(err, errlen,
                 "context: threads, max_images and max_tokens must be at least 1 "
                 "(got %d, %d, %d)",
                 q.threads, q.max_images, q.max_tokens);
        return -1;
    }
    if (q.max_tokens < m->max_tokens) q.max_tokens = m->max_tokens;
    int rc = -1;
    vit_context *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) goto oom;
    ctx->model = m;
    ctx->params = q;
    if (kernel_table_init(&ctx->kernels, q.isa, err, errlen)) goto fail;
    if (m->precision == GEMM_BF16 && !ctx->kernels.gemm_bf16) {
        snprintf(err, errlen,
                 "context: the model computes in bf16, which needs isa avx512 on a "
                 "CPU with AVX512-BF16 (this context's isa: %s)",
                 ctx->kernels.name);
        goto fail;
    }
    if (m->backend == GEMM_BACKEND_ONEDNN) {
        /* its own variable: rc stays an error for every later goto fail */
        int runner = dnnl_runner_new(q.threads, &ctx->kernels.dnnl, err, errlen);
        if (runner) {
            rc = runner;
            goto fail;
        }
    }
    /* the same bf16 panels, through the tiles (vit_load checked the CPU) */
    if (m->backend == GEMM_BACKEND_AMX) ctx->kernels.gemm_bf16 = gemm_amx_kernel(m->amx_shape);
    /* attention's products in bf16 only where vdpbf16ps beats fp32 */
    if (!bf16_attention_pays(cpu_get_features())) ctx->kernels.attention_head_bf16 = NULL;
    /* or as two GEMMs on the bf16 GEMM kernel, where asked (before the scratch is sized) */
    ctx->kernels.attention_gemm = m->precision == GEMM_BF16 && m->attention_gemm;
    ctx->tmax = m->max_tokens < q.max_tokens ? m->max_tokens : q.max_tokens;
    ctx->pool = thread_pool_new(q.threads);
    ctx->start = calloc((size_t)q.max_images + 1, sizeof(int));
    ctx->rot = calloc((size_t)q.max_images, sizeof(*ctx->rot));
    ctx->pos = calloc(2 * (size_t)ctx->tmax, sizeof(double));
    ctx->cache_slots = q.max_images > ROTATION_CACHE_MIN_SLOTS ? q.max_images : ROTATION_CACHE_MIN_SLOTS;
    ctx->cache = calloc((size_t)ctx->cache_slots, sizeof(*ctx->cache));
    ctx->cache_stamp = calloc((size_t)ctx->cache_slots, sizeof(*ctx->cache_stamp));
    if (!ctx->pool || !ctx->start || !ctx->rot || !ctx->pos || !ctx->cache || !ctx->cache_stamp) goto oom;
    /* The largest batch the limits allow; its pages are touched as forwards
     * reach them. No batch holds more than max_images images of at most the
     * model's max_tokens each: a larger max_tokens (meant as "no cap")
     * reserves nothing beyond that, in the arena nor in the rotation cache,
     * which holds as many tokens of tables (a batch's tables fit it). */
    size_t tokens = (size_t)q.max_images * (size_t)m->max_tokens;
    if (tokens > (size_t)q.max_tokens) tokens = (size_t)q.max_tokens;
    ctx->cache_max_tokens = tokens;
    size_t parts = (size_t)context_parts(ctx);
    ctx->arena_floats = plan(ctx, tokens, (size_t)ctx->tmax, parts, NULL, NULL);
    /* A workspace larger than all the memory there is can never be
     * granted (nor its pages touched when a full batch runs): smaller
     * limits cure that, not a wait (ENGINE_ERR_WORKSPACE, not MEMORY) */
    const char *bound;
    size_t bytes = vit_context_bytes(ctx), all = vit_memory_bound(q.memory_bytes, &bound);
    /* each of memory_shares workspaces fitting is not enough: together
     * they would not (a daemon's workers x its batch limits); nor is what
     * others hold already theirs to take (memory_held) */
    int shares = q.memory_shares > 1 ? q.memory_shares : 1;
    size_t left = all > q.memory_held ? all - q.memory_held : 0, memory = left / (size_t)shares;
    if (all && bytes > memory) {
        /* the most tokens that fit: plan grows with them; one image's at least */
        size_t lo = (size_t)ctx->tmax, hi = tokens;
        while (lo < hi) {
            size_t mid = lo + (hi - lo + 1) / 2;
            if (workspace_bytes(ctx, mid, parts) <= memory) lo = mid;
            else hi = mid - 1;
        }
        char fit[96], share[96] = "", held[128] = "";
        if (workspace_bytes(ctx, lo, parts) <= memory)
            snprintf(fit, sizeof(fit), "at most %zu tokens fit", lo);
        else snprintf(fit, sizeof(fit), "not even one image of %d tokens fits", ctx->tmax);
        if (shares > 1)
            snprintf(share, sizeof(share), "%zu MiB, its 1/%d share (memory_shares) of ", memory >> 20,
                     shares);
        if (q.memory_held)
            snprintf(held, sizeof(held), " less the %zu MiB held already (memory_held)", q.memory_held >> 20);
        snprintf(err, errlen,
                 "context: a workspace of %d images / %zu tokens needs %zu MiB, more than %sthe %zu MiB of "
                 "%s%s; %s",
                 q.max_images, tokens, bytes >> 20, share, all >> 20, bound, held, fit);
        rc = ENGINE_ERR_WORKSPACE;
        goto fail;
    }
    void *arena = NULL;
    if (posix_memalign(&arena, 64, ctx->arena_floats * sizeof(float)) != 0) goto oom;
    ctx->arena = arena;
    *out = ctx;
    return 0;
oom:
    snprintf(err, errlen, "context: out of memory for a workspace of %d images / %d tokens", q.max_images,
             q.max_tokens);
    rc = ENGINE_ERR_MEMORY;
fail:
    vit_context_free(ctx);
    return rc;
}

void vit_context_free(vit_context *ctx) {
    if (!ctx) return;
    dnnl_runner_free(ctx->kernels.dnnl);
    thread_pool_free(ctx->pool);
    for (int i = 0; ctx->cache && i < ctx->cache_slots; i++) rotation_table_free(&ctx->cache[i]);
    free(ctx->cache);
    free(ctx->cache_stamp);
    free(ctx->arena);
    free(ctx->start);
    free(ctx->rot);
    free(ctx->pos);
    free(ctx);
}

size_t vit_context_bytes(const vit_context *ctx) {
    return ctx->arena_floats * sizeof(float) + rotation_cache_bytes(ctx->model, ctx->cache_max_tokens);
}

/* The cached table of a ph x pw grid, built on first use. Tables used by
 * the current forward (stamp == clock) are never evicted; the least
 * recently used others are, until the new one fits in cache_max_tokens
 * tokens of tables and a free slot. The current forward's tables hold at
 * most its tokens (<= max_tokens, and <= max_images x the model's
 * max_tokens: <= cache_max_tokens) in at most its images (<= max_images
 * <= slots), so
 * there is always room: only running out of memory returns NULL. */
static const rotation_table *rotation_for(vit_context *ctx, int ph, int pw) {
    int free_slot = -1;
    for (int i = 0; i < ctx->cache_slots; i++) {
        rotation_table *t = &ctx->cache[i];
        if (t->tokens && t->ph == ph && t->pw == pw) {
            ctx->cache_stamp[i] = ctx->clock;
            return t;
        }
        if (!t->tokens && free_slot < 0) free_slot = i;
    }
    size_t need = 1 + (size_t)ph * pw;
    while (free_slot < 0 || ctx->cache_tokens + need > ctx->cache_max_tokens) {
        int victim = -1;
        for (int i = 0; i < ctx->cache_slots; i++) {
            if (!ctx->cache[i].tokens || ctx->cache_stamp[i] == ctx->clock) continue;
            if (victim < 0 || ctx->cache_stamp[i] < ctx->cache_stamp[victim]) victim = i;
        }
        if (victim < 0) return NULL; /* cannot happen within the limits (see above) */
        ctx->cache_tokens -= (size_t)ctx->cache[victim].tokens;
        rotation_table_free(&ctx->cache[victim]);
        if (free_slot < 0) free_slot = victim;
    }
    if (rotation_table_build(&ctx->model->rot, &ctx->model->cfg, ph, pw, &ctx->cache[free_slot])) return NULL;
    ctx->cache_tokens += need;
    ctx->cache_stamp[free_slot] = ctx->clock;
    return &ctx->cache[free_slot];
}

/* Activation buffers for a batch of T tokens (the largest image has Tmax). */
struct activations {
    float *x;       // (T, D) the residual stream
    float *xn;      // (T, D) normalized input of a sublayer
    float *qkv;     // (T, 3D)
    float *attn;    // (T, D) attention output before out_proj
    float *mlp;     // (T, I)
    float *patches; // (T, C*p*p) im2col of every image (class rows unused)
    float *scores;  // parts x attention_scratch_floats(Tmax, hd): one per thread
    float *head;    // (max(D, M)) one image's head input/hidden
    float *pack;    // the GEMMs' scratch: A repacked (gemm_scratch_floats(T, widest K, precision))
};

/* Carves the buffers of a batch of T tokens (largest image Tmax, `parts`
 * attention scratches) out of base (NULL: only sizes them); returns the
 * floats needed. Every size grows with T and Tmax, so a smaller batch's
 * buffers lie within the floats a larger one needs. */
static size_t plan(const vit_context *ctx, size_t T, size_t Tmax, size_t parts, struct activations *a,
                   float *base) {
    const vit_config *c = &ctx->model->cfg;
    size_t D = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    size_t P = (size_t)c->num_channels * c->patch_size * c->patch_size;
    size_t M = (size_t)c->mlp_intermediate;
    size_t Kmax = D > I ? D : I;
    if (P > Kmax) Kmax = P;
    size_t sizes[9] = {T * D,
                       T * D,
                       T * 3 * D,
                       T * D,
                       T * I,
                       T * P,
                       parts * attention_scratch_floats(&ctx->kernels, (int)Tmax, c->head_dim),
                       (M > D ? M : D) + (size_t)c->num_class,
                       gemm_scratch_floats(&ctx->kernels, (int)T, (int)Kmax, ctx->model->precision)};
    float **slots[9] = {0};
    if (a) {
        float **s[9] = {&a->x,       &a->xn,     &a->qkv,  &a->attn, &a->mlp,
                        &a->patches, &a->scores, &a->head, &a->pack};
        memcpy(slots, s, sizeof(s));
    }
    size_t total = 0;
    for (int i = 0; i < 9; i++) {
        if (base) *slots[i] = base + total;
        total += (sizes[i] + 15) & ~(size_t)15; /* keep every buffer 64-byte aligned */
    }
    return total;
}

/* ------------------------------------------------------------------------ */
/* Forward                                                                   */

double vit_gflop(const vit_model *m, int h, int w) {
    const vit_config *c = &m->cfg;
    double p = c->patch_size, T = vit_tokens(m, h, w);
    double D = c->hidden_size, I = c->intermediate_size, P = c->num_channels * p * p;
    double layer = T * (4 * D * D + 2 * D * I) + 2 * T * T * D;
    double head = c->mlp_intermediate ? D * c->mlp_intermediate + (double)c->mlp_intermediate * c->num_class
                                      : D * c->num_class;
    return 2.0 * ((T - 1) * P * D + c->num_hidden_layers * layer + head) * 1e-9;
}

int vit_check_resolution(const vit_model *m, int h, int w, char *err, size_t errlen) {
    int p = m->cfg.patch_size;
    int dims[2] = {h, w};
    const char *axis[2] = {"height", "width"};
    for (int i = 0; i < 2; i++) {
        int v = dims[i];
        if (v < p || v % p != 0) {
            int lo = (v / p) * p, hi = lo + p;
            if (lo < p)
                snprintf(err, errlen, "%s %d is smaller than the patch size %d; the smallest valid is %d",
                         axis[i], v, p, p);
            else
                snprintf(err, errlen, "%s %d is not a multiple of the patch size %d; nearest valid: %d or %d",
                         axis[i], v, p, lo, hi);
            return -1;
        }
    }
    /* vit_tokens' count, in 64 bits: this is where a size becomes valid, and
     * (h/p)*(w/p) of a client's 216824x216824 overflows an int */
    long long tokens = 1 + (long long)(h / p) * (w / p);
    if (tokens > m->max_tokens) {
        snprintf(err, errlen, "resolution %dx%d needs %lld tokens, more than the limit of %d", h, w, tokens,
                 m->max_tokens);
        return -1;
    }
    return 0;
}

/* Patch embedding of one image into rows [1, 1+ph*pw) of its token block:
 * im2col (pixels (C,h,w) -> patches (ph*pw, C*p*p), in the conv weight's
 * (C, p, p) order). The GEMM runs later over the whole batch. */
static void im2col(const float *pixels, int C, int h, int w, int p, float *patches) {
    int ph = h / p, pw = w / p, P = C * p * p;
    for (int r = 0; r < ph; r++)
        for (int c = 0; c < pw; c++) {
            float *dst = patches + (size_t)(r * pw + c) * P;
            for (int ch = 0; ch < C; ch++)
                for (int ky = 0; ky < p; ky++) {
                    const float *src = pixels + ((size_t)ch * h + (size_t)r * p + ky) * w + (size_t)c * p;
                    memcpy(dst + (ch * p + ky) * p, src, sizeof(float) * (size_t)p);
                }
        }
}

/* Adds the sampled APE to the tokens of one image (spec: "APE sampling"):
 * the row coordinate pos_0 maps linearly onto table rows 0..P0-1 (clamped),
 * the column is the table's middle one, pos_1 is ignored. */
void vit_add_ape(const vit_model *m, float *x, const double *pos, int T) {
    const vit_config *c = &m->cfg;
    if (!c->has_ape) return;
    int D = c->hidden_size, P0 = c->ape_side;
    for (int t = 0; t < T; t++) {
        /* grid_sample with align_corners: y = ((g + 1) / 2) * (P0 - 1), g = 2*pos_0 - 1 */
        double y = pos[2 * t] * (P0 - 1);
        if (y < 0) y = 0;
        if (y > P0 - 1) y = P0 - 1;
        int y0 = (int)floor(y);
        if (y0 > P0 - 1) y0 = P0 - 1;
        int y1 = y0 + 1 < P0 ? y0 + 1 : y0;
        float fy = (float)(y - y0);
        const float *r0 = m->w.ape_mid + (size_t)y0 * D, *r1 = m->w.ape_mid + (size_t)y1 * D;
        float *xt = x + (size_t)t * D;
        for (int d = 0; d < D; d++) xt[d] += (1.0f - fy) * r0[d] + fy * r1[d];
    }
}

/* Attention of every image of the batch, one (image, head) at a time: the
 * parts take the next pair from a shared counter (fixed halves left a core
 * waiting whenever the host slowed the other down, and a batch took one
 * pool job per image). A pair's q and k are rotated by the thread that is
 * about to read them (on the caller alone, the rotation left the second
 * core idle for 0.6% of a forward): pairwise rotations (RoPE, ComRoPE)
 * inside attention_forward, into its scratch; LieRE's blocks in place
 * first. Each part has its own scratch. */
typedef struct {
    const kernel_table *kt;
    float *out;                          // (T, D) of the whole batch
    float *qkv;                          // (T, 3D)
    float *scores;                       // parts x attention_scratch_floats(Tmax, head_dim)
    const int *start;                    // (images + 1) token offsets
    const vit_rotation *rot;             // the model's rotation
    const rotation_table *const *tables; // each image's table (NULL: no rotation)
    int images, Tmax, heads, head_dim, layer;
    int bf16; // the model computes in bf16 (attention too)
    int next; // the next (image, head) nobody took (atomic)
} attention_job;

static void attention_part(void *ctx, int part, int parts) {
    attention_job *j = ctx;
    (void)parts;
    int D = j->heads * j->head_dim;
    float *scores = j->scores + (size_t)part * attention_scratch_floats(j->kt, j->Tmax, j->head_dim);
    for (;;) {
        int u = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (u >= j->images * j->heads) return;
        int i = u / j->heads, h = u % j->heads, T = j->start[i + 1] - j->start[i];
        float *qkv = j->qkv + (size_t)j->start[i] * 3 * D;
        const rotation_table *tab = j->tables[i];
        const float *cs = NULL;
        if (tab && j->rot->kind == ROT_PAIRS) /* head-major: this layer's head h */
            cs = tab->data + ((size_t)j->layer * j->heads + h) * tab->tokens * j->rot->npairs * 2;
        else if (tab) rotation_apply(j->rot, tab, j->layer, qkv, 3 * D, T, h, h + 1, j->kt->rotate_pairs);
        attention_forward(j->kt, j->out + (size_t)j->start[i] * D, D, qkv, scores, T, j->heads, j->head_dim,
                          h, h + 1, cs, j->rot->npairs, j->bf16);
    }
}

/* Row by row: x += delta (unless delta is NULL), then out = LayerNorm(x)
 * (unless out is NULL; out may be delta: a row's delta is read before its
 * out is written). Rows are split over the thread pool: single-threaded,
 * these passes left the second core idle for about 3% of a forward. */
typedef struct {
    layernorm_fn layernorm;
    float *x;
    const float *delta;
    float *out;
    const float *w, *b;
    int T, D;
    float eps;
} norm_job;

static void norm_part(void *ctx, int part, int parts) {
    const norm_job *j = ctx;
    size_t r0 = (size_t)j->T * part / parts, r1 = (size_t)j->T * (part + 1) / parts;
    size_t D = (size_t)j->D;
    if (j->delta)
        for (size_t i = r0 * D; i < r1 * D; i++) j->x[i] += j->delta[i];
    if (j->out) j->layernorm(j->out + r0 * D, j->x + r0 * D, j->w, j->b, (int)(r1 - r0), j->D, j->eps);
}

static void residual_norm(vit_context *ctx, float *x, const float *delta, float *out, const float *w,
                          const float *b, int T, int D, float eps, int parts) {
    norm_job j = {.layernorm = ctx->kernels.layernorm,
                  .x = x,
                  .delta = delta,
                  .out = out,
                  .w = w,
                  .b = b,
                  .T = T,
                  .D = D,
                  .eps = eps};
    thread_pool_run(ctx->pool, norm_part, &j, (size_t)T * D >= 16384 ? parts : 1);
}

/* The MLP's activation (exp/erf/tanh per value: worth splitting). */
typedef struct {
    activation_fn activate;
    float *x;
    size_t n;
    activation act;
} activation_job;

static void activation_part(void *ctx, int part, int parts) {
    const activation_job *j = ctx;
    size_t b = j->n * part / parts, e = j->n * (part + 1) / parts;
    j->activate(j->x + b, e - b, j->act);
}

int vit_forward_ragged(vit_context *ctx, const vit_image *images, int n, float *logits, char *err,
                       size_t errlen) {
    const vit_model *m = ctx->model;
    const kernel_table *kt = &ctx->kernels;
    const vit_config *c = &m->cfg;
    const vit_weights *w = &m->w;
    int D = c->hidden_size, I = c->intermediate_size, K = c->num_class, p = c->patch_size;
    int C = c->num_channels, P = C * p * p, H = c->num_attention_heads, hd = c->head_dim;
    int M = c->mlp_intermediate;
    float eps = (float)c->layer_norm_eps;

    if (n <= 0) return 0;
    if (n > ctx->params.max_images) {
        snprintf(err, errlen,
                 "a batch of %d images is over this context's limit of %d images per "
                 "forward (max_images)",
                 n, ctx->params.max_images);
        return -1;
    }
    size_t T = 0, Tmax = 0;
    for (int i = 0; i < n; i++) {
        char why[200];
        if (vit_check_resolution(m, images[i].h, images[i].w, why, sizeof(why))) {
            snprintf(err, errlen, "image %d: %s", i, why);
            return -1;
        }
        size_t Ti = (size_t)vit_tokens(m, images[i].h, images[i].w);
        T += Ti;
        if (Ti > Tmax) Tmax = Ti;
    }
    if (T > (size_t)ctx->params.max_tokens) {
        snprintf(err, errlen,
                 "a batch of %zu tokens is over this context's limit of %d tokens per "
                 "forward (max_tokens)",
                 T, ctx->params.max_tokens);
        return -1;
    }
    struct activations a;
    int parts = context_parts(ctx);
    size_t need = plan(ctx, T, Tmax, (size_t)parts, &a, ctx->arena);
    if (need > ctx->arena_touched) { /* first touch here, not inside the GEMMs */
        memset(ctx->arena + ctx->arena_touched, 0, (need - ctx->arena_touched) * sizeof(float));
        ctx->arena_touched = need;
    }
    /* token offsets of each image in the concatenated batch */
    int *start = ctx->start;
    const rotation_table **rot = ctx->rot;
    double *pos = ctx->pos;
    start[0] = 0;
    for (int i = 0; i < n; i++) start[i + 1] = start[i] + vit_tokens(m, images[i].h, images[i].w);
    ctx->clock++;
    for (int i = 0; i < n; i++) {
        rot[i] = NULL;
        if (m->rot.kind == ROT_NONE) continue;
        rot[i] = rotation_for(ctx, images[i].h / p, images[i].w / p);
        if (!rot[i]) {
            snprintf(err, errlen, "image %d: out of memory for its rotation table", i);
            return ENGINE_ERR_MEMORY;
        }
    }

    // 1. embeddings: x (T, D) = class token | patches @ patch_w^T, plus the APE
    for (int i = 0; i < n; i++)
        im2col(images[i].pixels, C, images[i].h, images[i].w, p, a.patches + (size_t)(start[i] + 1) * P);
    for (int i = 0; i < n; i++) /* class rows of the im2col buffer: keep them defined */
        memset(a.patches + (size_t)start[i] * P, 0, sizeof(float) * (size_t)P);
    gemm_forward(kt, ctx->pool, a.x, a.patches, &w->patch, NULL, (int)T, a.pack);
    for (int i = 0; i < n; i++) {
        memcpy(a.x + (size_t)start[i] * D, w->class_emb, sizeof(float) * (size_t)D);
        if (c->has_ape) {
            vit_positions(c, images[i].h / p, images[i].w / p, pos);
            vit_add_ape(m, a.x + (size_t)start[i] * D, pos, start[i + 1] - start[i]);
        }
    }
    // 2. pre_layrnorm (in place), then layer 0's LN1
    residual_norm(ctx, a.x, NULL, a.x, w->pre_ln_w, w->pre_ln_b, (int)T, D, eps, parts);
    if (ctx->params.observe) ctx->params.observe(ctx->params.observe_arg, 0, a.x, start, n, (int)T, D);
    residual_norm(ctx, a.x, NULL, a.xn, w->layers[0].ln1_w, w->layers[0].ln1_b, (int)T, D, eps, parts);

    // 3. encoder layers; on entry a.xn holds LN1(x)
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const vit_layer *L = &w->layers[l];
        // x = x + out_proj(attention(LN1(x)))
        gemm_forward(kt, ctx->pool, a.qkv, a.xn, &L->qkv, L->qkv_b, (int)T, a.pack);
        attention_job job = {.kt = kt,
                             .out = a.attn,
                             .qkv = a.qkv,
                             .scores = a.scores,
                             .start = start,
                             .rot = &m->rot,
                             .tables = rot,
                             .images = n,
                             .Tmax = (int)Tmax,
                             .heads = H,
                             .head_dim = hd,
                             .layer = l,
                             .bf16 = m->precision == GEMM_BF16,
                             .next = 0};
        thread_pool_run(ctx->pool, attention_part, &job, parts);
        gemm_forward(kt, ctx->pool, a.xn, a.attn, &L->out, L->out_b, (int)T, a.pack);
        // x = x + fc2(act(fc1(LN2(x)))): the residual and LN2 in one pass
        residual_norm(ctx, a.x, a.xn, a.xn, L->ln2_w, L->ln2_b, (int)T, D, eps, parts);
        /* A large (T, I) output (past 16 MB: batches of 8 at 224) gets its
         * activation inside fc1's GEMM, each thread activating the columns it
         * just wrote while they are in its cache; a pass of its own would read
         * and write it from memory. Smaller ones take the pass, which was
         * faster there (bench/results/NOTES.md, "fused activation"). */
        int fuse = T * (size_t)I > ((size_t)1 << 22);
        gemm_forward_act(kt, ctx->pool, a.mlp, a.xn, &L->fc1, L->fc1_b, (int)T, a.pack,
                         fuse ? (int)c->hidden_act : GEMM_NO_ACT);
        if (!fuse) {
            activation_job act = {
                .activate = kt->activation, .x = a.mlp, .n = T * (size_t)I, .act = c->hidden_act};
            thread_pool_run(ctx->pool, activation_part, &act, T * (size_t)I >= 65536 ? parts : 1);
        }
        gemm_forward(kt, ctx->pool, a.xn, a.mlp, &L->fc2, L->fc2_b, (int)T, a.pack);
        // the residual, and the next layer's LN1 in the same pass
        const vit_layer *next = l + 1 < c->num_hidden_layers ? &w->layers[l + 1] : NULL;
        residual_norm(ctx, a.x, a.xn, next ? a.xn : NULL, next ? next->ln1_w : NULL,
                      next ? next->ln1_b : NULL, (int)T, D, eps, parts);
        if (ctx->params.observe)
            ctx->params.observe(ctx->params.observe_arg, l + 1, a.x, start, n, (int)T, D);
    }

    // 4. post_layernorm of each image's class token, then the head
    for (int i = 0; i < n; i++) {
        float *cls = a.xn; /* (D) scratch */
        kt->layernorm(cls, a.x + (size_t)start[i] * D, w->post_ln_w, w->post_ln_b, 1, D, eps);
        if (M == 0) {
            matmul_forward(logits + (size_t)i * K, cls, w->head_w, w->head_b, 1, D, K);
        } else {
            matmul_forward(a.head, cls, w->head_w, w->head_b, 1, D, M);
            kt->activation(a.head, (size_t)M, ACT_RELU);
            matmul_forward(logits + (size_t)i * K, a.head, w->head2_w, w->head2_b, 1, M, K);
        }
    }
    return 0;
}
