/* model_config.c: config.json -> vit_config (see model_config.h).
 *
 * The key table below is the single list of keys we read. HuggingFace writes
 * many more (architectures, torch_dtype, _attn_implementation_autoset, ...);
 * those are ignored. A key we read must have the right JSON type: a model
 * whose config says "hidden_size": "768" is refused rather than guessed at. */
#include "model_config.h"
#include "engine_error.h"
#include "small_file.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { KEY_INT, KEY_FLOAT, KEY_BOOL, KEY_STRING } key_type;

typedef struct {
    const char *name;
    key_type type;
    size_t offset; /* into vit_config; strings are handled by name */
} config_key;

#define KEY(name, type, field)                                                                               \
    { name, type, offsetof(vit_config, field) }
static const config_key config_keys[] = {
    KEY("hidden_size", KEY_INT, hidden_size),
    KEY("intermediate_size", KEY_INT, intermediate_size),
    KEY("num_hidden_layers", KEY_INT, num_hidden_layers),
    KEY("num_attention_heads", KEY_INT, num_attention_heads),
    KEY("num_channels", KEY_INT, num_channels),
    KEY("image_size", KEY_INT, image_size),
    KEY("patch_size", KEY_INT, patch_size),
    KEY("hidden_act", KEY_STRING, hidden_act),
    KEY("layer_norm_eps", KEY_FLOAT, layer_norm_eps),
    KEY("custom_pe_type", KEY_STRING, custom_pe_type),
    KEY("keep_ape", KEY_BOOL, keep_ape),
    KEY("block_size", KEY_INT, block_size),
    KEY("num_axes", KEY_INT, num_axes),
    KEY("axis_scale", KEY_BOOL, axis_scale),
    KEY("prepend_cls", KEY_BOOL, prepend_cls),
    KEY("cls_position", KEY_FLOAT, cls_position),
    KEY("theta_base", KEY_FLOAT, theta_base),
    KEY("scale_factor", KEY_FLOAT, scale_factor),
    KEY("num_class", KEY_INT, num_class),
    KEY("mlp_intermediate", KEY_INT, mlp_intermediate),
};
#undef KEY

static const char *const pe_names[] = {"raw", "none", "vanilla-rope", "liere", "comrope-ap", "comrope-ld"};
static const char *const act_names[] = {"quick_gelu", "gelu", "gelu_new", "relu"};

const char *pe_type_name(pe_type t) { return (t >= 0 && t <= PE_COMROPE_LD) ? pe_names[t] : "?"; }

const char *activation_name(activation a) { return (a >= 0 && a <= ACT_RELU) ? act_names[a] : "?"; }

static void set_defaults(vit_config *c) {
    memset(c, 0, sizeof(*c));
    c->hidden_size = 768;
    c->intermediate_size = 3072;
    c->num_hidden_layers = 12;
    c->num_attention_heads = 12;
    c->num_channels = 3;
    c->image_size = 224;
    c->patch_size = 32;
    c->hidden_act = ACT_QUICK_GELU;
    c->layer_norm_eps = 1e-5;
    c->custom_pe_type = PE_RAW;
    c->keep_ape = 0;
    c->block_size = 2;
    c->num_axes = 2;
    c->axis_scale = 1;
    c->prepend_cls = 1;
    c->cls_position = 0.5;
    c->theta_base = 1e-100;
    c->scale_factor = 1e100;
    c->num_class = 1000;
    c->mlp_intermediate = 0;
}

/* Reads one key of the table from `v` into the config. */
static int read_key(const config_key *k, json_t *v, vit_config *c, const char *name, char *err,
                    size_t errlen) {
    char *field = (char *)c + k->offset;
    switch (k->type) {
    case KEY_INT:
        /* json integers only; HF never writes 768.0 for a size */
        if (!json_is_integer(v)) {
            snprintf(err, errlen, "%s: key \"%s\" must be an integer", name, k->name);
            return -1;
        }
        if (json_integer_value(v) < -1000000000LL || json_integer_value(v) > 1000000000LL) {
            snprintf(err, errlen, "%s: key \"%s\" is out of range", name, k->name);
            return -1;
        }
        *(int *)field = (int)json_integer_value(v);
        return 0;
    case KEY_FLOAT:
        if (!json_is_number(v)) {
            snprintf(err, errlen, "%s: key \"%s\" must be a number", name, k->name);
            return -1;
        }
        *(double *)field = json_number_value(v);
        return 0;
    case KEY_BOOL:
        if (!json_is_boolean(v)) {
            snprintf(err, errlen, "%s: key \"%s\" must be true or false", name, k->name);
            return -1;
        }
        *(int *)field = json_is_true(v);
        return 0;
    case KEY_STRING: {
        if (!json_is_string(v)) {
            snprintf(err, errlen, "%s: key \"%s\" must be a string", name, k->name);
            return -1;
        }
        const char *s = json_string_value(v);
        if (strcmp(k->name, "custom_pe_type") == 0) {
            for (int i = 0; i <= PE_COMROPE_LD; i++)
                if (strcmp(s, pe_names[i]) == 0) {
                    c->custom_pe_type = (pe_type)i;
                    return 0;
                }
            snprintf(err, errlen,
                     "%s: unknown custom_pe_type \"%s\" (expected raw, none, vanilla-rope, "
                     "liere, comrope-ap or comrope-ld)",
                     name, s);
            return -1;
        }
        /* hidden_act */
        if (strcmp(s, "quick_gelu") == 0) c->hidden_act = ACT_QUICK_GELU;
        else if (strcmp(s, "gelu") == 0) c->hidden_act = ACT_GELU;
        else if (strcmp(s, "gelu_new") == 0 || strcmp(s, "gelu_pytorch_tanh") == 0)
            c->hidden_act = ACT_GELU_TANH;
        else if (strcmp(s, "relu") == 0) c->hidden_act = ACT_RELU;
        else {
            snprintf(err, errlen,
                     "%s: unsupported hidden_act \"%s\" (expected quick_gelu, gelu, gelu_new, "
                     "gelu_pytorch_tanh or relu)",
                     name, s);
            return -1;
        }
        return 0;
    }
    }
    return -1;
}

