/* v2.c: the Open Inference Protocol (KServe v2) infer request and its
 * metadata documents, with the classification and binary tensor extensions.
 *
 * Inputs (exactly one):
 *   pixel_values FP32 [N, C, H, W]: normalized pixels, used as is;
 *   images BYTES [N]: JPEG/PNG files, base64 strings in JSON, or in the
 *     binary section each element as a 4-byte little-endian length then the
 *     bytes (as Triton frames BYTES).
 * Output: logits FP32 [N, K], or with "parameters": {"classification": k}
 * BYTES [N, k] of "score:index:label", highest first. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "json_load.h"
#include "proto.h"

/* Reads shape [d0, d1, ...] into dims; returns the rank or -1. */
static int read_shape(json_t *shape, long long *dims, int max_rank) {
    if (!json_is_array(shape) || json_array_size(shape) == 0 || json_array_size(shape) > (size_t)max_rank)
        return -1;
    size_t i;
    json_t *d;
    json_array_foreach(shape, i, d) {
        if (!json_is_integer(d) || json_integer_value(d) < 1 || json_integer_value(d) > (1 << 24)) return -1;
        dims[i] = json_integer_value(d);
    }
    return (int)json_array_size(shape);
}

/* Where the numbers of a pixel_values tensor go: value n is pixel n % per
 * of image n / per (each image its own array, filled in place: no copy of
 * the whole tensor on the way). */
typedef struct {
    proto_image *images;
    size_t per, cap, n;
} pixel_sink;

/* How many numbers `data` holds (flat or nested arrays, as flatten_numbers
 * reads them), or -1 if it holds anything else: counted before the images
 * are allocated, so that a shape the data does not fill costs nothing. */
static long long count_numbers(json_t *data, int depth) {
    if (json_is_number(data)) return 1;
    if (!json_is_array(data) || depth > 8) return -1;
    long long n = 0;
    size_t i;
    json_t *v;
    json_array_foreach(data, i, v) {
        long long k = count_numbers(v, depth + 1);
        if (k < 0) return -1;
        n += k;
    }
    return n;
}

/* Copies numbers from `data` (flat or nested arrays) into the sink. */
static int flatten_numbers(json_t *data, pixel_sink *out, int depth) {
    if (json_is_number(data)) {
        if (out->n >= out->cap) return -1;
        out->images[out->n / out->per].pixels[out->n % out->per] = (float)json_number_value(data);
        out->n++;
        return 0;
    }
    if (!json_is_array(data) || depth > 8) return -1;
    size_t i;
    json_t *v;
    json_array_foreach(data, i, v) {
        if (flatten_numbers(v, out, depth + 1)) return -1;
    }
    return 0;
}

/* Collects the strings of `data` (flat or nested). */
static int flatten_strings(json_t *data, json_t **out, size_t cap, size_t *n, int depth) {
    if (json_is_string(data)) {
        if (*n >= cap) return -1;
        out[(*n)++] = data;
        return 0;
    }
    if (!json_is_array(data) || depth > 4) return -1;
    size_t i;
    json_t *v;
    json_array_foreach(data, i, v) {
        if (flatten_strings(v, out, cap, n, depth + 1)) return -1;
    }
    return 0;
}

static int alloc_images(proto_request *req, int n) {
    req->images = calloc((size_t)n, sizeof(proto_image));
    if (!req->images) return -1;
    req->num_images = n;
    return 0;
}

/* The input's binary_data_size parameter, or -1 when it has none. */
static long long binary_size(json_t *input) {
    json_t *p = json_object_get(json_object_get(input, "parameters"), "binary_data_size");
    return json_is_integer(p) ? (long long)json_integer_value(p) : -1;
}

