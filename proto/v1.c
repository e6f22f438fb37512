/* v1.c: the native API, POST /v1/classify and GET /v1/models.
 *
 *   {"image": "<base64>" | "images": [...], "resolution": 224 | [h, w] |
 *    "HxW" | "native", "fit": "resize" | "crop", "top_k": 5,
 *    "return_logits": false, "timeout_ms": 1000}
 *
 * or a raw image/jpeg / image/png body with the same knobs as query
 * arguments. Every refusal names the field (and the image's position). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "image.h"
#include "json_load.h"
#include "proto.h"

#define MAX_TIMEOUT_MS 3600000

/* "application/json; charset=utf-8" has media type "application/json". */
static int media_type_is(const char *content_type, const char *type) {
    size_t n = strlen(type);
    if (!content_type || strncasecmp(content_type, type, n) != 0) return 0;
    char c = content_type[n];
    return c == '\0' || c == ';' || c == ' ';
}

/* Appends an image. A request of one image ("image", a raw body) gets its
 * array here; for "images" v1_parse_json allocates room for all first. */
static int add_image(proto_request *req, uint8_t *data, size_t len) {
    if (!req->images && !(req->images = calloc(1, sizeof(proto_image)))) return -1;
    memset(&req->images[req->num_images], 0, sizeof(proto_image));
    req->images[req->num_images].encoded = data;
    req->images[req->num_images].encoded_len = len;
    req->num_images++;
    return 0;
}

static int parse_resolution_text(const char *s, proto_request *req, char *err, size_t errlen) {
    char msg[256];
    if (resolution_parse(s, &req->resolution, msg, sizeof(msg))) {
        snprintf(err, errlen, "resolution: %s", msg);
        return 400;
    }
    return 0;
}

static int parse_fit_text(const char *s, proto_request *req, char *err, size_t errlen) {
    if (strcmp(s, "resize") == 0) req->fit = IMAGE_FIT_RESIZE;
    else if (strcmp(s, "crop") == 0) req->fit = IMAGE_FIT_CROP;
    else {
        snprintf(err, errlen, "fit: expected \"resize\" or \"crop\", not \"%.40s\"", s);
        return 400;
    }
    return 0;
}

static int check_top_k(const proto_model *pm, long long k, proto_request *req, char *err, size_t errlen) {
    if (k < 1) {
        snprintf(err, errlen, "top_k: must be a positive integer, not %lld", k);
        return 400;
    }
    req->top_k = k > pm->num_class ? pm->num_class : (int)k;
    return 0;
}

static int check_timeout(long long t, proto_request *req, char *err, size_t errlen) {
    if (t < 1 || t > MAX_TIMEOUT_MS) {
        snprintf(err, errlen, "timeout_ms: must be in [1, %d], not %lld", MAX_TIMEOUT_MS, t);
        return 400;
    }
    req->timeout_ms = (int)t;
    return 0;
}

/* resolution as JSON: 224, [h, w], "HxW", "224" or "native". */
static int parse_resolution_json(json_t *v, proto_request *req, char *err, size_t errlen) {
    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        if (n < 1 || n > 65536) {
            snprintf(err, errlen, "resolution: must be in [1, 65536], not %lld", (long long)n);
            return 400;
        }
        req->resolution = (resolution_request){0, (int)n, (int)n};
        return 0;
    }
    if (json_is_string(v)) return parse_resolution_text(json_string_value(v), req, err, errlen);
    if (json_is_array(v) && json_array_size(v) == 2 && json_is_integer(json_array_get(v, 0)) &&
        json_is_integer(json_array_get(v, 1))) {
        json_int_t h = json_integer_value(json_array_get(v, 0));
        json_int_t w = json_integer_value(json_array_get(v, 1));
        if (h < 1 || w < 1 || h > 65536 || w > 65536) {
            snprintf(err, errlen, "resolution: [h, w] must be in [1, 65536], not [%lld, %lld]", (long long)h,
                     (long long)w);
            return 400;
        }
        req->resolution = (resolution_request){0, (int)h, (int)w};
        return 0;
    }
    snprintf(err, errlen, "resolution: expected an integer, [h, w], \"HxW\" or \"native\"");
    return 400;
}

