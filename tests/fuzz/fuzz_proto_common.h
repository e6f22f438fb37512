/* fuzz_proto_common.h: the model the proto harnesses parse against (the
 * shape of the bundled Fashion-MNIST model, with one unnamed label so both
 * label paths run), and the checks every parse outcome must pass: an error
 * body is valid JSON, an accepted request's response body is valid JSON. */
#ifndef COMROPE_FUZZ_PROTO_COMMON_H
#define COMROPE_FUZZ_PROTO_COMMON_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

static char *fuzz_labels[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                "Sandal",      NULL,      "Sneaker",  "Bag",   "Ankle boot"};
static const proto_model fuzz_pm = {
    .name = "fashion-comrope-ld",
    .pe_type = "comrope-ld",
    .num_channels = 1,
    .num_class = 10,
    .image_size = 28,
    .patch_size = 4,
    .max_tokens = 257,
    .labels = fuzz_labels,
    .version = "fuzz",
    .isa = "auto",
    .precision = "bf16",
    .precision_requested = "auto",
    .bf16_pays = 1,
    .precision_warning = NULL,
    .model_version = NULL,
};

static inline void fuzz_expect_json(const char *what, const char *s, size_t len) {
    json_error_t e;
    if (!s) {
        fprintf(stderr, "%s: no body\n", what);
        abort();
    }
    json_t *j = json_loadb(s, len, 0, &e);
    if (!j) {
        fprintf(stderr, "%s: invalid JSON (%s): %.200s\n", what, e.text, s);
        abort();
    }
    json_decref(j);
}

/* The parse under the daemon's JSON meter (proto_json_meter_begin), half
 * the inputs: an input's last byte, when even, sets the meter's max at
 * 0 to about 32 times the body's size (the daemon's factor), so that
 * parses stopped anywhere by the meter are fuzzed too (a meter that
 * refused jansson's allocations let a body overflow the heap); odd, no
 * meter. Returns whether a meter is on. */
static inline int fuzz_meter_begin(proto_json_meter *m, const uint8_t *data, size_t size) {
    if (size == 0 || (data[size - 1] & 1)) return 0;
    proto_json_meter_begin(m, (size_t)(data[size - 1] >> 1) * size / 4);
    return 1;
}

/* Ends the meter: whatever the outcome, the parse holds nothing of
 * jansson's once it returned. */
static inline void fuzz_meter_end(const proto_json_meter *m, int on) {
    if (!on) return;
    proto_json_meter_end();
    if (m->held != 0) {
        fprintf(stderr, "the parse returned holding %zu bytes of jansson's (max %zu)\n", m->held, m->max);
        abort();
    }
}

/* After a parse: the error body for a refusal, or a response to the
 * accepted request built from made-up logits. */
static inline void fuzz_check_outcome(int rc, proto_request *req, const char *err) {
    if (rc != 0) {
        char *body = proto_error_json(err);
        fuzz_expect_json("error body", body, body ? strlen(body) : 0);
        free(body);
        return;
    }
    int N = req->num_images, K = fuzz_pm.num_class;
    float *logits = malloc(sizeof(float) * (size_t)(N ? N : 1) * K);
    int *h = malloc(sizeof(int) * (size_t)(N ? N : 1)), *w = malloc(sizeof(int) * (size_t)(N ? N : 1));
    if (!logits || !h || !w) abort();
    for (int i = 0; i < N * K; i++) logits[i] = (float)((i * 7919) % 23) - 11.0f;
    for (int i = 0; i < N; i++) {
        h[i] = req->images[i].pixels ? req->images[i].h : 28;
        w[i] = req->images[i].pixels ? req->images[i].w : 28;
    }
    proto_result res = {.num_images = N,
                        .num_class = K,
                        .logits = logits,
                        .h = h,
                        .w = w,
                        .queue_ms = 1.0,
                        .compute_ms = 2.0,
                        .total_ms = 3.0};
    proto_body body;
    int brc = req->api == PROTO_V1 ? v1_response(&fuzz_pm, req, &res, &body)
                                   : v2_response(&fuzz_pm, req, &res, &body);
    if (brc == 0) {
        if (body.json_len > body.len) abort();
        fuzz_expect_json("response body", body.data, body.json_len);
        proto_body_free(&body);
    }
    free(logits);
    free(h);
    free(w);
}

#endif