static int parse_pixel_values(const proto_model *pm, json_t *input, const uint8_t *bin, size_t bin_len,
                              proto_request *req, char *err, size_t errlen) {
    long long dims[4];
    const char *dt = json_string_value(json_object_get(input, "datatype"));
    if (!dt || strcmp(dt, "FP32") != 0) {
        snprintf(err, errlen, "inputs[0].datatype: pixel_values must be FP32");
        return 400;
    }
    if (read_shape(json_object_get(input, "shape"), dims, 4) != 4 || dims[1] != pm->num_channels) {
        snprintf(err, errlen, "inputs[0].shape: pixel_values must be [N, %d, H, W] with positive sizes",
                 pm->num_channels);
        return 400;
    }
    /* read_shape bounds each size by 2^24 and C is the model's: per fits in
     * 64 bits, and so does the total once N is bounded (checked first). */
    long long per = dims[1] * dims[2] * dims[3];
    int status = proto_check_num_images((size_t)dims[0], pm->max_images, err, errlen);
    if (status) return status;
    if (dims[0] > 4096 || per > ((long long)1 << 30) || dims[0] * per > ((long long)1 << 30)) {
        snprintf(
            err, errlen,
            "inputs[0].shape: [%lld, %lld, %lld, %lld] is too large (at most 4096 images and 2^30 values)",
            dims[0], dims[1], dims[2], dims[3]);
        return 413;
    }
    long long total = dims[0] * per;
    long long bsize = binary_size(input);
    json_t *data = json_object_get(input, "data");
    if (bsize >= 0 && (bsize != total * 4 || (size_t)bsize > bin_len)) {
        snprintf(err, errlen,
                 "inputs[0].parameters.binary_data_size: %lld bytes, the shape needs "
                 "%lld and the binary section holds %zu",
                 bsize, total * 4, bin_len);
        return 400;
    }
    if (bsize < 0 && (!data || count_numbers(data, 0) != total)) {
        snprintf(err, errlen, "inputs[0].data: expected %lld numbers (flat or nested) matching the shape",
                 total);
        return 400;
    }
    if (alloc_images(req, (int)dims[0])) {
        snprintf(err, errlen, "out of memory");
        return 500;
    }
    for (int i = 0; i < req->num_images; i++) { /* freed by the caller on failure */
        req->images[i].pixels = malloc(sizeof(float) * (size_t)per);
        if (!req->images[i].pixels) {
            snprintf(err, errlen, "out of memory");
            return 500;
        }
        req->images[i].h = (int)dims[2];
        req->images[i].w = (int)dims[3];
        if (bsize >= 0) /* little-endian floats, as x86 and arm64 hold them */
            memcpy(req->images[i].pixels, bin + (size_t)i * per * 4, sizeof(float) * (size_t)per);
    }
    if (bsize < 0) {
        pixel_sink sink = {req->images, (size_t)per, (size_t)total, 0};
        if (!data || flatten_numbers(data, &sink, 0) || sink.n != (size_t)total) {
            snprintf(err, errlen, "inputs[0].data: expected %lld numbers (flat or nested) matching the shape",
                     total);
            return 400;
        }
    }
    /* NaN, Inf, and JSON numbers past float32's range (1e39 becomes Inf):
     * refused, since they would make the logits, and the answer, invalid. */
    for (int i = 0; i < req->num_images; i++) {
        for (long long k = 0; k < per; k++) {
            if (!isfinite(req->images[i].pixels[k])) {
                snprintf(err, errlen,
                         "inputs[0].%s: value %lld (image %d) is not a finite float32 "
                         "(NaN, Inf, or a number too large for float32)",
                         bsize >= 0 ? "binary data" : "data", i * per + k, i);
                return 400;
            }
        }
    }
    return 0;
}

static int take_encoded(proto_request *req, int i, uint8_t *data, size_t len, char *err, size_t errlen) {
    if (image_format(data, len) == IMAGE_FORMAT_UNKNOWN) {
        free(data);
        snprintf(err, errlen, "inputs[0].data[%d]: not a JPEG or PNG file", i);
        return 415;
    }
    req->images[i].encoded = data;
    req->images[i].encoded_len = len;
    return 0;
}