static int decode_image_field(json_t *v, const char *field, int index, proto_request *req, char *err,
                              size_t errlen) {
    char where[64], msg[256];
    if (index < 0) snprintf(where, sizeof(where), "%s", field);
    else snprintf(where, sizeof(where), "%s[%d]", field, index);
    if (!json_is_string(v)) {
        snprintf(err, errlen, "%s: expected a base64 string", where);
        return 400;
    }
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    /* A data URL ("data:image/png;base64,....") is accepted as browsers make it. */
    if (n > 5 && strncmp(s, "data:", 5) == 0) {
        const char *comma = memchr(s, ',', n);
        if (comma) {
            n -= (size_t)(comma + 1 - s);
            s = comma + 1;
        }
    }
    if (n == 0) {
        snprintf(err, errlen, "%s: empty image", where);
        return 400;
    }
    uint8_t *data;
    size_t len;
    if (base64_decode(s, n, &data, &len, msg, sizeof(msg))) {
        snprintf(err, errlen, "%s: %s", where, msg);
        return 400;
    }
    if (image_format(data, len) == IMAGE_FORMAT_UNKNOWN) {
        free(data);
        snprintf(err, errlen, "%s: not a JPEG or PNG file", where);
        return 415;
    }
    if (add_image(req, data, len)) {
        free(data);
        snprintf(err, errlen, "out of memory");
        return 500;
    }
    return 0;
}

int v1_parse_json(const proto_model *pm, const char *body, size_t len, proto_request *req, char *err,
                  size_t errlen) {
    json_error_t jerr;
    int status = 400;
    proto_request_init(req, pm, PROTO_V1);
    json_t *root = proto_json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, errlen, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "the body must be a JSON object");
        goto fail;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "image") && strcmp(key, "images") && strcmp(key, "resolution") &&
            strcmp(key, "fit") && strcmp(key, "top_k") && strcmp(key, "return_logits") &&
            strcmp(key, "timeout_ms")) {
            snprintf(err, errlen, "%.64s: unknown field", key);
            goto fail;
        }
    }
    json_t *image = json_object_get(root, "image"), *images = json_object_get(root, "images");
    if (image && images) {
        snprintf(err, errlen, "image, images: give one of them, not both");
        goto fail;
    }
    if (!image && !images) {
        snprintf(err, errlen, "image: missing (give \"image\" or \"images\")");
        goto fail;
    }
    if ((v = json_object_get(root, "resolution")) && (status = parse_resolution_json(v, req, err, errlen)))
        goto fail;
    status = 400;
    if ((v = json_object_get(root, "fit"))) {
        if (!json_is_string(v)) {
            snprintf(err, errlen, "fit: expected \"resize\" or \"crop\"");
            goto fail;
        }
        if (parse_fit_text(json_string_value(v), req, err, errlen)) goto fail;
    }
    if ((v = json_object_get(root, "top_k"))) {
        if (!json_is_integer(v)) {
            snprintf(err, errlen, "top_k: expected an integer");
            goto fail;
        }
        if (check_top_k(pm, json_integer_value(v), req, err, errlen)) goto fail;
    }
    if ((v = json_object_get(root, "return_logits"))) {
        if (!json_is_boolean(v)) {
            snprintf(err, errlen, "return_logits: expected true or false");
            goto fail;
        }
        req->return_logits = json_is_true(v);
    }
    if ((v = json_object_get(root, "timeout_ms"))) {
        if (!json_is_integer(v)) {
            snprintf(err, errlen, "timeout_ms: expected an integer");
            goto fail;
        }
        if (check_timeout(json_integer_value(v), req, err, errlen)) goto fail;
    }
    if (image) {
        if ((status = decode_image_field(image, "image", -1, req, err, errlen))) goto fail;
    } else {
        if (!json_is_array(images) || json_array_size(images) == 0) {
            snprintf(err, errlen, "images: expected a non-empty array of base64 strings");
            goto fail;
        }
        if ((status = proto_check_num_images(json_array_size(images), pm->max_images, err, errlen)))
            goto fail;
        /* one allocation for all: growing by one per image is quadratic */
        req->images = calloc(json_array_size(images), sizeof(proto_image));
        if (!req->images) {
            snprintf(err, errlen, "out of memory");
            status = 500;
            goto fail;
        }
        size_t i;
        json_array_foreach(images, i, v) {
            if ((status = decode_image_field(v, "images", (int)i, req, err, errlen))) goto fail;
        }
    }
    json_decref(root);
    return 0;
