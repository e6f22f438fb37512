/* coding.c: gzip and deflate bodies in and out. See coding.h. */
#include "coding.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

struct coding_inflater {
    z_stream z;
    int coding;
    int started;     /* inflateInit2 has run: deflate waits for its first two bytes */
    uint8_t head[2]; /* deflate: the first bytes, until both are here */
    int head_len;
    int head_used;    /* of them, what zlib has taken */
    int member_ended; /* gzip: a member has ended, and no byte has come after it yet */
};

/* s[0..n) equals word, case-insensitively. */
static int token_is(const char *s, size_t n, const char *word) {
    return strlen(word) == n && strncasecmp(s, word, n) == 0;
}

int coding_parse(const char *value) {
    if (!value) return CODING_IDENTITY;
    const char *s = value + strspn(value, " \t");
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    if (n == 0 || token_is(s, n, "identity")) return CODING_IDENTITY;
    if (token_is(s, n, "gzip") || token_is(s, n, "x-gzip")) return CODING_GZIP;
    if (token_is(s, n, "deflate")) return CODING_DEFLATE;
    return -1;
}

const char *coding_name(int coding) {
    return coding == CODING_GZIP ? "gzip" : coding == CODING_DEFLATE ? "deflate" : "identity";
}

void coding_accept_init(coding_accept *a) { *a = (coding_accept){-1, -1, -1}; }

/* A weight (RFC 9110 12.4.2: "0" or "1", then "." and up to three
 * digits, at most 1) in thousandths, or -1 when malformed ("", ".5",
 * "abc", "-1", "1.5", four digits): the element is then ignored. Read as
 * 1 it turned a client's "gzip;q=.5" into a preference, and its
 * "gzip;q=" into one it may not have meant. */
static int qvalue(const char *s, size_t n) {
    int q, scale = 1000;
    size_t i = 0;
    if (n == 0 || (s[0] != '0' && s[0] != '1')) return -1;
    q = (s[i++] - '0') * 1000;
    if (i < n && s[i] == '.') {
        for (i++; i < n && s[i] >= '0' && s[i] <= '9' && scale > 1; i++) {
            scale /= 10;
            q += (s[i] - '0') * scale;
        }
    }
    return i == n && q <= 1000 ? q : -1;
}

/* A q seen again (two headers, or twice in one) keeps the lowest: a
 * client that refuses a coding anywhere refuses it. */
static void accept_set(int *slot, int q) {
    if (*slot < 0 || q < *slot) *slot = q;
}

void coding_accept_add(coding_accept *a, const char *value) {
    const char *p = value ? value : "";
    while (*p) {
        size_t len = strcspn(p, ",");
        const char *end = p + len;
        /* the coding, then ";q=..." (other parameters are none of ours) */
        const char *t = p + strspn(p, " \t");
        size_t tn = strcspn(t, ";, \t");
        if (t + tn > end) tn = (size_t)(end - t);
        int q = 1000;
        for (const char *param = memchr(t, ';', (size_t)(end - t)); param && param < end;) {
            param++;
            param += strspn(param, " \t");
            if ((param[0] == 'q' || param[0] == 'Q') && param[1] == '=') {
                const char *v = param + 2;
                q = qvalue(v, strcspn(v, ";, \t"));
                if (q < 0) break;
            }
            param = memchr(param, ';', (size_t)(end - param));
        }
        if (q < 0)
            ; /* a malformed q: the element is ignored */
        else if (token_is(t, tn, "gzip") || token_is(t, tn, "x-gzip")) accept_set(&a->gzip, q);
        else if (token_is(t, tn, "deflate")) accept_set(&a->deflate, q);
        else if (token_is(t, tn, "*")) accept_set(&a->any, q);
        p = *end ? end + 1 : end;
    }
}

int coding_accept_choice(const coding_accept *a) {
    int g = a->gzip >= 0 ? a->gzip : a->any, d = a->deflate >= 0 ? a->deflate : a->any;
    if (g <= 0 && d <= 0) return CODING_IDENTITY;
    return g >= d ? CODING_GZIP : CODING_DEFLATE;
}

coding_inflater *coding_inflater_new(int coding) {
    coding_inflater *f = calloc(1, sizeof(*f));
    if (!f) return NULL;
    f->coding = coding;
    if (coding == CODING_GZIP) {
        if (inflateInit2(&f->z, 15 + 16) != Z_OK) { /* 16: the gzip wrapper only */
            free(f);
            return NULL;
        }
        f->started = 1;
    }
    return f;
}

void coding_inflater_free(coding_inflater *f) {
    if (!f) return;
    if (f->started) inflateEnd(&f->z);
    free(f);
}

