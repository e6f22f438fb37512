/* proto.h: what a client asked for and what we answer, without HTTP.
 *
 * Owns: parsing request bodies into a proto_request (the native API,
 * POST /v1/classify with JSON or a raw image body, and the Open Inference
 * Protocol v2 infer request with its binary tensor extension), building
 * the response bodies from a proto_result, and the small helpers they share
 * (base64, softmax top-k, error bodies). It never touches a socket, a
 * thread or the model's weights, so every error path is a unit test.
 *
 * Errors are values: a parser returns 0, or the HTTP status to answer
 * (400, 413, 415) with a message in err naming the field. */
#ifndef COMROPE_PROTO_H
#define COMROPE_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "input.h"

/* What the parsers need to know about the served model. */
typedef struct {
    const char *name;    /* the served name (--model-name) */
    const char *pe_type; /* "comrope-ld", ... */
    int num_channels;    /* C */
    int num_class;       /* K */
    int image_size;      /* training resolution (square) */
    int patch_size;
    int max_tokens;                  /* per image */
    char *const *labels;             /* K entries, NULL where unnamed; may be NULL */
    const char *version;             /* build version */
    const char *isa;                 /* the engine's CPU kernels ("avx512", ...); may be NULL */
    const char *precision;           /* what the GEMMs compute in ("fp32", "bf16"); may be NULL */
    const char *precision_requested; /* "fp32", "bf16" or "auto" */
    int bf16_pays;                   /* 1: bf16 runs faster than fp32 on this CPU */
    const char *precision_warning;   /* NULL, or why the bf16 asked for does not pay */
    const char *gemm_backend;        /* with precision bf16: who runs the GEMMs ("own",
                                        "onednn", "amx"); else NULL */
    const char *model_version;       /* the served version ("1", ...); NULL: "1" */
    int max_images;                  /* max-request-images; 0: no limit */
} proto_model;

/* One image of a request: either an encoded file (JPEG/PNG) to decode and
 * prepare, or pixels already normalized (v2 pixel_values), used as is. */
typedef struct {
    uint8_t *encoded; /* owned, or NULL */
    size_t encoded_len;
    float *pixels; /* owned (C, h, w), or NULL */
    int h, w;      /* pixels' size; for encoded, set by the server once resolved */
} proto_image;

enum { PROTO_V1 = 1, PROTO_V2 = 2 };

typedef struct {
    int api;             /* PROTO_V1 or PROTO_V2 */
    proto_image *images; /* owned array of num_images */
    int num_images;
    resolution_request resolution;
    int fit;        /* IMAGE_FIT_* */
    int timeout_ms; /* 0: the server's default */
    /* v1 */
    int top_k;
    int return_logits;
    /* v2 */
    char *id;             /* owned, or NULL */
    int classification_k; /* > 0: output "logits" as BYTES [N, k] */
    int binary_output;    /* output "logits" in the binary section */
} proto_request;

/* The answer to a request: logits of every image in request order. */
typedef struct {
    int num_images, num_class;
    const float *logits; /* (num_images, num_class) */
    const int *h, *w;    /* resolution each image ran at */
    double queue_ms, compute_ms, total_ms;
} proto_result;

/* A response body. For v2 binary outputs, json_len < len: the first
 * json_len bytes are the JSON header (Inference-Header-Content-Length). */
typedef struct {
    char *data; /* owned (malloc) */
    size_t len;
    size_t json_len;
} proto_body;

void proto_request_init(proto_request *req, const proto_model *pm, int api);
void proto_request_free(proto_request *req);
void proto_body_free(proto_body *b);

/* Standard base64 (padding optional). Returns 0 with a malloc'd *out, or
 * -1 with a message giving the offset of the first bad character. */
int base64_decode(const char *in, size_t len, uint8_t **out, size_t *outlen, char *err, size_t errlen);

/* 413 with the message in err when a request of n images has more than
 * max (max-request-images; 0: no limit), else 0. The parsers check it as
 * soon as they know n, before any image is decoded or copied; the batcher
 * checks it again for callers that build requests themselves. */
int proto_check_num_images(size_t n, int max, char *err, size_t errlen);

/* Indices of the k largest logits, highest first (ties: the lower index),
 * and the softmax probability of each (order and probs have k entries).
 * O(K log k). */
void proto_top_k(const float *logits, int K, int k, int *order, double *probs);

/* Label of class k (id2label, else the index as text) into buf. */
const char *proto_label(const proto_model *pm, int k, char *buf, size_t len);

/* {"error": msg}; msg's bytes that are not UTF-8 become '?'. NULL only
 * when out of memory. */
char *proto_error_json(const char *msg);

/* The length of the valid UTF-8 sequence at s (n > 0 bytes left), 0 if
 * the bytes there are not one: no overlong forms, surrogates or code
 * points past U+10FFFF (RFC 3629), as jansson checks them (it refuses a
 * string that fails). The one UTF-8 check of the daemon (the log's JSON
 * lines use it too). */
size_t proto_utf8_length(const unsigned char *s, size_t n);

/* A malloc'd copy of s with every byte that does not start a valid UTF-8
 * sequence replaced by '?' (JSON strings must be UTF-8). */
char *proto_utf8_sanitize(const char *s);