static int parse_images(const proto_model *pm, json_t *input, const uint8_t *bin, size_t bin_len,
                        proto_request *req, char *err, size_t errlen) {
    long long dims[2];
    const char *dt = json_string_value(json_object_get(input, "datatype"));
    if (!dt || strcmp(dt, "BYTES") != 0) {
        snprintf(err, errlen, "inputs[0].datatype: images must be BYTES");
        return 400;
    }
    int rank = read_shape(json_object_get(input, "shape"), dims, 2), status;
    int shape_ok = rank >= 1 && !(rank == 2 && dims[1] != 1);
    /* the limit before the parser's own bound, as pixel_values does: a
     * count over both is refused by the limit a client can look up */
    if (shape_ok && (status = proto_check_num_images((size_t)dims[0], pm->max_images, err, errlen)))
        return status;
    if (!shape_ok || dims[0] > 4096) {
        snprintf(err, errlen, "inputs[0].shape: images must be [N] (or [N, 1]) with N in [1, 4096]");
        return 400;
    }
    int n = (int)dims[0];
    if (alloc_images(req, n)) {
        snprintf(err, errlen, "out of memory");
        return 500;
    }
    long long bsize = binary_size(input);
    if (bsize >= 0) {
        if ((size_t)bsize > bin_len) {
            snprintf(err, errlen,
                     "inputs[0].parameters.binary_data_size: %lld bytes, but the binary "
                     "section holds %zu",
                     bsize, bin_len);
            return 400;
        }
        size_t off = 0;
        for (int i = 0; i < n; i++) {
            if (off + 4 > (size_t)bsize) {
                snprintf(err, errlen, "inputs[0]: binary data ends before element %d's length", i);
                return 400;
            }
            uint32_t len = (uint32_t)bin[off] | (uint32_t)bin[off + 1] << 8 | (uint32_t)bin[off + 2] << 16 |
                           (uint32_t)bin[off + 3] << 24;
            off += 4;
            if (len == 0 || len > (size_t)bsize - off) {
                snprintf(err, errlen, "inputs[0]: element %d's length %u runs past binary_data_size", i, len);
                return 400;
            }
            uint8_t *copy = malloc(len);
            if (!copy) {
                snprintf(err, errlen, "out of memory");
                return 500;
            }
            memcpy(copy, bin + off, len);
            off += len;
            if ((status = take_encoded(req, i, copy, len, err, errlen))) return status;
        }
        if (off != (size_t)bsize) {
            snprintf(err, errlen, "inputs[0]: %zu bytes left after %d elements", (size_t)bsize - off, n);
            return 400;
        }
        return 0;
    }
    json_t **strs = calloc((size_t)n, sizeof(json_t *));
    size_t got = 0;
    status = 400;
    if (!strs) {
        snprintf(err, errlen, "out of memory");
        return 500;
    }
    if (flatten_strings(json_object_get(input, "data"), strs, (size_t)n, &got, 0) || got != (size_t)n) {
        snprintf(err, errlen, "inputs[0].data: expected %d base64 strings matching the shape", n);
        goto cleanup;
    }
    for (int i = 0; i < n; i++) {
        char msg[256];
        uint8_t *data;
        size_t len;
        if (json_string_length(strs[i]) == 0 ||
            base64_decode(json_string_value(strs[i]), json_string_length(strs[i]), &data, &len, msg,
                          sizeof(msg))) {
            snprintf(err, errlen, "inputs[0].data[%d]: %s", i,
                     json_string_length(strs[i]) ? msg : "empty image");
            goto cleanup;
        }
        if ((status = take_encoded(req, i, data, len, err, errlen))) goto cleanup;
        status = 400;
    }
    status = 0;
cleanup:
    free(strs);
    return status;
}

/* Request-level parameters: resolution (integer, "HxW", "native"), fit, timeout_ms,
 * binary_data_output. */