fail:
    json_decref(root);
    proto_request_free(req);
    return status;
}

int v1_parse_query_arg(const proto_model *pm, proto_request *req, const char *key, const char *value,
                       char *err, size_t errlen) {
    char *end;
    if (!value) value = "";
    if (strcmp(key, "resolution") == 0) return parse_resolution_text(value, req, err, errlen);
    if (strcmp(key, "fit") == 0) return parse_fit_text(value, req, err, errlen);
    if (strcmp(key, "top_k") == 0) {
        long long k = strtoll(value, &end, 10);
        if (*value == '\0' || *end) {
            snprintf(err, errlen, "top_k: expected an integer, not \"%.40s\"", value);
            return 400;
        }
        return check_top_k(pm, k, req, err, errlen);
    }
    if (strcmp(key, "return_logits") == 0) {
        if (!strcmp(value, "true") || !strcmp(value, "1")) req->return_logits = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "0")) req->return_logits = 0;
        else {
            snprintf(err, errlen, "return_logits: expected true or false, not \"%.40s\"", value);
            return 400;
        }
        return 0;
    }
    if (strcmp(key, "timeout_ms") == 0) {
        long long t = strtoll(value, &end, 10);
        if (*value == '\0' || *end) {
            snprintf(err, errlen, "timeout_ms: expected an integer, not \"%.40s\"", value);
            return 400;
        }
        return check_timeout(t, req, err, errlen);
    }
    snprintf(err, errlen, "%.64s: unknown query argument", key);
    return 400;
}

int v1_parse_query(const proto_model *pm, proto_request *req, char *const *kv, char *err, size_t errlen) {
    /* At most one unknown key is read (refused) and five known ones, so
     * the look back stays short. A repeated key took its last value, where
     * a proxy or gateway in front (nginx's $arg_top_k) checks the first:
     * ?resolution=224&resolution=native passed a check of the first. */
    for (int i = 0; kv && kv[2 * i]; i++) {
        for (int j = 0; j < i; j++)
            if (strcmp(kv[2 * j], kv[2 * i]) == 0) {
                snprintf(err, errlen, "%.64s: given more than once in the query", kv[2 * i]);
                return 400;
            }
        int st = v1_parse_query_arg(pm, req, kv[2 * i], kv[2 * i + 1], err, errlen);
        if (st) return st;
    }
    return 0;
}

const char *v1_sniff_media_type(const uint8_t *body, size_t len) {
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n')) i++;
    if (i < len && body[i] == '{') return "application/json";
    switch (image_format(body, len)) {
    case IMAGE_FORMAT_PNG: return "image/png";
    case IMAGE_FORMAT_JPEG: return "image/jpeg";
    default: return NULL;
    }
}