/* id2label: {"0": "T-shirt/top", ...}; num_class decides the head, so names
 * beyond it are ignored and classes without a name get none. */
static int read_labels(json_t *obj, vit_config *c, const char *name, char *err, size_t errlen) {
    if (!json_is_object(obj)) {
        snprintf(err, errlen, "%s: key \"id2label\" must be an object", name);
        return -1;
    }
    c->labels = calloc((size_t)c->num_class, sizeof(char *));
    if (!c->labels) {
        snprintf(err, errlen, "%s: out of memory for id2label", name);
        return ENGINE_ERR_MEMORY;
    }
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        char *end = NULL;
        long idx = strtol(key, &end, 10);
        if (end == key || *end != '\0' || idx < 0) {
            snprintf(err, errlen, "%s: id2label key \"%.40s\" is not a class index", name, key);
            return -1;
        }
        if (idx >= c->num_class) continue; /* names beyond the head's classes: unused */
        if (!json_is_string(v)) {
            snprintf(err, errlen, "%s: id2label[\"%.40s\"] must be a string", name, key);
            return -1;
        }
        free(c->labels[idx]);
        c->labels[idx] = strdup(json_string_value(v));
        if (!c->labels[idx]) {
            snprintf(err, errlen, "%s: out of memory for id2label", name);
            return ENGINE_ERR_MEMORY;
        }
    }
    return 0;
}