static int parse_parameters(json_t *params, proto_request *req, char *err, size_t errlen) {
    if (!params) return 0;
    if (!json_is_object(params)) {
        snprintf(err, errlen, "parameters: expected an object");
        return 400;
    }
    json_t *v;
    char msg[256];
    if ((v = json_object_get(params, "resolution"))) {
        if (json_is_integer(v) && json_integer_value(v) >= 1 && json_integer_value(v) <= 65536) {
            int n = (int)json_integer_value(v);
            req->resolution = (resolution_request){0, n, n};
        } else if (!json_is_string(v) ||
                   resolution_parse(json_string_value(v), &req->resolution, msg, sizeof(msg))) {
            snprintf(err, errlen,
                     "parameters.resolution: expected a positive integer, \"HxW\" or \"native\"");
            return 400;
        }
    }
    if ((v = json_object_get(params, "fit"))) {
        const char *s = json_string_value(v);
        if (s && strcmp(s, "resize") == 0) req->fit = IMAGE_FIT_RESIZE;
        else if (s && strcmp(s, "crop") == 0) req->fit = IMAGE_FIT_CROP;
        else {
            snprintf(err, errlen, "parameters.fit: expected \"resize\" or \"crop\"");
            return 400;
        }
    }
    if ((v = json_object_get(params, "timeout_ms"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 3600000) {
            snprintf(err, errlen, "parameters.timeout_ms: expected an integer in [1, 3600000]");
            return 400;
        }
        req->timeout_ms = (int)json_integer_value(v);
    }
    if ((v = json_object_get(params, "binary_data_output"))) {
        if (!json_is_boolean(v)) {
            snprintf(err, errlen, "parameters.binary_data_output: expected true or false");
            return 400;
        }
        req->binary_output = json_is_true(v);
    }
    return 0;
}

static int parse_outputs(const proto_model *pm, json_t *outputs, proto_request *req, char *err,
                         size_t errlen) {
    if (!outputs) return 0;
    if (!json_is_array(outputs)) {
        snprintf(err, errlen, "outputs: expected an array");
        return 400;
    }
    size_t i;
    json_t *o;
    json_array_foreach(outputs, i, o) {
        const char *name = json_string_value(json_object_get(o, "name"));
        if (!name || strcmp(name, "logits") != 0) {
            snprintf(err, errlen, "outputs[%zu].name: the model has one output, \"logits\"", i);
            return 400;
        }
        json_t *p = json_object_get(o, "parameters"), *v;
        if (p && !json_is_object(p)) {
            snprintf(err, errlen, "outputs[%zu].parameters: expected an object", i);
            return 400;
        }
        if ((v = json_object_get(p, "classification"))) {
            if (!json_is_integer(v) || json_integer_value(v) < 1) {
                snprintf(err, errlen, "outputs[%zu].parameters.classification: expected a positive integer",
                         i);
                return 400;
            }
            json_int_t k = json_integer_value(v);
            req->classification_k = k > pm->num_class ? pm->num_class : (int)k;
        }
        if ((v = json_object_get(p, "binary_data"))) {
            if (!json_is_boolean(v)) {
                snprintf(err, errlen, "outputs[%zu].parameters.binary_data: expected true or false", i);
                return 400;
            }
            req->binary_output = json_is_true(v);
        }
    }
    return 0;
}

int v2_parse_infer(const proto_model *pm, const uint8_t *body, size_t len, size_t header_len,
                   proto_request *req, char *err, size_t errlen) {
    json_error_t jerr;
    json_t *root = NULL;
    int status = 400;
    proto_request_init(req, pm, PROTO_V2);
    if (header_len > len) {
        snprintf(err, errlen, "Inference-Header-Content-Length: %zu is larger than the body (%zu bytes)",
                 header_len, len);
        goto fail;
    }
    size_t json_len = header_len ? header_len : len;
    if (json_len == 0) { /* jansson would say "wrong arguments" */
        snprintf(err, errlen, "the body is empty: expected a JSON object with \"inputs\"");
        goto fail;
    }
    root = proto_json_loadb((const char *)body, json_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, errlen, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "the body must be a JSON object");
        goto fail;
    }
    json_t *id = json_object_get(root, "id");
    if (id) {
        if (!json_is_string(id)) {
            snprintf(err, errlen, "id: expected a string");
            goto fail;
        }
        req->id = strdup(json_string_value(id));
    }
    if ((status = parse_parameters(json_object_get(root, "parameters"), req, err, errlen))) goto fail;
    if ((status = parse_outputs(pm, json_object_get(root, "outputs"), req, err, errlen))) goto fail;
    status = 400;
    json_t *inputs = json_object_get(root, "inputs");
    if (!json_is_array(inputs) || json_array_size(inputs) != 1) {
        snprintf(err, errlen, "inputs: expected an array of one input, \"pixel_values\" or \"images\"");
        goto fail;
    }
    json_t *input = json_array_get(inputs, 0);
    const char *name = json_string_value(json_object_get(input, "name"));
    json_t *ip = json_object_get(input, "parameters");
    if (ip && !json_is_object(ip)) {
        snprintf(err, errlen, "inputs[0].parameters: expected an object");
        goto fail;
    }
    const uint8_t *bin = body + json_len;
    size_t bin_len = len - json_len;
    /* The one input's binary data is the whole binary section: a size that
     * is not a count, or bytes no input claims, are refused rather than
     * read as "no binary data" or ignored. */
    json_t *bds = json_object_get(ip, "binary_data_size");
    if (bds && !header_len) {
        snprintf(err, errlen,
                 "inputs[0].parameters.binary_data_size: needs the "
                 "Inference-Header-Content-Length header");
        goto fail;
    }
    if (bds && (!json_is_integer(bds) || json_integer_value(bds) < 0)) {
        snprintf(err, errlen, "inputs[0].parameters.binary_data_size: expected a non-negative integer");
        goto fail;
    }
    if (bds && (size_t)json_integer_value(bds) < bin_len) {
        snprintf(err, errlen,
                 "inputs[0].parameters.binary_data_size: %lld bytes, but the binary section after the "
                 "JSON header holds %zu (one input: its data is the whole section)",
                 (long long)json_integer_value(bds), bin_len);
        goto fail;
    }
    if (!bds && bin_len) {
        snprintf(err, errlen,
                 "%zu bytes after the JSON header (Inference-Header-Content-Length %zu), but inputs[0] has "
                 "no binary_data_size",
                 bin_len, header_len);
        goto fail;
    }
    if (name && strcmp(name, "pixel_values") == 0)
        status = parse_pixel_values(pm, input, bin, bin_len, req, err, errlen);
    else if (name && strcmp(name, "images") == 0)
        status = parse_images(pm, input, bin, bin_len, req, err, errlen);
    else snprintf(err, errlen, "inputs[0].name: expected \"pixel_values\" or \"images\"");
    if (status) goto fail;
    json_decref(root);
    return 0;
fail:
    json_decref(root);
    proto_request_free(req);
    return status;
}