/* Runs zlib on in[0..n) into out; *used: the input read. */
static int inflate_some(coding_inflater *f, const uint8_t *in, size_t n, uint8_t *out, size_t out_cap,
                        size_t *used, size_t *out_len, const char **err) {
    /* zlib counts in uInt: feed at most UINT_MAX at a time (callers loop) */
    f->z.next_in = (Bytef *)in;
    f->z.avail_in = n > UINT_MAX ? UINT_MAX : (uInt)n;
    f->z.next_out = out;
    f->z.avail_out = out_cap > UINT_MAX ? UINT_MAX : (uInt)out_cap;
    int rc = inflate(&f->z, Z_NO_FLUSH);
    *used = (size_t)(f->z.next_in - in);
    *out_len = (size_t)(f->z.next_out - out);
    if (rc == Z_STREAM_END) return 1;
    if (rc == Z_OK || rc == Z_BUF_ERROR) return 0; /* Z_BUF_ERROR: no progress possible now */
    /* a zlib stream that names a preset dictionary (FDICT): none was
     * agreed on; zlib leaves msg unset for it */
    if (rc == Z_NEED_DICT) {
        *err = "a preset dictionary is not supported";
        return -1;
    }
    *err = rc == Z_MEM_ERROR ? "out of memory" : f->z.msg ? f->z.msg : "invalid compressed data";
    return -1;
}

/* What a client reads when its body goes on after the compressed data. */
static const char bytes_follow[] = "bytes follow the end of its compressed stream";

int coding_inflate(coding_inflater *f, const uint8_t **in, size_t *in_len, uint8_t *out, size_t out_cap,
                   size_t *out_len, const char **err) {
    *out_len = 0;
    if (!f->started) {
        /* deflate: a zlib header (CM 8, a window of at most 32 KiB, the
         * check bits) or raw deflate, known from the first two bytes */
        while (f->head_len < 2 && *in_len) {
            f->head[f->head_len++] = **in;
            (*in)++;
            (*in_len)--;
        }
        if (f->head_len < 2) return 0;
        unsigned cmf = f->head[0], flg = f->head[1];
        int zlib = (cmf & 0x0f) == 8 && (cmf >> 4) <= 7 && (cmf * 256 + flg) % 31 == 0;
        if (inflateInit2(&f->z, zlib ? 15 : -15) != Z_OK) {
            *err = "out of memory";
            return -1;
        }
        f->started = 1;
    }
    size_t used, got;
    int rc = 0;
    if (f->member_ended && *in_len) { /* the next gzip member */
        /* a member starts with the magic 1f 8b (RFC 1952 2.3.1): other
         * bytes after a member (junk, zero padding) are not the start of
         * one, and zlib would call them a bad header or a cut stream */
        if (**in != 0x1f) {
            *err = bytes_follow;
            return -1;
        }
        if (inflateReset(&f->z) != Z_OK) {
            *err = "out of memory";
            return -1;
        }
        f->member_ended = 0;
    }
    if (f->head_used < f->head_len) {
        rc = inflate_some(f, f->head + f->head_used, (size_t)(f->head_len - f->head_used), out, out_cap,
                          &used, &got, err);
        f->head_used += (int)used;
        *out_len = got;
        if (rc < 0) return rc;
        if (!rc && f->head_used < f->head_len) return 0; /* out of room: called again with more */
    }
    /* a raw deflate stream can end within those two bytes (03 00, one
     * empty block): what is left of *in then follows its end (below) */
    if (!rc) {
        rc = inflate_some(f, *in, *in_len, out + *out_len, out_cap - *out_len, &used, &got, err);
        *in += used;
        *in_len -= used;
        *out_len += got;
    }
    /* gzip may be several members one after another (RFC 1952 2.2; gzip
     * and Python's gzip.decompress read them all): bytes after a member's
     * end, now or in a later call, start the next when they begin with
     * its magic (above). Refused as "bytes follow", such a body was a 400. */
    if (rc == 1 && f->coding == CODING_GZIP) {
        f->member_ended = 1;
        if (*in_len) return 0; /* called again: the next member */
    }
    if (rc == 1 && *in_len) { /* deflate is one stream */
        *err = bytes_follow;
        return -1;
    }
    return rc;
}

char *coding_compress(int coding, const void *in, size_t n, size_t *out_len) {
    if (n > UINT_MAX / 2) return NULL; /* an answer of gigabytes: sent as it is */
    z_stream z = {0};
    /* level 1: a worker thread compresses, between batches; logits in
     * JSON shrink nearly as much as at the default level, some 3x faster */
    if (deflateInit2(&z, Z_BEST_SPEED, Z_DEFLATED, coding == CODING_GZIP ? 15 + 16 : 15, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK)
        return NULL;
    uLong cap = deflateBound(&z, (uLong)n);
    char *out = malloc(cap);
    if (!out) {
        deflateEnd(&z);
        return NULL;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH); /* deflateBound's room: done in one call */
    *out_len = (size_t)z.total_out;
    deflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    return out;
}
