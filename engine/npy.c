/* npy.c: reads NumPy .npy files (format 1.0, 2.0, 3.0) into float32.
 *
 * Owns: the magic and version check, a small parser for the header's
 * Python dict literal ({'descr': '<f4', 'fortran_order': False,
 * 'shape': (2, 3), }), the size checks, and the little-endian float32 /
 * float64 conversion. Everything else is refused with a message naming the
 * file: the CLI feeds it user files, so a bad file must never crash it or
 * make it allocate more than the file itself justifies. */
#include "npy.h"
#include "engine_error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "small_file.h"

/* NumPy itself refuses headers over 10000 bytes unless told otherwise; the
 * format allows up to 4 GiB in v2/v3. A bound keeps parsing cheap. */
#define NPY_MAX_HEADER 65536
/* 2^28 elements = 1 GiB of float32: far above any image tensor or fixture,
 * far below what would take the machine down. */
#define NPY_MAX_COUNT ((int64_t)1 << 28)

void npy_free(npy_array *a) {
    if (!a) return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

/* ---- header dict parser ---- */

typedef struct {
    const char *s;
    size_t len, pos;
} cursor;

static void skip_ws(cursor *c) {
    while (c->pos < c->len &&
           (c->s[c->pos] == ' ' || c->s[c->pos] == '\t' || c->s[c->pos] == '\n' || c->s[c->pos] == '\r'))
        c->pos++;
}

static int peek(cursor *c) { return c->pos < c->len ? (unsigned char)c->s[c->pos] : -1; }

static int expect(cursor *c, char ch) {
    skip_ws(c);
    if (peek(c) != ch) return -1;
    c->pos++;
    return 0;
}

/* A Python string literal in single or double quotes, no escapes (none of
 * the three keys or the dtype strings need one). */
static int parse_string(cursor *c, char *dst, size_t dstlen) {
    skip_ws(c);
    int q = peek(c);
    if (q != '\'' && q != '"') return -1;
    c->pos++;
    size_t n = 0;
    while (c->pos < c->len && c->s[c->pos] != q) {
        if (c->s[c->pos] == '\\' || n + 1 >= dstlen) return -1;
        dst[n++] = c->s[c->pos++];
    }
    if (c->pos >= c->len) return -1;
    c->pos++;
    dst[n] = '\0';
    return 0;
}

static int parse_word(cursor *c, const char *word) {
    size_t n = strlen(word);
    skip_ws(c);
    if (c->len - c->pos < n || memcmp(c->s + c->pos, word, n) != 0) return -1;
    c->pos += n;
    return 0;
}

/* A non-negative decimal integer, bounded by NPY_MAX_COUNT (a larger
 * dimension can never fit). Returns -1 on syntax error, -2 when too big. */
static int parse_dim(cursor *c, int64_t *v) {
    skip_ws(c);
    int ch = peek(c);
    if (ch < '0' || ch > '9') return -1;
    int64_t x = 0;
    while ((ch = peek(c)) >= '0' && ch <= '9') {
        x = x * 10 + (ch - '0');
        if (x > NPY_MAX_COUNT) return -2;
        c->pos++;
    }
    /* Python 2 era files may write 3L. */
    if (peek(c) == 'L') c->pos++;
    *v = x;
    return 0;
}

/* ( ) or (n,) or (n, m, ...) with an optional trailing comma. */
static int parse_shape(cursor *c, npy_array *a, const char *name, char *err, size_t errlen) {
    if (expect(c, '(') != 0) goto syntax;
    a->ndim = 0;
    for (;;) {
        skip_ws(c);
        if (peek(c) == ')') {
            c->pos++;
            return 0;
        }
        if (a->ndim >= NPY_MAX_DIMS) {
            snprintf(err, errlen, "%s: shape has more than %d dimensions", name, NPY_MAX_DIMS);
            return -1;
        }
        int rc = parse_dim(c, &a->shape[a->ndim]);
        if (rc == -2) {
            snprintf(err, errlen, "%s: shape dimension %d is absurdly large", name, a->ndim);
            return -1;
        }
        if (rc != 0) goto syntax;
        a->ndim++;
        skip_ws(c);
        if (peek(c) == ',') {
            c->pos++;
            continue;
        }
        if (peek(c) != ')') goto syntax;
    }
syntax:
    snprintf(err, errlen, "%s: 'shape' in the header is not a tuple of integers", name);
    return -1;
}

/* Parses the header dict into `a` (ndim, shape) and the item size. */
static int parse_header(const char *hdr, size_t hlen, const char *name, npy_array *a, int *itemsize,
                        char *err, size_t errlen) {
    cursor c = {hdr, hlen, 0};
    char key[32], descr[32];
    int have_descr = 0, have_fortran = 0, have_shape = 0, fortran = 0;

    if (expect(&c, '{') != 0) {
        snprintf(err, errlen, "%s: header is not a dict", name);
        return -1;
    }
    for (;;) {
        skip_ws(&c);
        if (peek(&c) == '}') {
            c.pos++;
            break;
        }
        if (parse_string(&c, key, sizeof key) != 0 || expect(&c, ':') != 0) {
            snprintf(err, errlen, "%s: header dict has a malformed key at byte %zu", name, c.pos);
            return -1;
        }
        if (strcmp(key, "descr") == 0 && !have_descr) {
            if (parse_string(&c, descr, sizeof descr) != 0) {
                snprintf(err, errlen,
                         "%s: 'descr' is not a dtype string "
                         "(structured dtypes are not supported)",
                         name);
                return -1;
            }
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !have_fortran) {
            if (parse_word(&c, "True") == 0) fortran = 1;
            else if (parse_word(&c, "False") == 0) fortran = 0;
            else {
                snprintf(err, errlen, "%s: 'fortran_order' is not True or False", name);
                return -1;
            }
            have_fortran = 1;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            if (parse_shape(&c, a, name, err, errlen) != 0) return -1;
            have_shape = 1;
        } else {
            /* NumPy requires exactly these three keys, once each. */
            snprintf(err, errlen, "%s: header has an unexpected or repeated key '%s'", name, key);
            return -1;
        }
        skip_ws(&c);
        if (peek(&c) == ',') {
            c.pos++;
            continue;
        }
        if (peek(&c) == '}') {
            c.pos++;
            break;
        }
        snprintf(err, errlen, "%s: header dict is malformed at byte %zu", name, c.pos);
        return -1;
    }
    skip_ws(&c);
    /* Padding is spaces and one newline; NUL bytes appear in some writers. */
    while (c.pos < c.len && c.s[c.pos] == '\0') c.pos++;
    if (c.pos != c.len) {
        snprintf(err, errlen, "%s: unexpected bytes after the header dict", name);
        return -1;
    }
    if (!have_descr || !have_fortran || !have_shape) {
        snprintf(err, errlen, "%s: header lacks '%s'", name,
                 !have_descr     ? "descr"
                 : !have_fortran ? "fortran_order"
                                 : "shape");
        return -1;
    }
    if (strcmp(descr, "<f4") == 0) {
        *itemsize = 4;
    } else if (strcmp(descr, "<f8") == 0) {
        *itemsize = 8;
    } else if (descr[0] == '>' && (strcmp(descr + 1, "f4") == 0 || strcmp(descr + 1, "f8") == 0)) {
        snprintf(err, errlen, "%s: dtype '%s' is big-endian (only little-endian <f4 and <f8)", name, descr);
        return -1;
    } else {
        snprintf(err, errlen, "%s: dtype '%s' is not supported (only <f4 and <f8)", name, descr);
        return -1;
    }
    if (fortran) {
        snprintf(err, errlen, "%s: Fortran-order arrays are not supported (save it C-contiguous)", name);
        return -1;
    }
    return 0;
}

int npy_parse(const uint8_t *data, size_t len, const char *name, npy_array *out, char *err, size_t errlen) {
    npy_array a;
    size_t hstart, hlen;
    int itemsize = 0;

    memset(&a, 0, sizeof a);
    if (!name) name = "(npy)";
    if (out) memset(out, 0, sizeof *out);
    if (!data || !out) {
        snprintf(err, errlen, "%s: no data", name);
        return -1;
    }
    if (len < 10 || memcmp(data, "\x93NUMPY", 6) != 0) {
        snprintf(err, errlen, "%s: not a .npy file (bad magic)", name);
        return -1;
    }
    int major = data[6];
    if (major == 1) {
        hlen = (size_t)data[8] | ((size_t)data[9] << 8);
        hstart = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12) {
            snprintf(err, errlen, "%s: truncated before the header length", name);
            return -1;
        }
        hlen = (size_t)data[8] | ((size_t)data[9] << 8) | ((size_t)data[10] << 16) | ((size_t)data[11] << 24);
        hstart = 12;
    } else {
        snprintf(err, errlen, "%s: .npy format version %d.%d is not supported", name, major, data[7]);
        return -1;
    }
    if (hlen > NPY_MAX_HEADER) {
        snprintf(err, errlen, "%s: header of %zu bytes is over the limit %d", name, hlen, NPY_MAX_HEADER);
        return -1;
    }
    if (hlen > len - hstart) {
        snprintf(err, errlen, "%s: truncated inside the header (%zu of %zu bytes)", name, len - hstart, hlen);
        return -1;
    }
    if (parse_header((const char *)data + hstart, hlen, name, &a, &itemsize, err, errlen) != 0) return -1;

    /* Product of the shape, checked step by step so it cannot overflow. */
    a.count = 1;
    for (int i = 0; i < a.ndim; i++) {
        if (a.shape[i] != 0 && a.count > NPY_MAX_COUNT / a.shape[i]) {
            snprintf(err, errlen, "%s: shape has more than %lld elements", name, (long long)NPY_MAX_COUNT);
            return -1;
        }
        a.count *= a.shape[i];
    }
    if (a.count == 0) {
        snprintf(err, errlen, "%s: array has no elements", name);
        return -1;
    }
    size_t need = (size_t)a.count * (size_t)itemsize;
    size_t have = len - hstart - hlen;
    if (have != need) {
        snprintf(err, errlen, "%s: data is %zu bytes, the header's shape and dtype need %zu", name, have,
                 need);
        return -1;
    }
    a.data = malloc((size_t)a.count * sizeof(float));
    if (!a.data) {
        snprintf(err, errlen, "%s: out of memory for %lld floats", name, (long long)a.count);
        return ENGINE_ERR_MEMORY;
    }
    /* Assembled byte by byte: correct on any host byte order and alignment. */
    const uint8_t *p = data + hstart + hlen;
    for (int64_t i = 0; i < a.count; i++) {
        if (itemsize == 4) {
            uint32_t u =
                (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
            float f;
            memcpy(&f, &u, sizeof f);
            a.data[i] = f;
        } else {
            uint64_t u = 0;
            for (int b = 7; b >= 0; b--) u = (u << 8) | p[b];
            double d;
            memcpy(&d, &u, sizeof d);
            a.data[i] = (float)d;
        }
        p += itemsize;
    }
    *out = a;
    return 0;
}

int npy_load(const char *path, npy_array *out, char *err, size_t errlen) {
    char *buf = NULL;
    size_t len;
    if (out) memset(out, 0, sizeof *out);
    /* Nothing valid is larger than the largest header plus the largest
     * float64 payload: refused before it is all read (a regular file only:
     * a FIFO or /dev/zero is refused at once, small_file_read) */
    const uint64_t max = (uint64_t)12 + NPY_MAX_HEADER + (uint64_t)NPY_MAX_COUNT * 8;
    int rc = small_file_read(path, (size_t)max, SMALL_FILE_REGULAR, &buf, &len, err, errlen);
    if (rc) return rc == SMALL_FILE_MISSING ? -1 : rc; /* missing: a bad path like any other here */
    rc = npy_parse((const uint8_t *)buf, len, path, out, err, errlen);
    free(buf);
    return rc;
}

int npy_save_f32(const char *path, const float *data, int ndim, const int64_t *shape, char *err,
                 size_t errlen) {
    char dict[256];
    int n = snprintf(dict, sizeof(dict), "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    int64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        n += snprintf(dict + n, sizeof(dict) - (size_t)n, "%lld%s", (long long)shape[i],
                      ndim == 1 || i + 1 < ndim ? ", " : "");
        count *= shape[i];
    }
    n += snprintf(dict + n, sizeof(dict) - (size_t)n, "), }");
    /* magic (6) + version (2) + header length (2) + dict, padded with
     * spaces to a multiple of 64 and ended by a newline */
    int total = (10 + n + 1 + 63) / 64 * 64, pad = total - 10 - n - 1;
    FILE *f = fopen(path, "wb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        return -1;
    }
    unsigned hlen = (unsigned)(total - 10);
    unsigned char head[10] = {
        0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
    int ok = fwrite(head, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
    for (int i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF && fwrite(data, sizeof(float), (size_t)count, f) == (size_t)count;
    if (fclose(f) != 0) ok = 0;
    if (!ok) {
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}
