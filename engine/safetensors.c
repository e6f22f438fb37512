/* safetensors.c: reading + validation of model.safetensors (see safetensors.h).
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
 * then the data section; offsets are relative to its start. */
#include "safetensors.h"
#include "engine_error.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "small_file.h"

/* The JSON header of a real checkpoint is a few hundred bytes per tensor;
 * 100 MB (the limit of the reference implementation) is generous. */
#define ST_MAX_HEADER (100u << 20)

static size_t dtype_size(st_dtype t) { return t == ST_F32 ? 4 : 2; }

/* Reads len bytes at off. Returns 0, or -1 with errno (0 for an end of
 * file before len: the file is shorter than when it was opened). */
static int pread_full(int fd, void *buf, size_t len, uint64_t off) {
    uint8_t *p = buf;
    while (len) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = 0;
            return -1;
        }
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static void read_error(const safetensors_file *f, const char *what, char *err, size_t errlen) {
    if (errno) snprintf(err, errlen, "%s: cannot read %s: %s", f->path, what, strerror(errno));
    else
        snprintf(err, errlen,
                 "%s: %s: the file ends early: it was truncated or rewritten in place while loading "
                 "(replace a checkpoint by rename)",
                 f->path, what);
}

static int compare_begin(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

/* Parses one header entry into t. */
static int parse_entry(const char *path, const char *name, json_t *v, size_t data_size, st_tensor *t,
                       char *err, size_t errlen) {
    if (!json_is_object(v)) {
        snprintf(err, errlen, "%s: tensor \"%s\": header entry is not an object", path, name);
        return -1;
    }
    json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
           *offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dt)) {
        snprintf(err, errlen, "%s: tensor \"%s\": missing dtype", path, name);
        return -1;
    }
    const char *d = json_string_value(dt);
    if (strcmp(d, "F32") == 0) t->dtype = ST_F32;
    else if (strcmp(d, "F16") == 0) t->dtype = ST_F16;
    else if (strcmp(d, "BF16") == 0) t->dtype = ST_BF16;
    else {
        snprintf(err, errlen, "%s: tensor \"%s\": unsupported dtype %.16s (F32, F16 or BF16)", path, name, d);
        return -1;
    }
    if (!json_is_array(shape) || json_array_size(shape) > ST_MAX_DIMS) {
        snprintf(err, errlen, "%s: tensor \"%s\": shape must be an array of at most %d ints", path, name,
                 ST_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)json_array_size(shape);
    t->count = 1;
    for (int i = 0; i < t->ndim; i++) {
        json_t *s = json_array_get(shape, (size_t)i);
        if (!json_is_integer(s) || json_integer_value(s) < 0) {
            snprintf(err, errlen, "%s: tensor \"%s\": shape entries must be non-negative ints", path, name);
            return -1;
        }
        t->shape[i] = json_integer_value(s);
        /* Every tensor must fit in the file (each element a byte at least),
         * so a product beyond its size is a lie; checked before it is
         * formed, which also keeps count x dtype size far from overflow
         * (the bound had a slack of one factor: [2^62 + 1] passed, and its
         * 4 bytes a value wrapped to 4). */
        if (t->shape[i] > 0 && t->count > (int64_t)data_size / t->shape[i]) {
            snprintf(err, errlen, "%s: tensor \"%s\": shape is larger than the file", path, name);
            return -1;
        }
        t->count *= t->shape[i];
    }
    if (!json_is_array(offs) || json_array_size(offs) != 2 || !json_is_integer(json_array_get(offs, 0)) ||
        !json_is_integer(json_array_get(offs, 1))) {
        snprintf(err, errlen, "%s: tensor \"%s\": data_offsets must be [begin, end]", path, name);
        return -1;
    }
    json_int_t b = json_integer_value(json_array_get(offs, 0));
    json_int_t e = json_integer_value(json_array_get(offs, 1));
    if (b < 0 || e < b || (uint64_t)e > data_size) {
        snprintf(err, errlen,
                 "%s: tensor \"%s\": data_offsets [%lld, %lld] outside the data section (%zu bytes)", path,
                 name, (long long)b, (long long)e, data_size);
        return -1;
    }
    if ((uint64_t)(e - b) != (uint64_t)t->count * dtype_size(t->dtype)) {
        snprintf(err, errlen, "%s: tensor \"%s\": data_offsets span %lld bytes but the shape needs %lld",
                 path, name, (long long)(e - b), (long long)(t->count * (int64_t)dtype_size(t->dtype)));
        return -1;
    }
    t->begin = (size_t)b;
    t->end = (size_t)e;
    return 0;
}

