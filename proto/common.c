/* common.c: what the native and v2 protocols share: request lifetime,
 * base64, softmax top-k, labels, error bodies. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "proto.h"

void proto_request_init(proto_request *req, const proto_model *pm, int api) {
    memset(req, 0, sizeof(*req));
    req->api = api;
    req->resolution.native = 0;
    req->resolution.h = pm->image_size;
    req->resolution.w = pm->image_size;
    req->fit = IMAGE_FIT_RESIZE;
    req->top_k = pm->num_class < 5 ? pm->num_class : 5;
}

void proto_request_free(proto_request *req) {
    if (!req) return;
    for (int i = 0; i < req->num_images; i++) {
        free(req->images[i].encoded);
        free(req->images[i].pixels);
    }
    free(req->images);
    free(req->id);
    req->images = NULL;
    req->num_images = 0;
    req->id = NULL;
}

void proto_body_free(proto_body *b) {
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->len = b->json_len = 0;
}

static int base64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int base64_decode(const char *in, size_t len, uint8_t **out, size_t *outlen,
                  char *err, size_t errlen) {
    *out = NULL;
    *outlen = 0;
    size_t n = len;
    while (n > 0 && in[n - 1] == '=' && len - n < 2) n--;
    if (n % 4 == 1) {
        snprintf(err, errlen, "invalid base64: length %zu cannot be decoded", len);
        return -1;
    }
    uint8_t *buf = malloc(n / 4 * 3 + 3);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = base64_value((unsigned char)in[i]);
        if (v < 0) {
            snprintf(err, errlen, "invalid base64 character at offset %zu", i);
            free(buf);
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (uint8_t)(acc >> bits);
        }
    }
    *out = buf;
    *outlen = o;
    return 0;
}

void proto_top_k(const float *logits, int K, int k, int *order, double *probs) {
    double maxv = logits[0], sum = 0;
    for (int j = 1; j < K; j++) if (logits[j] > maxv) maxv = logits[j];
    for (int j = 0; j < K; j++) sum += exp((double)logits[j] - maxv);
    /* Selection of the k largest, ties to the lower index: k is small. */
    for (int i = 0; i < k; i++) {
        int best = -1;
        for (int j = 0; j < K; j++) {
            int taken = 0;
            for (int t = 0; t < i; t++) if (order[t] == j) taken = 1;
            if (!taken && (best < 0 || logits[j] > logits[best])) best = j;
        }
        order[i] = best;
        probs[i] = exp((double)logits[best] - maxv) / sum;
    }
}

const char *proto_label(const proto_model *pm, int k, char *buf, size_t len) {
    if (pm->labels && pm->labels[k]) return pm->labels[k];
    snprintf(buf, len, "%d", k);
    return buf;
}

/* Length of the valid UTF-8 sequence at s (1 to 4 bytes), or 0. */
static size_t utf8_sequence(const unsigned char *s) {
    if (s[0] < 0x80) return 1;
    size_t n = s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3
             : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    /* overlong 3- and 4-byte forms, UTF-16 surrogates, past U+10FFFF */
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))
        return 0;
    return n;
}

char *proto_error_json(const char *msg) {
    /* Messages quote client bytes (a field name, a Content-Type, a query
     * key), cut at a byte count: jansson refuses invalid UTF-8, which left
     * an empty body behind a JSON Content-Type. Bytes that are not UTF-8
     * become U+FFFD. */
    size_t len = strlen(msg), o = 0;
    char *clean = malloc(3 * len + 1), *s = NULL;
    if (!clean) return NULL;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_sequence((const unsigned char *)msg + i);
        if (n) {
            memcpy(clean + o, msg + i, n);
            o += n;
            i += n;
        } else {
            memcpy(clean + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    clean[o] = '\0';
    json_t *obj = json_pack("{s:s}", "error", clean);
    if (obj) s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    free(clean);
    return s;
}
