/* test_coding.c: content codings (server/coding.c): Content-Encoding and
 * Accept-Encoding as clients write them, and inflating bodies that arrive
 * in pieces of any size, a byte at a time included (the two bytes that
 * tell zlib from raw deflate may come apart). The daemon's side (limits,
 * statuses) is tests/integration/run.sh part 4 and triton.py compression. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "check_run.h"
#include "coding.h"

START_TEST(test_content_encoding) {
    ck_assert_int_eq(coding_parse(NULL), CODING_IDENTITY);
    ck_assert_int_eq(coding_parse(""), CODING_IDENTITY);
    ck_assert_int_eq(coding_parse("Identity"), CODING_IDENTITY);
    ck_assert_int_eq(coding_parse("gzip"), CODING_GZIP);
    ck_assert_int_eq(coding_parse(" GZip "), CODING_GZIP);
    ck_assert_int_eq(coding_parse("x-gzip"), CODING_GZIP);
    ck_assert_int_eq(coding_parse("DEFLATE"), CODING_DEFLATE);
    ck_assert_int_eq(coding_parse("br"), -1);
    ck_assert_int_eq(coding_parse("zstd"), -1);
    ck_assert_int_eq(coding_parse("gzip, deflate"), -1);
    ck_assert_int_eq(coding_parse("gzipx"), -1);
}
END_TEST

static int accept_of(const char *a, const char *b) {
    coding_accept acc;
    coding_accept_init(&acc);
    coding_accept_add(&acc, a);
    if (b) coding_accept_add(&acc, b);
    return coding_accept_choice(&acc);
}

START_TEST(test_accept_encoding) {
    ck_assert_int_eq(accept_of(NULL, NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("identity", NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("gzip", NULL), CODING_GZIP);
    ck_assert_int_eq(accept_of("deflate", NULL), CODING_DEFLATE);
    ck_assert_int_eq(accept_of("deflate, gzip", NULL), CODING_GZIP); /* a tie: gzip */
    ck_assert_int_eq(accept_of("gzip, deflate, br", NULL), CODING_GZIP);
    ck_assert_int_eq(accept_of("gzip;q=0", NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("gzip; q=0.000, deflate", NULL), CODING_DEFLATE);
    ck_assert_int_eq(accept_of("GZIP;Q=0.5, deflate;q=0.8", NULL), CODING_DEFLATE);
    ck_assert_int_eq(accept_of("deflate;q=0.001", NULL), CODING_DEFLATE);
    ck_assert_int_eq(accept_of("*", NULL), CODING_GZIP);
    ck_assert_int_eq(accept_of("*;q=0", NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("*, gzip;q=0", NULL), CODING_DEFLATE);
    ck_assert_int_eq(accept_of("br;q=1, identity", NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of(" , ,gzip", NULL), CODING_GZIP);
    ck_assert_int_eq(accept_of("gzip;level=9;q=0", NULL), CODING_IDENTITY);
    /* two headers: one list */
    ck_assert_int_eq(accept_of("deflate", "gzip;q=0"), CODING_DEFLATE);
    /* a malformed q: the element is ignored (it counted as q=1) */
    ck_assert_int_eq(accept_of("gzip;q=.5", NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("gzip;q=", NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("gzip;q=abc", NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("gzip;q=-1", NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("gzip;q=1.5", NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("gzip;q=0.5x", NULL), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("deflate;q=.9, gzip;q=0.1", NULL), CODING_GZIP);
    ck_assert_int_eq(accept_of("gzip;q=1.000, deflate;q=0.", NULL), CODING_GZIP);
    /* named twice: the lowest q holds (the later one won) */
    ck_assert_int_eq(accept_of("gzip;q=0", "gzip"), CODING_IDENTITY);
    ck_assert_int_eq(accept_of("gzip, deflate;q=0.5, gzip;q=0.2", NULL), CODING_DEFLATE);
    ck_assert_int_eq(accept_of("*;q=0", "*"), CODING_IDENTITY);
}
END_TEST

/* payload: compressible, and long enough for several deflate blocks */
static uint8_t *payload(size_t n) {
    uint8_t *p = malloc(n + 1);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)((i * 7) % 251 < 50 ? i % 13 : 'a' + i % 5);
    return p;
}

static uint8_t *deflated(const uint8_t *in, size_t n, int window_bits, size_t *out_len) {
    z_stream z = {0};
    ck_assert_int_eq(deflateInit2(&z, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
    uLong cap = deflateBound(&z, n) + 32;
    uint8_t *out = malloc(cap);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    ck_assert_int_eq(deflate(&z, Z_FINISH), Z_STREAM_END);
    *out_len = z.total_out;
    deflateEnd(&z);
    return out;
}

/* Inflates data fed `piece` bytes at a time into a buffer of `room` bytes
 * per call: 1 at the end, -1 on an error. (http.c's body_decode feeds all
 * at once.) It goes on after the end: a gzip member may follow. */
static int inflate_all(int coding, const uint8_t *data, size_t n, size_t piece, size_t room, uint8_t *out,
                       size_t cap, size_t *out_len, const char **err) {
    coding_inflater *f = coding_inflater_new(coding);
    ck_assert_ptr_nonnull(f);
    size_t len = 0;
    int rc = 0;
    for (size_t at = 0; at < n && rc >= 0;) {
        const uint8_t *in = data + at;
        size_t in_len = n - at < piece ? n - at : piece;
        at += in_len;
        size_t give, got;
        do { /* again while input is left or zlib may hold output back */
            give = cap - len < room ? cap - len : room;
            if (!give) {
                rc = -2; /* more than expected */
                break;
            }
            rc = coding_inflate(f, &in, &in_len, out + len, give, &got, err);
            len += got;
        } while (rc == 0 && (in_len || got == give));
    }
    coding_inflater_free(f);
    *out_len = len;
    return rc;
}

START_TEST(test_inflate_in_pieces) {
    const size_t n = 100000;
    uint8_t *p = payload(n), *out = malloc(n + 1);
    const struct {
        int coding, window_bits;
    } kinds[] = {{CODING_GZIP, 15 + 16}, {CODING_DEFLATE, 15}, {CODING_DEFLATE, -15}, {CODING_DEFLATE, 9}};
    const size_t pieces[] = {1, 2, 3, 7, 4096, 1 << 20}, rooms[] = {1, 1000, 1 << 20};
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        size_t zn;
        uint8_t *z = deflated(p, n, kinds[k].window_bits, &zn);
        for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
            for (size_t j = 0; j < sizeof(rooms) / sizeof(rooms[0]); j++) {
                size_t got;
                const char *err = NULL;
                memset(out, 0, n + 1);
                int rc = inflate_all(kinds[k].coding, z, zn, pieces[i], rooms[j], out, n + 1, &got, &err);
                ck_assert_msg(rc == 1 && got == n && memcmp(out, p, n) == 0,
                              "kind %zu piece %zu room %zu: rc %d, %zu bytes (%s)", k, pieces[i], rooms[j],
                              rc, got, err ? err : "");
            }
        }
        /* cut short: never the end; one byte changed: an error or not the payload */
        size_t got;
        const char *err = NULL;
        ck_assert_int_eq(inflate_all(kinds[k].coding, z, zn - 3, 4096, 4096, out, n + 1, &got, &err), 0);
        z[zn / 2] ^= 0x55;
        int rc = inflate_all(kinds[k].coding, z, zn, 4096, 4096, out, n + 1, &got, &err);
        ck_assert(rc != 1 || got != n || memcmp(out, p, n) != 0);
        free(z);
    }
    /* short ones (fixed Huffman codes: the first two bytes already hold
     * output) and the empty one, a byte at a time into a byte of room */
    const size_t shorts[] = {0, 1, 2, 3, 17};
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        for (size_t i = 0; i < sizeof(shorts) / sizeof(shorts[0]); i++) {
            size_t zn, got;
            const char *err = NULL;
            uint8_t *z = deflated(p, shorts[i], kinds[k].window_bits, &zn);
            int rc = inflate_all(kinds[k].coding, z, zn, 1, 1, out, shorts[i] + 1, &got, &err);
            ck_assert_msg(rc == 1 && got == shorts[i] && memcmp(out, p, got) == 0,
                          "kind %zu, %zu bytes: rc %d, %zu", k, shorts[i], rc, got);
            free(z);
        }
    }
    /* gzip of several members (RFC 1952 2.2), also split across pieces
     * at a member's end: the members' payloads one after another (it was
     * "bytes after the end") */
    size_t an, bn;
    uint8_t *a = deflated(p, 3000, 15 + 16, &an), *b = deflated(p + 3000, n - 3000, 15 + 16, &bn);
    uint8_t *ab = malloc(an + bn);
    memcpy(ab, a, an);
    memcpy(ab + an, b, bn);
    const size_t ab_pieces[] = {1, an, 4096, an + bn};
    for (size_t i = 0; i < sizeof(ab_pieces) / sizeof(ab_pieces[0]); i++) {
        size_t got;
        const char *err = NULL;
        memset(out, 0, n + 1);
        int rc = inflate_all(CODING_GZIP, ab, an + bn, ab_pieces[i], 1000, out, n + 1, &got, &err);
        ck_assert_msg(rc == 1 && got == n && memcmp(out, p, n) == 0,
                      "two members, piece %zu: rc %d, %zu (%s)", ab_pieces[i], rc, got, err ? err : "");
    }
    /* bytes after a member that do not start another (junk, zero
     * padding): refused as bytes after its end, not as a bad header or a
     * cut stream (the message a client reads) */
    const char *tails[] = {"x", "\0\0\0\0\0\0\0\0", "junk after it"};
    const size_t tail_lens[] = {1, 8, 13};
    for (size_t t = 0; t < sizeof(tails) / sizeof(tails[0]); t++)
        for (size_t i = 0; i < 2; i++) { /* in one piece, or the tail in a later call */
            size_t got;
            const char *err = NULL;
            uint8_t *at = malloc(an + tail_lens[t]);
            memcpy(at, a, an);
            memcpy(at + an, tails[t], tail_lens[t]);
            int rc = inflate_all(CODING_GZIP, at, an + tail_lens[t], i ? an : an + tail_lens[t], 1 << 20, out,
                                 n + 1, &got, &err);
            ck_assert_msg(rc == -1 && err && strstr(err, "bytes follow"), "tail %zu, piece %zu: rc %d (%s)",
                          t, i, rc, err ? err : "");
            free(at);
        }
    /* deflate is one stream: a second is bytes after its end */
    free(a);
    free(b);
    a = deflated(p, 3000, 15, &an);
    b = deflated(p + 3000, n - 3000, 15, &bn);
    ab = realloc(ab, an + bn);
    memcpy(ab, a, an);
    memcpy(ab + an, b, bn);
    {
        size_t got;
        const char *err = NULL;
        for (size_t i = 0; i < 2; i++) { /* in one piece, or the second stream in a later call */
            int rc =
                inflate_all(CODING_DEFLATE, ab, an + bn, i ? an : an + bn, 1 << 20, out, n + 1, &got, &err);
            ck_assert_msg(rc == -1 && err && strstr(err, "bytes follow"), "piece %zu: rc %d (%s)", i, rc,
                          err ? err : "");
        }
        /* a raw deflate stream ends within the two bytes read to tell it
         * from zlib (03 00: one empty final block); what follows is
         * still after its end */
        static const uint8_t empty_then_junk[] = {0x03, 0x00, 'j', 'u', 'n', 'k'};
        for (size_t piece = 2; piece <= sizeof(empty_then_junk); piece += sizeof(empty_then_junk) - 2) {
            err = NULL;
            int rc = inflate_all(CODING_DEFLATE, empty_then_junk, sizeof(empty_then_junk), piece, 4096, out,
                                 n + 1, &got, &err);
            ck_assert_msg(rc == -1 && err && strstr(err, "bytes follow"), "piece %zu: rc %d (%s)", piece, rc,
                          err ? err : "");
        }
        ck_assert_int_eq(inflate_all(CODING_DEFLATE, empty_then_junk, 2, 2, 4096, out, n + 1, &got, &err), 1);
        ck_assert_uint_eq(got, 0);
    }
    free(a);
    free(b);
    free(ab);
    /* a zlib stream that needs a preset dictionary: an error saying so */
    {
        z_stream d = {0};
        uint8_t zd[256];
        size_t got;
        const char *err = NULL;
        ck_assert_int_eq(deflateInit(&d, 6), Z_OK);
        ck_assert_int_eq(deflateSetDictionary(&d, (const Bytef *)"abcde", 5), Z_OK);
        d.next_in = (Bytef *)"abcdeabcde";
        d.avail_in = 10;
        d.next_out = zd;
        d.avail_out = sizeof(zd);
        ck_assert_int_eq(deflate(&d, Z_FINISH), Z_STREAM_END);
        ck_assert_int_eq(inflate_all(CODING_DEFLATE, zd, d.total_out, 4096, 4096, out, n + 1, &got, &err),
                         -1);
        ck_assert_str_eq(err, "a preset dictionary is not supported");
        deflateEnd(&d);
    }
    /* gzip labelled deflate, deflate labelled gzip: errors naming why */
    size_t zn, got;
    const char *err = NULL;
    uint8_t *z = deflated(p, n, 15, &zn);
    ck_assert_int_eq(inflate_all(CODING_GZIP, z, zn, 4096, 4096, out, n + 1, &got, &err), -1);
    ck_assert_ptr_nonnull(err);
    free(z);
    free(p);
    free(out);
}
END_TEST

START_TEST(test_compress_round_trip) {
    const size_t n = 50000;
    uint8_t *p = payload(n);
    for (int coding = CODING_GZIP; coding <= CODING_DEFLATE; coding++) {
        size_t zn = 0;
        char *z = coding_compress(coding, p, n, &zn);
        ck_assert_ptr_nonnull(z);
        ck_assert(zn > 0 && zn < n);
        uint8_t *out = malloc(n);
        z_stream s = {0};
        ck_assert_int_eq(inflateInit2(&s, coding == CODING_GZIP ? 15 + 16 : 15), Z_OK);
        s.next_in = (Bytef *)z;
        s.avail_in = (uInt)zn;
        s.next_out = out;
        s.avail_out = (uInt)n;
        ck_assert_int_eq(inflate(&s, Z_FINISH), Z_STREAM_END);
        ck_assert(s.total_out == n && memcmp(out, p, n) == 0);
        inflateEnd(&s);
        free(out);
        free(z);
    }
    size_t zn = 0; /* an empty answer compresses too */
    char *z = coding_compress(CODING_GZIP, "", 0, &zn);
    ck_assert(z && zn > 0);
    free(z);
    free(p);
}
END_TEST

static Suite *coding_suite(void) {
    Suite *s = suite_create("coding");
    TCase *tc = tcase_create("coding");
    tcase_add_test(tc, test_content_encoding);
    tcase_add_test(tc, test_accept_encoding);
    tcase_add_test(tc, test_inflate_in_pieces);
    tcase_add_test(tc, test_compress_round_trip);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return check_run(coding_suite()); }