int v1_parse(const proto_model *pm, const char *content_type, const uint8_t *body, size_t len,
             proto_request *req, char *err, size_t errlen) {
    if (media_type_is(content_type, "application/json"))
        return v1_parse_json(pm, (const char *)body, len, req, err, errlen);
    if (media_type_is(content_type, "image/jpeg") || media_type_is(content_type, "image/png")) {
        proto_request_init(req, pm, PROTO_V1);
        if (len == 0) {
            snprintf(err, errlen, "body: empty image");
            return 400;
        }
        if (image_format(body, len) == IMAGE_FORMAT_UNKNOWN) {
            snprintf(err, errlen, "body: not a JPEG or PNG file");
            return 415;
        }
        uint8_t *copy = malloc(len);
        if (!copy || add_image(req, copy, len)) {
            free(copy);
            snprintf(err, errlen, "out of memory");
            return 500;
        }
        memcpy(copy, body, len);
        return 0;
    }
    snprintf(err, errlen, "Content-Type: expected application/json, image/jpeg or image/png, not \"%.60s\"",
             content_type ? content_type : "(none)");
    return 415;
}

static char *dump_body(json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

int v1_response(const proto_model *pm, const proto_request *req, const proto_result *res, proto_body *out) {
    int K = res->num_class, k = req->top_k < K ? req->top_k : K;
    int *order = malloc(sizeof(int) * (size_t)k);
    double *probs = malloc(sizeof(double) * (size_t)k);
    json_t *root = json_object(), *preds = json_array();
    char num[16];
    memset(out, 0, sizeof(*out));
    if (!order || !probs || !root || !preds) goto cleanup;
    json_object_set_new(root, "model", json_string(pm->name));
    for (int i = 0; i < res->num_images; i++) {
        const float *lg = res->logits + (size_t)i * K;
        json_t *p = json_object(), *top = json_array();
        /* Every append is checked: json_real and json_pack refuse NaN and
         * Inf, and a body with an element missing is worse than none. */
        int bad = !p || !top || json_object_set_new(p, "resolution", json_pack("[ii]", res->h[i], res->w[i]));
        proto_top_k(lg, K, k, order, probs);
        for (int j = 0; j < k && !bad; j++)
            bad = json_array_append_new(top, json_pack("{s:i,s:s,s:f}", "index", order[j], "label",
                                                       proto_label(pm, order[j], num, sizeof(num)), "score",
                                                       probs[j])) != 0;
        bad |= json_object_set_new(p, "top", top) != 0;
        if (req->return_logits && !bad) {
            json_t *arr = json_array();
            bad = !arr;
            for (int j = 0; j < K && !bad; j++) bad = json_array_append_new(arr, json_real(lg[j])) != 0;
            bad |= json_object_set_new(p, "logits", arr) != 0;
        }
        bad |= json_array_append_new(preds, p) != 0;
        if (bad) goto cleanup;
    }
    json_object_set_new(root, "predictions", preds);
    preds = NULL;
    json_object_set_new(root, "timing_ms",
                        json_pack("{s:f,s:f,s:f}", "queue", res->queue_ms, "compute", res->compute_ms,
                                  "total", res->total_ms));
    out->data = dump_body(root);
    root = NULL;
    if (out->data) out->len = out->json_len = strlen(out->data);
cleanup:
    json_decref(root);
    json_decref(preds);
    free(order);
    free(probs);
    return out->data ? 0 : -1;
}

static json_t *v1_model(const proto_model *pm) {
    json_t *labels = json_array();
    char num[16];
    for (int k = 0; k < pm->num_class; k++)
        json_array_append_new(labels, json_string(proto_label(pm, k, num, sizeof(num))));
    json_t *m =
        json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:o,s:{s:i,s:i,s:i}}", "name", pm->name, "pe_type", pm->pe_type,
                  "training_resolution", pm->image_size, "patch_size", pm->patch_size, "channels",
                  pm->num_channels, "num_classes", pm->num_class, "labels", labels, "resolutions",
                  "multiple_of", pm->patch_size, "min", pm->patch_size, "max_tokens", pm->max_tokens);
    return m;
}

char *v1_models_json(const proto_model *const *pms, int n) {
    json_t *list = json_array();
    for (int i = 0; list && i < n; i++) json_array_append_new(list, v1_model(pms[i]));
    return dump_body(json_pack("{s:o}", "models", list));
}
