/* coding.h: HTTP content codings (RFC 9110 8.4): gzip and deflate request
 * bodies inflated into a buffer the caller bounds, and
 * responses compressed when Accept-Encoding asks (Triton's HTTP server
 * does both; tritonclient's request_compression_algorithm and
 * response_compression_algorithm use them). zlib does the work. */
#ifndef COMROPE_CODING_H
#define COMROPE_CODING_H

#include <stddef.h>
#include <stdint.h>

enum { CODING_IDENTITY = 0, CODING_GZIP, CODING_DEFLATE };

/* A request's Content-Encoding value: CODING_IDENTITY (NULL, empty,
 * "identity"), CODING_GZIP ("gzip", "x-gzip"), CODING_DEFLATE, or -1 for
 * anything else (another coding, or a list of them). Case-insensitive. */
int coding_parse(const char *value);

/* "gzip", "deflate" or "identity". */
const char *coding_name(int coding);

/* What an Accept-Encoding header (or several, added one by one) asks for:
 * the q values of gzip, deflate and "*", in thousandths, -1 when not named;
 * one named more than once keeps its lowest q, and an element whose q is
 * malformed is ignored. */
typedef struct {
    int gzip, deflate, any;
} coding_accept;

void coding_accept_init(coding_accept *a);
void coding_accept_add(coding_accept *a, const char *value);
/* The coding to answer with: the one of gzip and deflate with the higher
 * q above 0 (gzip on a tie), else CODING_IDENTITY. */
int coding_accept_choice(const coding_accept *a);

/* A body being inflated. gzip is RFC 1952; deflate the zlib format (RFC
 * 1950) as RFC 9110 defines it, or raw deflate (RFC 1951), which some
 * clients send: its first two bytes tell which. */
typedef struct coding_inflater coding_inflater;

coding_inflater *coding_inflater_new(int coding); /* NULL: out of memory */
void coding_inflater_free(coding_inflater *f);

/* Inflates from *in (*in_len bytes, both advanced past what was read) into
 * out (out_cap bytes); *out_len: the bytes written. Returns 0 when it needs
 * more input or more room (*in_len > 0 or *out_len == out_cap: call again
 * with room), 1 at the end of the compressed data (for gzip, bytes after a
 * member, in this call or a later one, are the next member: 1 when none
 * follow yet), -1 on data that is not of the coding, bytes after its end
 * included (*err: zlib's words or ours, static). */
int coding_inflate(coding_inflater *f, const uint8_t **in, size_t *in_len, uint8_t *out, size_t out_cap,
                   size_t *out_len, const char **err);

/* in (n bytes) compressed as coding (CODING_GZIP or CODING_DEFLATE, the
 * zlib format), in one buffer allocated once; *out_len its length. NULL
 * when out of memory. */
char *coding_compress(int coding, const void *in, size_t n, size_t *out_len);

#endif