int safetensors_open(const char *path, safetensors_file *f, char *err, size_t errlen) {
    int fd = -1, rc = -1;
    json_t *root = NULL;
    st_tensor **sorted = NULL;
    char *header = NULL;

    memset(f, 0, sizeof(*f));
    f->fd = -1;
    f->path = strdup(path);
    if (!f->path) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = ENGINE_ERR_MEMORY;
        goto cleanup;
    }
    /* O_NONBLOCK: a FIFO in the checkpoint's place would block the open
     * (and the loading thread) until a writer came; refused below */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY); /* O_NOCTTY: small_file.c's why */
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) rc = SMALL_FILE_MISSING;
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto cleanup;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: is %s, not a regular file", path, small_file_kind(st.st_mode));
        goto cleanup;
    }
    if (st.st_size < 8) {
        snprintf(err, errlen, "%s: truncated: %lld bytes, shorter than the 8-byte header length", path,
                 (long long)st.st_size);
        goto cleanup;
    }
    f->fd = fd;
    fd = -1;
    f->size = (uint64_t)st.st_size;
    f->mtime = st.st_mtim;
    size_t file_size = (size_t)st.st_size;
    uint8_t lenbytes[8];
    if (pread_full(f->fd, lenbytes, 8, 0)) {
        read_error(f, "the header length", err, errlen);
        goto cleanup;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenbytes[i];
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > file_size - 8) {
        snprintf(err, errlen, "%s: header length %llu is impossible for a file of %zu bytes", path,
                 (unsigned long long)hlen, file_size);
        goto cleanup;
    }
    f->data_offset = 8 + hlen;
    f->data_size = file_size - 8 - (size_t)hlen;
    header = malloc((size_t)hlen);
    if (!header) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = ENGINE_ERR_MEMORY;
        goto cleanup;
    }
    if (pread_full(f->fd, header, (size_t)hlen, 8)) {
        read_error(f, "the header", err, errlen);
        goto cleanup;
    }

    json_error_t jerr;
    root = json_loadb(header, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        snprintf(err, errlen, "%s: header is not a JSON object (%s)", path, root ? "wrong type" : jerr.text);
        if (!root && json_error_code(&jerr) == json_error_out_of_memory) rc = ENGINE_ERR_MEMORY;
        goto cleanup;
    }
    size_t n = json_object_size(root);
    f->tensors = calloc(n ? n : 1, sizeof(st_tensor));
    sorted = calloc(n ? n : 1, sizeof(st_tensor *));
    if (!f->tensors || !sorted) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = ENGINE_ERR_MEMORY;
        goto cleanup;
    }
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v) {
        if (strcmp(name, "__metadata__") == 0) continue;
        st_tensor *t = &f->tensors[f->n];
        if (parse_entry(path, name, v, f->data_size, t, err, errlen) != 0) goto cleanup;
        t->name = strdup(name);
        if (!t->name) {
            snprintf(err, errlen, "%s: out of memory", path);
            rc = ENGINE_ERR_MEMORY;
            goto cleanup;
        }
        sorted[f->n] = t;
        f->n++;
    }
    /* No two tensors may share bytes (empty tensors share nothing). */
    qsort(sorted, (size_t)f->n, sizeof(*sorted), compare_begin);
    for (int i = 1; i < f->n; i++) {
        const st_tensor *a = sorted[i - 1], *b = sorted[i];
        if (a->end > b->begin && a->end > a->begin && b->end > b->begin) {
            snprintf(err, errlen, "%s: tensors \"%s\" and \"%s\" overlap", path, a->name, b->name);
            goto cleanup;
        }
    }
    rc = 0;
cleanup:
    if (fd >= 0) close(fd);
    free(header);
    if (root) json_decref(root);
    free(sorted);
    if (rc != 0) safetensors_close(f);
    return rc;
}