/* Shape rules: the ones the official code asserts, plus what we need to run. */
static int check_shapes(vit_config *c, const char *name, char *err, size_t errlen) {
    struct {
        const char *key;
        int value;
    } positive[] = {{"hidden_size", c->hidden_size},
                    {"intermediate_size", c->intermediate_size},
                    {"num_hidden_layers", c->num_hidden_layers},
                    {"num_attention_heads", c->num_attention_heads},
                    {"image_size", c->image_size},
                    {"patch_size", c->patch_size},
                    {"block_size", c->block_size},
                    {"num_class", c->num_class}};
    for (size_t i = 0; i < sizeof(positive) / sizeof(positive[0]); i++) {
        if (positive[i].value <= 0) {
            snprintf(err, errlen, "%s: key \"%s\" must be positive (got %d)", name, positive[i].key,
                     positive[i].value);
            return -1;
        }
    }
    /* Bounds that keep every later size product far from overflow. */
    if (c->hidden_size > 65536 || c->intermediate_size > 262144 || c->num_hidden_layers > 1024 ||
        c->patch_size > 1024 || c->image_size > 65536 || c->num_class > 1000000 ||
        c->mlp_intermediate > 262144) {
        snprintf(err, errlen, "%s: a size key is implausibly large", name);
        return -1;
    }
    if (c->mlp_intermediate < 0) {
        snprintf(err, errlen, "%s: key \"mlp_intermediate\" must be >= 0", name);
        return -1;
    }
    if (c->num_channels != 1 && c->num_channels != 3) {
        snprintf(err, errlen, "%s: key \"num_channels\" must be 1 or 3 (got %d)", name, c->num_channels);
        return -1;
    }
    if (c->num_axes == 3) {
        snprintf(err, errlen,
                 "%s: key \"num_axes\" is 3 (a video model); only 2-D image models are supported", name);
        return -1;
    }
    if (c->num_axes != 2) {
        snprintf(err, errlen, "%s: key \"num_axes\" must be 2 (got %d)", name, c->num_axes);
        return -1;
    }
    if (!c->prepend_cls) {
        snprintf(err, errlen,
                 "%s: key \"prepend_cls\" is false; the model needs its class token "
                 "(the official code cannot run without it either)",
                 name);
        return -1;
    }
    if (c->hidden_size % c->num_attention_heads != 0) {
        snprintf(err, errlen, "%s: key \"hidden_size\" (%d) is not divisible by \"num_attention_heads\" (%d)",
                 name, c->hidden_size, c->num_attention_heads);
        return -1;
    }
    c->head_dim = c->hidden_size / c->num_attention_heads;
    if (!(c->layer_norm_eps >= 0) || !isfinite(c->layer_norm_eps)) {
        snprintf(err, errlen, "%s: key \"layer_norm_eps\" must be a finite number >= 0", name);
        return -1;
    }
    if (!isfinite(c->cls_position)) {
        snprintf(err, errlen, "%s: key \"cls_position\" must be finite", name);
        return -1;
    }
    int b = c->block_size;
    switch (c->custom_pe_type) {
    case PE_VANILLA_ROPE:
        if (b != 2) {
            snprintf(err, errlen, "%s: vanilla-rope needs \"block_size\" 2 (got %d)", name, b);
            return -1;
        }
        if (c->head_dim % (2 * c->num_axes) != 0) {
            snprintf(err, errlen, "%s: vanilla-rope needs head_dim (%d) divisible by 2*num_axes (%d)", name,
                     c->head_dim, 2 * c->num_axes);
            return -1;
        }
        if (!isfinite(c->theta_base)) {
            snprintf(err, errlen, "%s: key \"theta_base\" must be finite", name);
            return -1;
        }
        break;
    case PE_LIERE:
    case PE_COMROPE_LD:
        if (c->head_dim % b != 0) {
            snprintf(err, errlen, "%s: head_dim (%d) is not divisible by \"block_size\" (%d)", name,
                     c->head_dim, b);
            return -1;
        }
        if (c->custom_pe_type == PE_LIERE && !(c->scale_factor != 0 && isfinite(c->scale_factor))) {
            snprintf(err, errlen, "%s: key \"scale_factor\" must be finite and non-zero", name);
            return -1;
        }
        break;
    case PE_COMROPE_AP:
        if (c->head_dim % c->num_axes != 0 || (c->head_dim / c->num_axes) % b != 0) {
            snprintf(err, errlen,
                     "%s: comrope-ap needs head_dim/num_axes (%d/%d) divisible by \"block_size\" (%d)", name,
                     c->head_dim, c->num_axes, b);
            return -1;
        }
        break;
    default: break;
    }
    if (b > 64) {
        snprintf(err, errlen, "%s: key \"block_size\" %d is larger than we support (64)", name, b);
        return -1;
    }
    c->has_ape = (c->custom_pe_type == PE_RAW) || !c->keep_ape;
    c->ape_side = c->image_size / c->patch_size;
    if (c->has_ape && c->ape_side < 1) {
        snprintf(err, errlen, "%s: image_size (%d) is smaller than patch_size (%d)", name, c->image_size,
                 c->patch_size);
        return -1;
    }
    return 0;
}

int vit_config_parse(const char *json, size_t len, const char *name, vit_config *cfg, char *err,
                     size_t errlen) {
    json_error_t jerr;
    json_t *root = NULL;
    int rc = -1;

    set_defaults(cfg);
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, errlen, "%s: invalid JSON at line %d: %s", name, jerr.line, jerr.text);
        if (json_error_code(&jerr) == json_error_out_of_memory) rc = ENGINE_ERR_MEMORY;
        goto cleanup;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "%s: expected a JSON object", name);
        goto cleanup;
    }
    for (size_t i = 0; i < sizeof(config_keys) / sizeof(config_keys[0]); i++) {
        json_t *v = json_object_get(root, config_keys[i].name);
        if (v && !json_is_null(v) && read_key(&config_keys[i], v, cfg, name, err, errlen) != 0) goto cleanup;
    }
    if (check_shapes(cfg, name, err, errlen) != 0) goto cleanup;
    json_t *labels = json_object_get(root, "id2label");
    if (labels && !json_is_null(labels) && (rc = read_labels(labels, cfg, name, err, errlen)) != 0)
        goto cleanup;
    rc = 0;
cleanup:
    if (root) json_decref(root);
    if (rc != 0) vit_config_free(cfg);
    return rc;
}

int vit_config_load(const char *path, vit_config *cfg, char *err, size_t errlen) {
    char *buf = NULL;
    size_t len;
    memset(cfg, 0, sizeof(*cfg));
    int rc = small_file_read(path, VIT_CONFIG_MAX_BYTES, SMALL_FILE_REGULAR, &buf, &len, err, errlen);
    if (rc == 0) rc = vit_config_parse(buf, len, path, cfg, err, errlen);
    free(buf);
    return rc;
}

void vit_config_free(vit_config *cfg) {
    if (cfg->labels) {
        for (int i = 0; i < cfg->num_class; i++) free(cfg->labels[i]);
        free(cfg->labels);
    }
    cfg->labels = NULL;
}

const char *vit_config_label(const vit_config *cfg, int k) {
    if (!cfg->labels || k < 0 || k >= cfg->num_class) return NULL;
    return cfg->labels[k];
}
