/* common.c: what the native and v2 protocols share: request lifetime,
 * base64, softmax top-k, labels, error bodies. */
#include <jansson.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "json_load.h"
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

/* The meter of this thread's parse, or NULL. jansson's allocator is one
 * pair of functions for the whole process, so the count is kept per thread
 * and only while a parse asks for it. Sizes come from malloc_usable_size,
 * not a header of our own, so that memory jansson allocated before the
 * functions were installed (or with no meter on) frees the same way. */
static _Thread_local proto_json_meter *json_meter;

/* Counts, never refuses: jansson 2.14 does not survive a NULL from its
 * allocator everywhere (its lexer ignores a failed append to a token's
 * text: a string whose closing quote was dropped is then copied past its
 * buffer until a '"' turns up, a heap overflow any body could aim at the
 * meter's max). The parse is stopped by its input instead
 * (proto_json_loadb). */
static void *metered_malloc(size_t n) {
    void *p = malloc(n);
    proto_json_meter *m = json_meter;
    if (!p || !m) return p;
    /* glibc's chunk header: a million small values cost it as much again */
    m->held += malloc_usable_size(p) + sizeof(size_t);
    if (m->held > m->peak) m->peak = m->held;
    if (m->held > m->max) m->over = 1;
    return p;
}

static void metered_free(void *p) {
    proto_json_meter *m = json_meter;
    if (p && m) {
        size_t cost = malloc_usable_size(p) + sizeof(size_t);
        m->held = cost < m->held ? m->held - cost : 0; /* allocated before the meter began */
    }
    free(p);
}

/* jansson reads a metered body through this (json_load_callback asks a
 * KiB at a time), and finds its end once the meter is over. */
typedef struct {
    const char *p;
    size_t left;
} metered_input;

static size_t metered_read(void *buf, size_t n, void *arg) {
    metered_input *in = arg;
    if (json_meter && json_meter->over) return 0;
    if (n > in->left) n = in->left;
    memcpy(buf, in->p, n);
    in->p += n;
    in->left -= n;
    return n;
}

json_t *proto_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *error) {
    if (!json_meter || !buf) return json_loadb(buf, len, flags, error);
    metered_input in = {buf, len};
    return json_load_callback(metered_read, &in, flags, error);
}

static pthread_once_t json_meter_once = PTHREAD_ONCE_INIT;

static void install_meter(void) { json_set_alloc_funcs(metered_malloc, metered_free); }

void proto_json_meter_install(void) { pthread_once(&json_meter_once, install_meter); }

void proto_json_meter_begin(proto_json_meter *m, size_t max) {
    proto_json_meter_install();
    m->max = max;
    m->held = m->peak = 0;
    m->over = 0;
    json_meter = m;
}

void proto_json_meter_end(void) { json_meter = NULL; }

static int base64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int proto_check_num_images(size_t n, int max, char *err, size_t errlen) {
    if (max <= 0 || n <= (size_t)max) return 0;
    snprintf(err, errlen, "the request has %zu images, more than max-request-images (%d)", n, max);
    return 413;
}

int base64_decode(const char *in, size_t len, uint8_t **out, size_t *outlen, char *err, size_t errlen) {
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

/* Whether class a ranks above class b: the larger logit, ties to the lower index. */
static int ranks_above(const float *logits, int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
}

/* Restores the heap below i: heap[0] is the lowest-ranked of the k kept. */
static void sift_down(const float *logits, int *heap, int n, int i) {
    for (;;) {
        int lo = i, l = 2 * i + 1, r = l + 1;
        if (l < n && ranks_above(logits, heap[lo], heap[l])) lo = l;
        if (r < n && ranks_above(logits, heap[lo], heap[r])) lo = r;
        if (lo == i) return;
        int t = heap[i];
        heap[i] = heap[lo];
        heap[lo] = t;
        i = lo;
    }
}

void proto_top_k(const float *logits, int K, int k, int *order, double *probs) {
    double maxv = logits[0], sum = 0;
    for (int j = 1; j < K; j++)
        if (logits[j] > maxv) maxv = logits[j];
    for (int j = 0; j < K; j++) sum += exp((double)logits[j] - maxv);
    if (k > K) k = K;
    if (k <= 0) return;
    /* The k best in a heap whose root is the weakest kept: O(K log k), so
     * that top_k = K on a 1000-class model is no slower than a sort. */
    for (int j = 0; j < k; j++) order[j] = j;
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(logits, order, k, i);
    for (int j = k; j < K; j++) {
        if (!ranks_above(logits, j, order[0])) continue;
        order[0] = j;
        sift_down(logits, order, k, 0);
    }
    /* Popping the weakest fills the array from its end: highest first. */
    for (int n = k; n > 1; n--) {
        int t = order[0];
        order[0] = order[n - 1];
        order[n - 1] = t;
        sift_down(logits, order, n - 1, 0);
    }
    for (int i = 0; i < k; i++) probs[i] = exp((double)logits[order[i]] - maxv) / sum;
}

const char *proto_label(const proto_model *pm, int k, char *buf, size_t len) {
    if (pm->labels && pm->labels[k]) return pm->labels[k];
    snprintf(buf, len, "%d", k);
    return buf;
}

size_t proto_utf8_length(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned cp, min;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

char *proto_utf8_sanitize(const char *s) {
    size_t n = strlen(s), o = 0;
    char *out = malloc(n + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        size_t len = proto_utf8_length((const unsigned char *)s + i, n - i);
        if (len == 0) {
            out[o++] = '?';
            i++;
            continue;
        }
        memcpy(out + o, s + i, len);
        o += len;
        i += len;
    }
    out[o] = '\0';
    return out;
}

char *proto_error_json(const char *msg) {
    /* Messages quote client bytes (a path, a header, a query value), cut to
     * a few dozen bytes, perhaps inside a character: made valid UTF-8 here,
     * or jansson would give no body at all. */
    char *clean = proto_utf8_sanitize(msg);
    json_t *o = clean ? json_pack("{s:s}", "error", clean) : NULL;
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    free(clean);
    return s;
}