int v2_response(const proto_model *pm, const proto_request *req, const proto_result *res, proto_body *out) {
    int N = res->num_images, K = res->num_class, k = req->classification_k;
    json_t *root = json_object(), *o = json_object();
    char *bin = NULL;
    size_t bin_len = 0;
    memset(out, 0, sizeof(*out));
    json_object_set_new(root, "model_name", json_string(pm->name));
    json_object_set_new(root, "model_version", json_string(pm->model_version ? pm->model_version : "1"));
    if (req->id) json_object_set_new(root, "id", json_string(req->id));
    json_object_set_new(o, "name", json_string("logits"));
    if (k > 0) {
        /* classification extension: "score:index:label", highest first */
        int *order = malloc(sizeof(int) * (size_t)k);
        double *probs = malloc(sizeof(double) * (size_t)k);
        json_t *data = json_array();
        char num[16];
        int bad = !order || !probs || !data;
        for (int i = 0; i < N && !bad; i++) {
            proto_top_k(res->logits + (size_t)i * K, K, k, order, probs);
            for (int j = 0; j < k && !bad; j++) {
                /* any label length: a fixed buffer would cut it, perhaps
                 * inside a UTF-8 character, and lose the element */
                json_t *e =
                    json_sprintf("%f:%d:%s", probs[j], order[j], proto_label(pm, order[j], num, sizeof(num)));
                bad = json_array_append_new(data, e) != 0;
            }
        }
        free(order);
        free(probs);
        if (bad) {
            json_decref(data);
            goto fail;
        }
        json_object_set_new(o, "datatype", json_string("BYTES"));
        json_object_set_new(o, "shape", json_pack("[ii]", N, k));
        if (req->binary_output) {
            size_t total = 0, i;
            json_t *v;
            json_array_foreach(data, i, v) total += 4 + json_string_length(v);
            bin = malloc(total ? total : 1);
            if (!bin) {
                json_decref(data);
                goto fail;
            }
            json_array_foreach(data, i, v) {
                uint32_t n = (uint32_t)json_string_length(v);
                bin[bin_len++] = (char)(n & 0xff);
                bin[bin_len++] = (char)((n >> 8) & 0xff);
                bin[bin_len++] = (char)((n >> 16) & 0xff);
                bin[bin_len++] = (char)((n >> 24) & 0xff);
                memcpy(bin + bin_len, json_string_value(v), n);
                bin_len += n;
            }
            json_decref(data);
        } else {
            json_object_set_new(o, "data", data);
        }
    } else {
        json_object_set_new(o, "datatype", json_string("FP32"));
        json_object_set_new(o, "shape", json_pack("[ii]", N, K));
        if (req->binary_output) {
            bin_len = sizeof(float) * (size_t)N * K;
            bin = malloc(bin_len);
            if (!bin) goto fail;
            memcpy(bin, res->logits, bin_len);
        } else {
            /* json_real refuses NaN and Inf: the batcher answers those
             * images 400, and a missing element fails the whole body here
             * rather than sending data shorter than its shape. */
            json_t *data = json_array();
            int bad = !data;
            for (size_t i = 0; i < (size_t)N * K && !bad; i++)
                bad = json_array_append_new(data, json_real(res->logits[i])) != 0;
            if (bad) {
                json_decref(data);
                goto fail;
            }
            json_object_set_new(o, "data", data);
        }
    }
    if (req->binary_output)
        json_object_set_new(o, "parameters", json_pack("{s:I}", "binary_data_size", (json_int_t)bin_len));
    json_object_set_new(root, "outputs", json_pack("[o]", o));
    o = NULL;
    char *js = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(9) | JSON_PRESERVE_ORDER);
    if (!js) goto fail;
    size_t jl = strlen(js);
    out->data = malloc(jl + bin_len + 1);
    if (!out->data) {
        free(js);
        goto fail;
    }
    memcpy(out->data, js, jl);
    if (bin_len) memcpy(out->data + jl, bin, bin_len);
    out->data[jl + bin_len] = '\0';
    out->len = jl + bin_len;
    out->json_len = jl;
    free(js);
    free(bin);
    json_decref(root);
    return 0;