void safetensors_close(safetensors_file *f) {
    if (f->path && f->fd >= 0) close(f->fd); /* path: set by every open, so f is not a zeroed one */
    if (f->tensors)
        for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    free(f->path);
    memset(f, 0, sizeof(*f));
}

int safetensors_check_unchanged(const safetensors_file *f, char *err, size_t errlen) {
    struct stat st;
    if (fstat(f->fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot read: %s", f->path, strerror(errno));
        return -1;
    }
    if ((uint64_t)st.st_size != f->size || st.st_mtim.tv_sec != f->mtime.tv_sec ||
        st.st_mtim.tv_nsec != f->mtime.tv_nsec) {
        snprintf(err, errlen,
                 "%s: rewritten in place while loading: the weights read may mix two checkpoints "
                 "(replace a checkpoint by rename)",
                 f->path);
        return -1;
    }
    return 0;
}

static st_tensor *find(const safetensors_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

int safetensors_has(const safetensors_file *f, const char *name) { return find(f, name) != NULL; }

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) bits = sign;
        else { /* subnormal: value = mant * 2^-24 */ float v = (float)mant * (1.0f / 16777216.0f);
            return sign ? -v : v;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

int safetensors_take(safetensors_file *f, const char *name, int ndim, const int64_t *shape, float *dst,
                     char *err, size_t errlen) {
    st_tensor *t = find(f, name);
    if (!t) {
        snprintf(err, errlen, "%s: tensor \"%s\" is missing", f->path, name);
        return -1;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char got[128] = "", want[128] = "";
        size_t g = 0, w = 0;
        for (int i = 0; i < t->ndim && g < sizeof(got); i++)
            g += (size_t)snprintf(got + g, sizeof(got) - g, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        for (int i = 0; i < ndim && w < sizeof(want); i++)
            w += (size_t)snprintf(want + w, sizeof(want) - w, "%s%lld", i ? ", " : "", (long long)shape[i]);
        snprintf(err, errlen, "%s: tensor \"%s\" has shape [%s] but the config implies [%s]", f->path, name,
                 got, want);
        return -1;
    }
    /* F32 is read straight into dst, the halves through a small buffer;
     * either way the values are checked as they are converted */
    uint16_t half[4096];
    const int64_t chunk = t->dtype == ST_F32 ? t->count : (int64_t)(sizeof(half) / sizeof(half[0]));
    for (int64_t at = 0; at < t->count; at += chunk) {
        int64_t n = t->count - at < chunk ? t->count - at : chunk;
        size_t bytes = (size_t)n * dtype_size(t->dtype);
        uint64_t off = f->data_offset + t->begin + (uint64_t)at * dtype_size(t->dtype);
        if (pread_full(f->fd, t->dtype == ST_F32 ? (void *)(dst + at) : (void *)half, bytes, off)) {
            char what[300];
            snprintf(what, sizeof(what), "tensor \"%.200s\"", name);
            read_error(f, what, err, errlen);
            return -1;
        }
        for (int64_t i = 0; i < n; i++) {
            float v;
            if (t->dtype == ST_F32) {
                v = dst[at + i];
            } else {
                const uint8_t *b = (const uint8_t *)&half[i];
                uint16_t h = (uint16_t)(b[0] | (b[1] << 8)); /* little-endian in the file */
                if (t->dtype == ST_F16) v = half_to_float(h);
                else {
                    uint32_t bits = (uint32_t)h << 16;
                    memcpy(&v, &bits, 4);
                }
            }
            if (!isfinite(v)) {
                snprintf(err, errlen, "%s: tensor \"%s\" holds a NaN or an infinity (element %lld)", f->path,
                         name, (long long)(at + i));
                return -1;
            }
            dst[at + i] = v;
        }
    }
    t->used = 1;
    return 0;
}

int safetensors_check_all_used(const safetensors_file *f, char *err, size_t errlen) {
    for (int i = 0; i < f->n; i++) {
        if (!f->tensors[i].used) {
            snprintf(err, errlen, "%s: unexpected tensor \"%s\" (the config does not describe these weights)",
                     f->path, f->tensors[i].name);
            return -1;
        }
    }
    return 0;
}
