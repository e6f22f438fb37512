/* model_config.h: the model's config.json, as the official code writes it.
 *
 * Owns: the vit_config struct (every key the forward needs, with the CLIP
 * vision defaults, then the ComRoPE ones), its parsing with jansson (unknown
 * keys ignored, a known key with the wrong JSON type refused by name), the
 * shape rules of each position-encoding variant, and the id2label names. */
#ifndef COMROPE_MODEL_CONFIG_H
#define COMROPE_MODEL_CONFIG_H

#include <stddef.h>

/* custom_pe_type */
typedef enum {
    PE_RAW = 0,      /* APE only (the CLIP baseline) */
    PE_NONE,         /* no position information in attention */
    PE_VANILLA_ROPE, /* fixed-frequency 2-D RoPE */
    PE_LIERE,        /* LieRE: learned, non-commuting generators */
    PE_COMROPE_AP,   /* ComRoPE axis-partition */
    PE_COMROPE_LD    /* ComRoPE linearly-dependent */
} pe_type;

typedef enum { ACT_QUICK_GELU = 0, ACT_GELU, ACT_GELU_TANH, ACT_RELU } activation;

typedef struct {
    int hidden_size;         /* D */
    int intermediate_size;   /* I */
    int num_hidden_layers;   /* L */
    int num_attention_heads; /* H */
    int num_channels;        /* C: 1 or 3 */
    int image_size;          /* training resolution (square) */
    int patch_size;          /* p */
    activation hidden_act;
    double layer_norm_eps;
    pe_type custom_pe_type;
    int keep_ape;   /* official naming: true means NO APE table */
    int block_size; /* b */
    int num_axes;   /* only 2 is supported */
    int axis_scale;
    int prepend_cls;
    double cls_position;
    double theta_base;
    double scale_factor;
    int num_class;        /* K */
    int mlp_intermediate; /* 0: linear head; >0: Linear-ReLU-Linear */

    /* derived */
    int head_dim; /* D / H */
    int has_ape;  /* the weights hold embeddings.position_embedding */
    int ape_side; /* P0 = image_size / patch_size (rounded down) */

    /* id2label: labels[k] is owned (NULL where config.json has no name) */
    char **labels;
} vit_config;

/* The most a config.json may hold: a real one is a few KB (id2label of
 * 1000 classes some 30 KB). */
#define VIT_CONFIG_MAX_BYTES (16 << 20)

/* Parses config.json at `path` into *cfg (defaults for missing keys) and
 * checks the shape rules. The file is read as small_file_read reads it: a
 * regular file of at most VIT_CONFIG_MAX_BYTES (a FIFO, a device, a
 * directory refused at once, never waited on). On error returns -1, or
 * SMALL_FILE_MISSING when there is no such file, or ENGINE_ERR_MEMORY
 * (engine_error.h), with a message naming the file and why or the key; *cfg then holds nothing to free. Release with
 * vit_config_free. */
int vit_config_load(const char *path, vit_config *cfg, char *err, size_t errlen);

/* Same, from JSON text already in memory (`name` is used in messages). */
int vit_config_parse(const char *json, size_t len, const char *name, vit_config *cfg, char *err,
                     size_t errlen);

void vit_config_free(vit_config *cfg);

const char *pe_type_name(pe_type t);
const char *activation_name(activation a);

/* The class name of index k: id2label's name, else NULL. */
const char *vit_config_label(const vit_config *cfg, int k);

#endif