fail:
    free(bin);
    json_decref(o);
    json_decref(root);
    return -1;
}

/* Only extensions this server implements, by Triton's names: a client
 * that sees one listed calls its routes. model_repository: the index and
 * load/unload routes answer in every control mode (load and unload refused
 * outside explicit, as Triton does, which lists the extension alike). */
char *v2_server_json(const proto_model *pm) {
    json_t *o = json_pack("{s:s,s:s,s:[sssss]}", "name", "comrope-serve", "version",
                          pm->version ? pm->version : "0", "extensions", "classification",
                          "binary_tensor_data", "model_configuration", "statistics", "model_repository");
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

/* One input: the tensor a generic client (perf_analyzer, a KServe client)
 * can generate from the metadata. The encoded-image input "images" is
 * optional, and listed in the model configuration as Triton marks
 * optional inputs ("optional": true). */
char *v2_model_json(const proto_model *pm, const char *const *versions, int num_versions) {
    json_t *list = json_array();
    for (int i = 0; list && i < num_versions; i++) json_array_append_new(list, json_string(versions[i]));
    if (list && num_versions <= 0)
        json_array_append_new(list, json_string(pm->model_version ? pm->model_version : "1"));
    json_t *o = json_pack("{s:s,s:o,s:s,s:[{s:s,s:s,s:[iiii]}],s:[{s:s,s:s,s:[ii]}]}", "name", pm->name,
                          "versions", list, "platform", "comrope_c", "inputs", "name", "pixel_values",
                          "datatype", "FP32", "shape", -1, pm->num_channels, -1, -1, "outputs", "name",
                          "logits", "datatype", "FP32", "shape", -1, pm->num_class);
    /* the engine's CPU kernels and precision, as the log and
     * comrope_engine_info say */
    if (o && pm->isa) {
        json_t *p = json_pack("{s:s}", "isa", pm->isa);
        if (p && pm->precision) {
            json_object_set_new(p, "precision", json_string(pm->precision));
            json_object_set_new(p, "precision_requested", json_string(pm->precision_requested));
            json_object_set_new(p, "bf16_pays", json_boolean(pm->bf16_pays));
        }
        if (p && pm->precision_warning)
            json_object_set_new(p, "precision_warning", json_string(pm->precision_warning));
        if (p && pm->gemm_backend) json_object_set_new(p, "gemm_backend", json_string(pm->gemm_backend));
        json_object_set_new(o, "parameters", p);
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

/* Triton's model configuration as its HTTP API prints it (model_config.proto
 * in JSON): dims without the batch dimension, -1 where the size varies.
 * "images" is marked optional: a request sends pixel_values or, instead,
 * images (a client that fills the required inputs sends pixel_values). */
char *v2_model_config_json(const proto_model *pm, const proto_batching *b) {
    /* Triton's ModelVersionPolicy, its int64 versions as numbers (as
     * Triton prints them): what the repository serves of this model */
    json_t *policy;
    if (b->policy_all) {
        policy = json_pack("{s:{}}", "all");
    } else if (b->policy_latest > 0) {
        policy = json_pack("{s:{s:i}}", "latest", "num_versions", b->policy_latest);
    } else {
        json_t *versions = json_array();
        for (int i = 0; versions && i < b->policy_num_versions; i++)
            json_array_append_new(versions, json_integer(b->policy_versions[i]));
        policy = json_pack("{s:{s:o}}", "specific", "versions", versions);
    }
    if (!policy) return NULL;
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:o,s:i,"
                  "s:[{s:s,s:s,s:s,s:[iii],s:b,s:b,s:b},{s:s,s:s,s:s,s:[i],s:b,s:b,s:b}],"
                  "s:[{s:s,s:s,s:[i],s:s,s:b}],"
                  "s:{s:[],s:I,s:b,s:{s:s,s:I,s:b,s:I}},"
                  "s:[{s:s,s:s,s:i}],s:{}}",
                  "name", pm->name, "platform", "", "backend", "comrope", "version_policy", policy,
                  "max_batch_size", b->max_batch_size, "input", "name", "pixel_values", "data_type",
                  "TYPE_FP32", "format", "FORMAT_NCHW", "dims", pm->num_channels, -1, -1, "is_shape_tensor",
                  0, "allow_ragged_batch", 0, "optional", 0, "name", "images", "data_type", "TYPE_STRING",
                  "format", "FORMAT_NONE", "dims", 1, "is_shape_tensor", 0, "allow_ragged_batch", 0,
                  "optional", 1, "output", "name", "logits", "data_type", "TYPE_FP32", "dims", pm->num_class,
                  "label_filename", "", "is_shape_tensor", 0, "dynamic_batching", "preferred_batch_size",
                  "max_queue_delay_microseconds", (json_int_t)b->max_queue_delay_us, "preserve_ordering", 0,
                  "default_queue_policy", "timeout_action", "REJECT", "default_timeout_microseconds",
                  (json_int_t)0, "allow_timeout_override", 1, "max_queue_size", (json_int_t)b->max_queue_size,
                  "instance_group", "name", pm->name, "kind", "KIND_CPU", "count", b->workers, "parameters");
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

static json_t *duration_json(proto_duration d) {
    return json_pack("{s:I,s:I}", "count", (json_int_t)d.count, "ns", (json_int_t)d.ns);
}

static json_t *model_stats_entry(const proto_model *pm, const proto_stats *st) {
    json_t *batch = json_array();
    for (int i = 0; batch && i < st->num_batch_sizes; i++) {
        const proto_batch_stat *b = &st->batch_stats[i];
        json_array_append_new(batch,
                              json_pack("{s:i,s:o,s:o,s:o}", "batch_size", b->batch_size, "compute_input",
                                        duration_json((proto_duration){b->count, 0}), "compute_infer",
                                        duration_json((proto_duration){b->count, b->ns}), "compute_output",
                                        duration_json((proto_duration){b->count, 0})));
    }
    /* Triton's one entry per memory kind and device: all ours is CPU */
    json_t *memory = st->memory_bytes ? json_pack("[{s:s,s:i,s:I}]", "type", "CPU", "id", 0, "byte_size",
                                                  (json_int_t)st->memory_bytes)
                                      : json_array();
    return json_pack(
        "{s:s,s:s,s:I,s:I,s:I,s:{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o},s:o,s:o}", "name", pm->name, "version",
        pm->model_version ? pm->model_version : "1", "last_inference", (json_int_t)st->last_inference_ms,
        "inference_count", (json_int_t)st->inference_count, "execution_count",
        (json_int_t)st->execution_count, "inference_stats", "success", duration_json(st->success), "fail",
        duration_json(st->fail), "queue", duration_json(st->queue), "compute_input",
        duration_json(st->compute_input), "compute_infer", duration_json(st->compute_infer), "compute_output",
        duration_json(st->compute_output), "cache_hit", duration_json((proto_duration){0, 0}), "cache_miss",
        duration_json((proto_duration){0, 0}), "batch_stats", batch, "memory_usage", memory);
}

char *v2_model_stats_json(const proto_model *const *pms, const proto_stats *sts, int n) {
    json_t *list = json_array();
    for (int i = 0; list && i < n; i++) {
        json_t *e = model_stats_entry(pms[i], &sts[i]);
        if (!e || json_array_append_new(list, e) != 0) {
            json_decref(list);
            return NULL;
        }
    }
    json_t *o = json_pack("{s:o}", "model_stats", list);
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}