/* What jansson holds while one body's JSON is parsed and walked. A body
 * within max-json-body-bytes can cost far more than the 20 or so bytes per
 * byte of a dense number array once parsed: each `{}` is a hash table of
 * about 250 bytes, each `[]` an array of about 130 (16 MiB of `[{},...]`
 * grew the daemon by 1.3 GB). The caller meters a parse on its own thread:
 * while a meter is on, every allocation jansson makes on this thread counts
 * (its usable size plus malloc's header); once `held` passes `max`, `over`
 * is set and the body's input ends within a KiB (proto_json_loadb,
 * json_load.h): the parse fails. No allocation is refused: jansson does
 * not survive that. Freed memory is subtracted, so `held` is what the
 * parse holds now and `peak` the most it held.
 * Thread-local: other threads' JSON (responses, model loads) is not
 * counted. */
typedef struct {
    size_t max;  /* bytes the parse may hold */
    size_t held; /* bytes it holds now */
    size_t peak; /* the most it held */
    int over;    /* held passed max: the parse was stopped */
} proto_json_meter;

/* Routes jansson's allocations through the meter's counters (once per
 * process: jansson's allocator is process-wide). Call before any thread that
 * uses jansson starts; proto_json_meter_begin calls it too, for programs
 * with one thread. */
void proto_json_meter_install(void);
/* Meters this thread's jansson allocations into m (zeroed but for max)
 * until proto_json_meter_end. */
void proto_json_meter_begin(proto_json_meter *m, size_t max);
void proto_json_meter_end(void);

/* ---- native API ---- */

/* POST /v1/classify: dispatches on the Content-Type: application/json ->
 * v1_parse_json; image/jpeg or image/png -> the raw body is the one image
 * (knobs come as query arguments, v1_parse_query_arg); anything else: 415. */
int v1_parse(const proto_model *pm, const char *content_type, const uint8_t *body, size_t len,
             proto_request *req, char *err, size_t errlen);
int v1_parse_json(const proto_model *pm, const char *body, size_t len, proto_request *req, char *err,
                  size_t errlen);
/* The media type a body shows when its Content-Type is missing or generic
 * (application/octet-stream, as Triton's and KServe's clients send or
 * omit it): "application/json" when it starts with '{' after optional
 * whitespace, "image/png" or "image/jpeg" by their magic bytes, else NULL. */
const char *v1_sniff_media_type(const uint8_t *body, size_t len);
/* One query argument of a raw-image request (resolution, fit, top_k,
 * return_logits, timeout_ms); unknown keys are refused by name. */
int v1_parse_query_arg(const proto_model *pm, proto_request *req, const char *key, const char *value,
                       char *err, size_t errlen);
/* Every query argument of a raw-image request, kv as key, value, ...,
 * NULL (a value may be NULL): each as v1_parse_query_arg, and a key given
 * twice refused (400), as a JSON body's (JSON_REJECT_DUPLICATES). */
int v1_parse_query(const proto_model *pm, proto_request *req, char *const *kv, char *err, size_t errlen);

int v1_response(const proto_model *pm, const proto_request *req, const proto_result *res, proto_body *out);
/* GET /v1/models: the n models pms (each served model's highest ready
 * version). */
char *v1_models_json(const proto_model *const *pms, int n);

/* ---- Open Inference Protocol v2 ---- */

/* POST /v2/models/{name}/infer. header_len is the value of
 * Inference-Header-Content-Length (0 when absent: the body is all JSON);
 * bytes after it are the binary tensors, in input order. */
int v2_parse_infer(const proto_model *pm, const uint8_t *body, size_t len, size_t header_len,
                   proto_request *req, char *err, size_t errlen);
int v2_response(const proto_model *pm, const proto_request *req, const proto_result *res, proto_body *out);
/* GET /v2 and GET /v2/models/{name}: `versions` lists versions[0..n)
 * (the model's ready versions), or pm's own version when n is 0. */
char *v2_server_json(const proto_model *pm);
char *v2_model_json(const proto_model *pm, const char *const *versions, int num_versions);

/* What GET /v2/models/{name}/config answers (Triton's model configuration)
 * needs beyond proto_model: the batcher's settings. */
typedef struct {
    int max_batch_size;
    int max_queue_delay_us;
    int max_queue_size;
    int workers;
    /* version-policy in force (config_parse_version_policy's fields):
     * policy_all, else latest policy_latest when above 0, else the
     * policy_num_versions versions of policy_versions */
    int policy_all, policy_latest;
    const int *policy_versions;
    int policy_num_versions;
} proto_batching;
char *v2_model_config_json(const proto_model *pm, const proto_batching *b);

/* GET /v2/models/stats, /v2/models/{name}/stats and
 * .../versions/{v}/stats, Triton's statistics shape: counts and
 * cumulative durations in ns, one entry per model version. */
typedef struct {
    uint64_t count, ns;
} proto_duration;
/* batch_stats: the batches of one size and their compute time (ns).
 * server/metrics.c keeps them so and hands them over as they are. */
typedef struct {
    int batch_size;
    uint64_t count, ns;
} proto_batch_stat;
typedef struct {
    uint64_t last_inference_ms; /* wall clock, ms since the epoch; 0: none yet */
    uint64_t inference_count;   /* images inferred */
    uint64_t execution_count;   /* engine batches run */
    proto_duration success, fail, queue, compute_input, compute_infer, compute_output;
    int num_batch_sizes;                 /* entries of batch_stats */
    const proto_batch_stat *batch_stats; /* compute_infer by batch size, ascending */
    /* memory_usage: the bytes the version holds (weights and its workers'
     * workspaces, rotation tables included), one "CPU" entry; 0: none
     * listed (loading) */
    uint64_t memory_bytes;
} proto_stats;
/* {"model_stats": [...]}: entry i is pms[i] with sts[i] (n >= 0). */
char *v2_model_stats_json(const proto_model *const *pms, const proto_stats *sts, int n);

#endif
