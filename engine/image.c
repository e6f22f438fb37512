/* image.c: JPEG/PNG decoding and the preparation of the model's input.
 *
 * Owns: the header probe and the limits checked before any pixel is decoded,
 * the libpng and libjpeg-turbo decoders (both report errors by longjmp, so
 * every decoder keeps its state in a heap context that survives the jump),
 * the conversion to PIL's "RGB" or "L", PIL's antialiased resampling
 * (Pillow 9.4 src/libImaging/Resample.c, 8-bit path, re-implemented here),
 * the torchvision / HuggingFace crops, preprocessor_config.json, and the
 * rescale + normalize into a float tensor [C, h, w].
 *
 * Reference behaviour is what the model saw at training time: torchvision
 * transforms on PIL images (Pillow 9.4, libjpeg-turbo). The one deliberate
 * difference: 16-bit grayscale PNGs keep their high byte here, where Pillow
 * 9.4 opens them as mode "I" and clips every value above 255 to white. */
#include "image.h"

#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <jansson.h>
#include <jerror.h>
#include <jpeglib.h>
#include <limits.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

/* libjpeg refuses dimensions above this anyway; PNG allows 2^31-1. */
#define JPEG_MAX_DIM 65500
/* A progressive JPEG may hold any number of scans, each a full pass over the
 * coefficients: a tiny file can cost minutes of CPU. Real encoders write
 * about ten; libjpeg-turbo's own tools suggest a limit of this order. */
#define JPEG_MAX_SCANS 500
/* Upper bound for a single ancillary PNG chunk (iCCP, zTXt, ...), so that a
 * hostile chunk length cannot make libpng allocate gigabytes. */
#define PNG_MAX_CHUNK_BYTES (8u << 20)
/* Largest output side image_prepare accepts; keeps every intermediate size
 * (1.1 x the side, times the other side) far from int overflow. */
#define PREP_MAX_SIDE 65536
/* Largest intermediate image of a resize in image_prepare (an elongated
 * photo resized to cover a crop can get wide). */
#define PREP_MAX_RESIZE_PIXELS ((int64_t)1 << 26)

image_limits image_limits_default(void)
{
    image_limits l;
    l.max_width = 16384;
    l.max_height = 16384;
    l.max_pixels = 40000000; /* 40 MP: 120 MB of RGB once decoded */
    return l;
}

/* ---- format sniffing and header probe ---- */

static const uint8_t PNG_SIGNATURE[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

int image_format(const uint8_t *data, size_t len)
{
    if (!data)
        return IMAGE_FORMAT_UNKNOWN;
    if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
        return IMAGE_FORMAT_JPEG;
    if (len >= 8 && memcmp(data, PNG_SIGNATURE, 8) == 0)
        return IMAGE_FORMAT_PNG;
    return IMAGE_FORMAT_UNKNOWN;
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static unsigned be16(const uint8_t *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

/* PNG: the IHDR chunk must come first, right after the signature. */
static int probe_png(const uint8_t *data, size_t len, int64_t *w, int64_t *h,
                     char *err, size_t errlen)
{
    if (len < 8 + 8 + 13) {
        snprintf(err, errlen, "PNG is truncated before the end of its IHDR header (%zu bytes)", len);
        return IMAGE_ERR_CORRUPT;
    }
    if (be32(data + 8) != 13 || memcmp(data + 12, "IHDR", 4) != 0) {
        snprintf(err, errlen, "PNG does not start with a 13-byte IHDR chunk");
        return IMAGE_ERR_CORRUPT;
    }
    *w = be32(data + 16);
    *h = be32(data + 20);
    /* The PNG spec caps both at 2^31-1; larger values are corrupt, not big. */
    if (*w > INT32_MAX || *h > INT32_MAX) {
        snprintf(err, errlen, "PNG header gives an invalid size %lldx%lld",
                 (long long)*w, (long long)*h);
        return IMAGE_ERR_CORRUPT;
    }
    return IMAGE_OK;
}

/* JPEG: walks the marker segments up to the first frame header (SOFn). Bytes
 * that are not a marker are skipped, as libjpeg and PIL skip them. */
static int probe_jpeg(const uint8_t *data, size_t len, int64_t *w, int64_t *h,
                      char *err, size_t errlen)
{
    size_t pos = 2; /* after SOI */
    for (;;) {
        while (pos < len && data[pos] != 0xFF)
            pos++;
        while (pos < len && data[pos] == 0xFF)
            pos++;
        if (pos >= len)
            break;
        unsigned m = data[pos++];
        /* Standalone markers carry no length. */
        if (m == 0x00 || m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7))
            continue;
        if (m == 0xD9 || m == 0xDA) {
            snprintf(err, errlen, "JPEG has no frame header before its %s marker",
                     m == 0xD9 ? "end-of-image" : "start-of-scan");
            return IMAGE_ERR_CORRUPT;
        }
        if (len - pos < 2)
            break;
        size_t seglen = be16(data + pos);
        if (seglen < 2) {
            snprintf(err, errlen, "JPEG marker 0x%02X has an invalid length %zu", m, seglen);
            return IMAGE_ERR_CORRUPT;
        }
        /* SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC). */
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (seglen < 8 || len - pos < 7)
                break;
            *h = be16(data + pos + 3);
            *w = be16(data + pos + 5);
            return IMAGE_OK;
        }
        if (len - pos < seglen)
            break;
        pos += seglen;
    }
    snprintf(err, errlen, "JPEG is truncated before its frame header (%zu bytes)", len);
    return IMAGE_ERR_CORRUPT;
}

/* Dimensions from the header, as int64 so that the limit check never sees a
 * wrapped value. */
static int probe_dims(const uint8_t *data, size_t len, int64_t *w, int64_t *h,
                      char *err, size_t errlen)
{
    int rc;
    *w = *h = 0;
    switch (image_format(data, len)) {
    case IMAGE_FORMAT_PNG:
        rc = probe_png(data, len, w, h, err, errlen);
        break;
    case IMAGE_FORMAT_JPEG:
        rc = probe_jpeg(data, len, w, h, err, errlen);
        break;
    default:
        snprintf(err, errlen, "not a JPEG or PNG file (%zu bytes, unknown magic)", len);
        return IMAGE_ERR_FORMAT;
    }
    if (rc != IMAGE_OK)
        return rc;
    if (*w == 0 || *h == 0) {
        snprintf(err, errlen, "image header gives a zero size %lldx%lld",
                 (long long)*w, (long long)*h);
        return IMAGE_ERR_CORRUPT;
    }
    return IMAGE_OK;
}

int image_probe(const uint8_t *data, size_t len, int *width, int *height,
                char *err, size_t errlen)
{
    int64_t w, h;
    if (probe_dims(data, len, &w, &h, err, errlen) != IMAGE_OK)
        return -1;
    *width = (int)w; /* probe_dims bounds both by INT32_MAX */
    *height = (int)h;
    return 0;
}

static int check_limits(int64_t w, int64_t h, const image_limits *limits,
                        char *err, size_t errlen)
{
    if (!limits)
        return IMAGE_OK;
    if (limits->max_width > 0 && w > limits->max_width) {
        snprintf(err, errlen, "image width %lld is over the limit %d",
                 (long long)w, limits->max_width);
        return IMAGE_ERR_TOO_LARGE;
    }
    if (limits->max_height > 0 && h > limits->max_height) {
        snprintf(err, errlen, "image height %lld is over the limit %d",
                 (long long)h, limits->max_height);
        return IMAGE_ERR_TOO_LARGE;
    }
    if (limits->max_pixels > 0 && w * h > limits->max_pixels) {
        snprintf(err, errlen, "image of %lldx%lld = %lld pixels is over the limit %lld",
                 (long long)w, (long long)h, (long long)(w * h),
                 (long long)limits->max_pixels);
        return IMAGE_ERR_TOO_LARGE;
    }
    return IMAGE_OK;
}

/* ---- pixel conversions (PIL's Convert.c semantics) ---- */

/* PIL's luma for "RGB" -> "L": L24(rgb) >> 16, ITU-R 601-2 weights. */
static uint8_t luma(unsigned r, unsigned g, unsigned b)
{
    return (uint8_t)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

/* One row of gray or gray+alpha (src_ch 1 or 2, 8-bit) into 1 or 3 channels:
 * alpha is dropped, as PIL's convert("RGB"/"L") drops it; `scale` maps
 * 1/2/4-bit gray to 0..255 as PIL's "1", "L;2", "L;4" unpackers do. */
static void row_from_gray(uint8_t *dst, const uint8_t *src, int w, int src_ch,
                          unsigned scale, int channels)
{
    for (int x = 0; x < w; x++) {
        uint8_t g = (uint8_t)(src[(size_t)x * src_ch] * scale);
        if (channels == 1) {
            dst[x] = g;
        } else {
            dst[3 * (size_t)x + 0] = g;
            dst[3 * (size_t)x + 1] = g;
            dst[3 * (size_t)x + 2] = g;
        }
    }
}

/* RGB or RGBA (src_ch 3 or 4, 8-bit) into 1 or 3 channels. */
static void row_from_rgb(uint8_t *dst, const uint8_t *src, int w, int src_ch, int channels)
{
    for (int x = 0; x < w; x++) {
        const uint8_t *p = src + (size_t)x * src_ch;
        if (channels == 1) {
            dst[x] = luma(p[0], p[1], p[2]);
        } else {
            dst[3 * (size_t)x + 0] = p[0];
            dst[3 * (size_t)x + 1] = p[1];
            dst[3 * (size_t)x + 2] = p[2];
        }
    }
}

/* ---- PNG (libpng) ---- */

typedef struct {
    png_structp png;
    png_infop info;
    const uint8_t *data;
    size_t len, pos;
    /* Tail mode (see png_find_tail): the file is read as data[0, len)
     * followed by tail[0, tail_len). */
    uint8_t tail[4 + 12];
    size_t tail_len;
    uint8_t *buf;      /* one decoded row, or the whole image when interlaced */
    png_bytep *rows;   /* row pointers into buf when interlaced */
    uint8_t *pixels;   /* the output, handed to the caller on success */
    uint8_t palette[256 * 3];
    char msg[200];
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    /* A daemon must not write libpng's chatter to stderr; warnings (bad
     * ancillary CRCs, unknown chunks) do not stop PIL either. */
    (void)png;
    (void)msg;
}

static void png_read_mem(png_structp png, png_bytep dst, png_size_t n)
{
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->len + c->tail_len - c->pos)
        png_error(png, "file is truncated");
    while (n > 0) {
        size_t k;
        if (c->pos < c->len) {
            k = c->len - c->pos < n ? c->len - c->pos : n;
            memcpy(dst, c->data + c->pos, k);
        } else {
            k = n;
            memcpy(dst, c->tail + (c->pos - c->len), k);
        }
        dst += k;
        c->pos += k;
        n -= k;
    }
}

/* The CRC-32 of PNG chunks (ISO 3309, reflected 0xEDB88320), bitwise: it
 * only runs for the rare file of png_find_tail. */
static uint32_t png_crc32(const uint8_t *p, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return crc ^ 0xFFFFFFFFu;
}

/* PIL accepts a PNG cut anywhere after the image data: it neither checks
 * IDAT CRCs nor needs IEND (its zlib decoder even stops before the stream's
 * Adler-32 once it has every row). libpng reads the CRC of the last IDAT
 * and the header of the chunk after it. For a file that ends within those
 * bytes, the read stops at the end of the IDAT data and continues from a
 * virtual tail: that IDAT's CRC and an IEND chunk. Nothing is invented
 * inside the data: a file cut in its compressed stream (the Adler-32
 * included, where PIL would still accept it) stays truncated. */
static void png_find_tail(png_ctx *c)
{
    static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
    size_t pos = 8, idat_start = 0, idat_end = 0;
    for (;;) {
        if (c->len - pos < 8)
            break;
        uint32_t n = be32(c->data + pos);
        if (n > INT32_MAX || n > c->len - pos - 8)
            break;
        size_t data_end = pos + 8 + n;
        if (memcmp(c->data + pos + 4, "IDAT", 4) == 0) {
            idat_start = pos;
            idat_end = data_end;
        } else {
            idat_end = 0; /* only a cut right after an IDAT matters */
        }
        if (c->len - data_end < 4)
            break;
        pos = data_end + 4;
    }
    if (idat_end == 0 || c->len >= idat_end + 4 + sizeof iend)
        return;
    uint32_t crc = png_crc32(c->data + idat_start + 4, idat_end - idat_start - 4);
    c->tail[0] = (uint8_t)(crc >> 24);
    c->tail[1] = (uint8_t)(crc >> 16);
    c->tail[2] = (uint8_t)(crc >> 8);
    c->tail[3] = (uint8_t)crc;
    memcpy(c->tail + 4, iend, sizeof iend);
    c->tail_len = 4 + sizeof iend;
    c->len = idat_end;
}

/* Converts one decoded row (after strip_16 and packing) into the output. */
static void png_convert_row(png_ctx *c, uint8_t *dst, const uint8_t *src, int w,
                            int color_type, int src_ch, unsigned gray_scale, int channels)
{
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        for (int x = 0; x < w; x++) {
            const uint8_t *p = c->palette + 3 * (size_t)src[x];
            if (channels == 1) {
                dst[x] = luma(p[0], p[1], p[2]);
            } else {
                dst[3 * (size_t)x + 0] = p[0];
                dst[3 * (size_t)x + 1] = p[1];
                dst[3 * (size_t)x + 2] = p[2];
            }
        }
    } else if (src_ch <= 2) {
        row_from_gray(dst, src, w, src_ch, gray_scale, channels);
    } else {
        row_from_rgb(dst, src, w, src_ch, channels);
    }
}

/* The body runs under the setjmp of decode_png; everything it allocates is
 * recorded in `c` (heap), so that the error path can free it. */
static void png_decode_body(png_ctx *c, int64_t w64, int64_t h64, int channels,
                            image_u8 *out)
{
    png_uint_32 pw, ph;
    int bit_depth, color_type, interlace, passes = 1;

    png_set_read_fn(c->png, c, png_read_mem);
    png_set_chunk_malloc_max(c->png, PNG_MAX_CHUNK_BYTES);
    png_read_info(c->png, c->info);
    png_get_IHDR(c->png, c->info, &pw, &ph, &bit_depth, &color_type, &interlace, NULL, NULL);
    if ((int64_t)pw != w64 || (int64_t)ph != h64)
        png_error(c->png, "IHDR does not match the probed size");
    int w = (int)pw, h = (int)ph;

    /* PIL keeps the high byte of 16-bit samples ("RGB;16B" etc.). */
    if (bit_depth == 16)
        png_set_strip_16(c->png);
    /* 1/2/4-bit samples to one byte each, values unscaled (palette indices
     * stay indices; gray is scaled in png_convert_row). No png_set_expand:
     * it would turn tRNS into an alpha channel, and PIL ignores tRNS here. */
    if (bit_depth < 8)
        png_set_packing(c->png);
    if (interlace != PNG_INTERLACE_NONE)
        passes = png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);

    int src_ch = png_get_channels(c->png, c->info);
    size_t rowbytes = png_get_rowbytes(c->png, c->info);
    if (src_ch < 1 || src_ch > 4 || rowbytes != (size_t)w * (size_t)src_ch)
        png_error(c->png, "unexpected row layout after transforms");

    unsigned gray_scale = 1;
    if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA)
        gray_scale = bit_depth == 1 ? 255 : bit_depth == 2 ? 85 : bit_depth == 4 ? 17 : 1;

    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_colorp plte = NULL;
        int nplte = 0;
        /* Entries the PLTE chunk does not define read as a gray ramp, as in
         * PIL (ImagingPaletteNew); libpng would give black. */
        for (int i = 0; i < 256; i++)
            c->palette[3 * i] = c->palette[3 * i + 1] = c->palette[3 * i + 2] = (uint8_t)i;
        if (!png_get_PLTE(c->png, c->info, &plte, &nplte))
            png_error(c->png, "palette image without PLTE");
        for (int i = 0; i < nplte && i < 256; i++) {
            c->palette[3 * i + 0] = plte[i].red;
            c->palette[3 * i + 1] = plte[i].green;
            c->palette[3 * i + 2] = plte[i].blue;
        }
    }

    c->pixels = malloc((size_t)w * (size_t)h * (size_t)channels);
    if (!c->pixels)
        png_error(c->png, "out of memory for the decoded image");

    if (passes > 1) {
        /* Adam7 needs the whole image before any row is final. */
        c->buf = malloc(rowbytes * (size_t)h);
        c->rows = malloc(sizeof(png_bytep) * (size_t)h);
        if (!c->buf || !c->rows)
            png_error(c->png, "out of memory for the interlaced image");
        for (int y = 0; y < h; y++)
            c->rows[y] = c->buf + rowbytes * (size_t)y;
        png_read_image(c->png, c->rows);
        for (int y = 0; y < h; y++)
            png_convert_row(c, c->pixels + (size_t)y * w * channels, c->rows[y], w,
                            color_type, src_ch, gray_scale, channels);
    } else {
        c->buf = malloc(rowbytes);
        if (!c->buf)
            png_error(c->png, "out of memory for a row");
        for (int y = 0; y < h; y++) {
            png_read_row(c->png, c->buf, NULL);
            png_convert_row(c, c->pixels + (size_t)y * w * channels, c->buf, w,
                            color_type, src_ch, gray_scale, channels);
        }
    }
    /* Chunks after the last IDAT are not read: the pixels are complete, and
     * PIL does not insist on them either. */
    out->width = w;
    out->height = h;
}

static int decode_png(const uint8_t *data, size_t len, int64_t w, int64_t h, int channels,
                      image_u8 *out, char *err, size_t errlen)
{
    int rc = IMAGE_ERR_CORRUPT;
    png_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory decoding a PNG");
        return IMAGE_ERR_MEMORY;
    }
    c->data = data;
    c->len = len;
    png_find_tail(c);
    c->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    if (c->png)
        c->info = png_create_info_struct(c->png);
    if (!c->png || !c->info) {
        snprintf(err, errlen, "out of memory creating the PNG decoder");
        rc = IMAGE_ERR_MEMORY;
        goto cleanup;
    }
    if (setjmp(png_jmpbuf(c->png))) {
        snprintf(err, errlen, "PNG fails to decode: %s", c->msg);
        rc = strstr(c->msg, "out of memory") ? IMAGE_ERR_MEMORY : IMAGE_ERR_CORRUPT;
        goto cleanup;
    }
    png_decode_body(c, w, h, channels, out);
    out->channels = channels;
    out->pixels = c->pixels;
    c->pixels = NULL;
    rc = IMAGE_OK;

cleanup:
    png_destroy_read_struct(&c->png, c->info ? &c->info : NULL, NULL);
    free(c->pixels);
    free(c->buf);
    free(c->rows);
    free(c);
    return rc;
}

/* ---- JPEG (libjpeg-turbo) ---- */

typedef struct {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_error_mgr jerr;
    struct jpeg_progress_mgr progress;
    jmp_buf jmp;
    int created;     /* jpeg_create_decompress succeeded */
    int finishing;   /* every row is in: running out of data now is tolerated */
    uint8_t *row;
    uint8_t *pixels;
    char msg[JMSG_LENGTH_MAX + 64];
} jpeg_ctx;

/* cinfo is the first member, so the libjpeg pointer is the context. */
static jpeg_ctx *jpeg_ctx_of(j_common_ptr cinfo)
{
    return (jpeg_ctx *)(void *)cinfo;
}

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_ctx *c = jpeg_ctx_of(cinfo);
    (*cinfo->err->format_message)(cinfo, c->msg);
    longjmp(c->jmp, 1);
}

/* Warnings are ignored as PIL ignores them, except running out of data
 * before the last row: PIL refuses such a file ("image file is truncated"),
 * while libjpeg would fill the rest with gray. */
static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    jpeg_ctx *c = jpeg_ctx_of(cinfo);
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF && !c->finishing) {
        snprintf(c->msg, sizeof c->msg, "file is truncated");
        longjmp(c->jmp, 1);
    }
}

static void jpeg_on_output(j_common_ptr cinfo)
{
    (void)cinfo; /* never print to stderr */
}

static void jpeg_on_progress(j_common_ptr cinfo)
{
    jpeg_ctx *c = jpeg_ctx_of(cinfo);
    if (c->cinfo.input_scan_number > JPEG_MAX_SCANS) {
        snprintf(c->msg, sizeof c->msg, "more than %d scans", JPEG_MAX_SCANS);
        longjmp(c->jmp, 1);
    }
}

/* PIL opens 4-component JPEGs as "CMYK;I" (Adobe's inverted polarity, which
 * it always assumes) and converts to RGB with cmyk2rgb:
 * nk = 255 - k; out = clip(nk - muldiv255(c, nk)). libjpeg hands us the
 * stored (inverted) values, so c = 255 - stored. */
static uint8_t cmyk_channel(unsigned stored_c, unsigned nk)
{
    unsigned c = 255u - stored_c;
    unsigned t = c * nk + 128u;
    unsigned m = ((t >> 8) + t) >> 8;
    return (uint8_t)(nk > m ? nk - m : 0);
}

static void jpeg_decode_body(jpeg_ctx *c, const uint8_t *data, size_t len, int64_t w64,
                             int64_t h64, int channels, image_u8 *out)
{
    struct jpeg_decompress_struct *ci = &c->cinfo;
    /* Set first: the context is zeroed, and jpeg_destroy_decompress copes
     * with a create that failed half way (its memory manager is NULL). */
    c->created = 1;
    jpeg_create_decompress(ci);
    ci->progress = &c->progress;
    jpeg_mem_src(ci, data, (unsigned long)len);
    jpeg_read_header(ci, TRUE);
    if ((int64_t)ci->image_width != w64 || (int64_t)ci->image_height != h64) {
        snprintf(c->msg, sizeof c->msg, "frame size %ux%u does not match the probed size",
                 ci->image_width, ci->image_height);
        longjmp(c->jmp, 1);
    }
    int ncomp = ci->num_components;
    if (ncomp == 1)
        ci->out_color_space = JCS_GRAYSCALE;
    else if (ncomp == 3)
        ci->out_color_space = JCS_RGB;
    else if (ncomp == 4)
        ci->out_color_space = JCS_CMYK; /* YCCK is turned into CMYK by libjpeg */
    else {
        snprintf(c->msg, sizeof c->msg, "%d color components are not supported", ncomp);
        longjmp(c->jmp, 1);
    }
    /* PIL's decode: libjpeg defaults, written out so nothing drifts. */
    ci->dct_method = JDCT_ISLOW;
    ci->do_fancy_upsampling = TRUE;
    ci->scale_num = ci->scale_denom = 1;
    jpeg_start_decompress(ci);

    int w = (int)ci->output_width, h = (int)ci->output_height;
    int src_ch = ci->output_components;
    if (w != w64 || h != h64 || src_ch != ncomp) {
        snprintf(c->msg, sizeof c->msg, "unexpected output layout %dx%dx%d", w, h, src_ch);
        longjmp(c->jmp, 1);
    }
    c->pixels = malloc((size_t)w * (size_t)h * (size_t)channels);
    c->row = malloc((size_t)w * (size_t)src_ch);
    if (!c->pixels || !c->row) {
        snprintf(c->msg, sizeof c->msg, "out of memory for the decoded image");
        longjmp(c->jmp, 1);
    }
    while (ci->output_scanline < ci->output_height) {
        int y = (int)ci->output_scanline;
        JSAMPROW rowp = c->row;
        if (jpeg_read_scanlines(ci, &rowp, 1) != 1) {
            snprintf(c->msg, sizeof c->msg, "no progress at row %d", y);
            longjmp(c->jmp, 1);
        }
        uint8_t *dst = c->pixels + (size_t)y * w * channels;
        if (src_ch == 1) {
            row_from_gray(dst, c->row, w, 1, 1, channels);
        } else if (src_ch == 3) {
            row_from_rgb(dst, c->row, w, 3, channels);
        } else {
            for (int x = 0; x < w; x++) {
                const uint8_t *p = c->row + 4 * (size_t)x;
                /* PIL's k is 255 - stored, so nk = 255 - k is the stored k. */
                unsigned nk = p[3];
                uint8_t r = cmyk_channel(p[0], nk), g = cmyk_channel(p[1], nk),
                        b = cmyk_channel(p[2], nk);
                if (channels == 1) {
                    /* PIL has no CMYK -> L converter: it goes through RGB. */
                    dst[x] = luma(r, g, b);
                } else {
                    dst[3 * (size_t)x + 0] = r;
                    dst[3 * (size_t)x + 1] = g;
                    dst[3 * (size_t)x + 2] = b;
                }
            }
        }
    }
    /* PIL ignores a failing finish once every row is in (a missing EOI). */
    c->finishing = 1;
    jpeg_finish_decompress(ci);
    out->width = w;
    out->height = h;
}

static int decode_jpeg(const uint8_t *data, size_t len, int64_t w, int64_t h, int channels,
                       image_u8 *out, char *err, size_t errlen)
{
    int rc = IMAGE_ERR_CORRUPT;
    jpeg_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory decoding a JPEG");
        return IMAGE_ERR_MEMORY;
    }
    c->cinfo.err = jpeg_std_error(&c->jerr);
    c->jerr.error_exit = jpeg_on_error;
    c->jerr.emit_message = jpeg_on_message;
    c->jerr.output_message = jpeg_on_output;
    c->progress.progress_monitor = jpeg_on_progress;
    if (setjmp(c->jmp)) {
        snprintf(err, errlen, "JPEG fails to decode: %s", c->msg);
        rc = (c->jerr.msg_code == JERR_OUT_OF_MEMORY || strstr(c->msg, "out of memory"))
                 ? IMAGE_ERR_MEMORY
                 : IMAGE_ERR_CORRUPT;
        goto cleanup;
    }
    jpeg_decode_body(c, data, len, w, h, channels, out);
    out->channels = channels;
    out->pixels = c->pixels;
    c->pixels = NULL;
    rc = IMAGE_OK;

cleanup:
    if (c->created)
        jpeg_destroy_decompress(&c->cinfo);
    free(c->row);
    free(c->pixels);
    free(c);
    return rc;
}

int image_decode(const uint8_t *data, size_t len, int channels,
                 const image_limits *limits, image_u8 *out,
                 char *err, size_t errlen)
{
    int64_t w, h;
    int rc;

    if (!out) {
        snprintf(err, errlen, "image_decode: no output image");
        return IMAGE_ERR_MEMORY;
    }
    memset(out, 0, sizeof *out);
    if (channels != 1 && channels != 3) {
        snprintf(err, errlen, "image_decode: %d channels requested (1 or 3)", channels);
        return IMAGE_ERR_FORMAT;
    }
    rc = probe_dims(data, len, &w, &h, err, errlen);
    if (rc != IMAGE_OK)
        return rc;
    /* The limits are checked from the header alone: nothing is allocated
     * for an image that is refused here. */
    rc = check_limits(w, h, limits, err, errlen);
    if (rc != IMAGE_OK)
        return rc;
    /* Without limits, the output size must still fit in memory arithmetic
     * (it always does with 64-bit size_t; this is for 32-bit hosts). */
    if ((uint64_t)w * (uint64_t)h > SIZE_MAX / 4) {
        snprintf(err, errlen, "image of %lldx%lld pixels cannot be addressed",
                 (long long)w, (long long)h);
        return IMAGE_ERR_TOO_LARGE;
    }
    if (image_format(data, len) == IMAGE_FORMAT_JPEG) {
        if (w > JPEG_MAX_DIM || h > JPEG_MAX_DIM) {
            snprintf(err, errlen, "JPEG size %lldx%lld is over libjpeg's maximum %d",
                     (long long)w, (long long)h, JPEG_MAX_DIM);
            return IMAGE_ERR_TOO_LARGE;
        }
        return decode_jpeg(data, len, w, h, channels, out, err, errlen);
    }
    return decode_png(data, len, w, h, channels, out, err, errlen);
}

void image_free(image_u8 *img)
{
    if (!img)
        return;
    free(img->pixels);
    img->pixels = NULL;
    img->width = img->height = img->channels = 0;
}

/* ---- PIL's antialiased resampling (Resample.c, 8 bits per channel) ----
 *
 * Each output coordinate gets a window of input samples weighted by the
 * filter, stretched by the scale factor when shrinking (that is the
 * antialiasing). Weights are normalized to sum 1 in double, then turned into
 * fixed point with 22 fractional bits; sums start at one half and are
 * clipped to 0..255 after each pass. The horizontal pass runs first, and a
 * pass is skipped when its axis keeps its size. */

#define PRECISION_BITS 22

typedef struct {
    int ksize;      /* coefficients per output sample */
    int *bounds;    /* [out][2]: first input index, count */
    int32_t *kk;    /* [out][ksize], fixed point */
} resample_coeffs;

static double filter_bilinear(double x)
{
    if (x < 0.0)
        x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* Keys' cubic with a = -0.5, written in Pillow's order of operations. */
static double filter_bicubic(double x)
{
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static void coeffs_free(resample_coeffs *c)
{
    free(c->bounds);
    free(c->kk);
    c->bounds = NULL;
    c->kk = NULL;
}

/* Pillow's precompute_coeffs for the box (0, in_size) followed by
 * normalize_coeffs_8bpc. Returns 0, or -1 when out of memory. */
static int coeffs_compute(int in_size, int out_size, int resample, resample_coeffs *c)
{
    double (*filter)(double) = resample == IMAGE_RESAMPLE_BICUBIC ? filter_bicubic : filter_bilinear;
    double base_support = resample == IMAGE_RESAMPLE_BICUBIC ? 2.0 : 1.0;
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = base_support * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *w = NULL;

    memset(c, 0, sizeof *c);
    c->ksize = ksize;
    c->bounds = malloc(sizeof(int) * 2 * (size_t)out_size);
    c->kk = calloc((size_t)out_size * (size_t)ksize, sizeof(int32_t));
    w = malloc(sizeof(double) * (size_t)ksize);
    if (!c->bounds || !c->kk || !w) {
        free(w);
        coeffs_free(c);
        return -1;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        /* Pillow rounds with (int)(v + 0.5), truncating toward zero; the
         * clamp makes the difference for negative values irrelevant. */
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        if (xmax > ksize)
            xmax = ksize; /* cannot happen; keeps the buffer index provably safe */
        for (int x = 0; x < xmax; x++) {
            w[x] = filter((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = c->kk + (size_t)xx * ksize;
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                         : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        c->bounds[2 * xx + 0] = xmin;
        c->bounds[2 * xx + 1] = xmax;
    }
    free(w);
    return 0;
}

/* Pillow's clip8: the fixed-point sum shifted down, clamped to a byte. */
static uint8_t clip8(int64_t ss)
{
    if (ss < 0)
        return 0;
    ss >>= PRECISION_BITS;
    return ss > 255 ? 255 : (uint8_t)ss;
}

/* Resizes `in` to out_w x out_h with PIL's algorithm into `out` (fresh
 * pixels, owned by the caller). Returns 0, or -1 when out of memory. */
static int resize_u8(const image_u8 *in, int out_w, int out_h, int resample, image_u8 *out)
{
    const int C = in->channels;
    int need_h = out_w != in->width, need_v = out_h != in->height;
    resample_coeffs ch = {0}, cv = {0};
    uint8_t *tmp = NULL;
    int rc = -1;

    memset(out, 0, sizeof *out);
    if (!need_h && !need_v) {
        /* Same size: PIL copies the image. */
        size_t n = (size_t)in->width * in->height * C;
        out->pixels = malloc(n);
        if (!out->pixels)
            return -1;
        memcpy(out->pixels, in->pixels, n);
        out->width = in->width;
        out->height = in->height;
        out->channels = C;
        return 0;
    }

    /* The horizontal pass only produces the input rows the vertical pass
     * reads (Pillow's ybox_first..ybox_last), which changes nothing in the
     * values, only the work. */
    int row0 = 0, nrows = in->height;
    if (need_v) {
        if (coeffs_compute(in->height, out_h, resample, &cv) != 0)
            goto cleanup;
        row0 = cv.bounds[0];
        nrows = cv.bounds[2 * (out_h - 1)] + cv.bounds[2 * (out_h - 1) + 1] - row0;
    }

    const uint8_t *src = in->pixels;
    int src_w = in->width;
    if (need_h) {
        if (coeffs_compute(in->width, out_w, resample, &ch) != 0)
            goto cleanup;
        tmp = malloc((size_t)out_w * nrows * C);
        if (!tmp)
            goto cleanup;
        for (int y = 0; y < nrows; y++) {
            const uint8_t *srow = in->pixels + (size_t)(y + row0) * in->width * C;
            uint8_t *drow = tmp + (size_t)y * out_w * C;
            for (int xx = 0; xx < out_w; xx++) {
                int xmin = ch.bounds[2 * xx], xn = ch.bounds[2 * xx + 1];
                const int32_t *k = ch.kk + (size_t)xx * ch.ksize;
                for (int c = 0; c < C; c++) {
                    int64_t ss = 1 << (PRECISION_BITS - 1);
                    for (int x = 0; x < xn; x++)
                        ss += (int64_t)srow[(size_t)(x + xmin) * C + c] * k[x];
                    drow[(size_t)xx * C + c] = clip8(ss);
                }
            }
        }
        src = tmp;
        src_w = out_w;
    }

    out->pixels = malloc((size_t)out_w * out_h * C);
    if (!out->pixels)
        goto cleanup;
    if (need_v) {
        for (int yy = 0; yy < out_h; yy++) {
            /* Rows of `src` start at input row row0 when the horizontal pass
             * ran; otherwise src is the input itself (row0 is then added). */
            int ymin = cv.bounds[2 * yy] - (need_h ? row0 : 0), yn = cv.bounds[2 * yy + 1];
            const int32_t *k = cv.kk + (size_t)yy * cv.ksize;
            uint8_t *drow = out->pixels + (size_t)yy * out_w * C;
            for (int xc = 0; xc < out_w * C; xc++) {
                int64_t ss = 1 << (PRECISION_BITS - 1);
                for (int y = 0; y < yn; y++)
                    ss += (int64_t)src[(size_t)(y + ymin) * src_w * C + xc] * k[y];
                drow[xc] = clip8(ss);
            }
        }
    } else {
        memcpy(out->pixels, src, (size_t)out_w * out_h * C);
    }
    out->width = out_w;
    out->height = out_h;
    out->channels = C;
    rc = 0;

cleanup:
    if (rc != 0) {
        free(out->pixels);
        out->pixels = NULL;
    }
    free(tmp);
    coeffs_free(&ch);
    coeffs_free(&cv);
    return rc;
}

/* Copies the h x w window at (top, left) of `in`; pixels outside the image
 * are 0 (torchvision's and HF's center crops pad with zeros). */
static int crop_u8(const image_u8 *in, int top, int left, int h, int w, image_u8 *out)
{
    const int C = in->channels;
    memset(out, 0, sizeof *out);
    out->pixels = calloc((size_t)w * h * C, 1);
    if (!out->pixels)
        return -1;
    for (int y = 0; y < h; y++) {
        int sy = y + top;
        if (sy < 0 || sy >= in->height)
            continue;
        for (int x = 0; x < w; x++) {
            int sx = x + left;
            if (sx < 0 || sx >= in->width)
                continue;
            memcpy(out->pixels + ((size_t)y * w + x) * C,
                   in->pixels + ((size_t)sy * in->width + sx) * C, (size_t)C);
        }
    }
    out->width = w;
    out->height = h;
    out->channels = C;
    return 0;
}

/* Python's round() on a double: halves go to even (rint in the default
 * rounding mode does exactly that). */
static int round_half_even(double v)
{
    return (int)nearbyint(v);
}

/* Size that covers a target_h x target_w crop after the resize that pins
 * one side: torchvision's Resize(int) / HF's shortest_edge resize pin the
 * image's shorter side to s and give the other int(s * long / short).
 * With per-axis wishes sh (for height) and sw (for width) the intent is the
 * scale max(sh / H, sw / W): the axis with the larger ratio is pinned and
 * the other follows the same int() formula. For sh == sw this is exactly
 * the shorter side pinned to s (equal sides: both s). The result never
 * falls below the crop, so the crop needs no padding. */
static int cover_size(int W, int H, int sh, int sw, int target_h, int target_w,
                      int *new_w, int *new_h)
{
    double other;
    /* Compare sh/H and sw/W exactly in integers; ties pin the height, which
     * for sh == sw and W == H gives s x s either way. */
    if ((int64_t)sh * W >= (int64_t)sw * H) {
        other = (double)((int64_t)sh * W) / H;
        *new_h = sh;
    } else {
        other = (double)((int64_t)sw * H) / W;
        *new_w = sw;
    }
    /* A very elongated image would need a huge intermediate; checked in
     * double before the int conversion can overflow. */
    if (other > PREP_MAX_SIDE * 16.0)
        return -1;
    if ((int64_t)sh * W >= (int64_t)sw * H)
        *new_w = (int)other;
    else
        *new_h = (int)other;
    if (*new_h < target_h)
        *new_h = target_h;
    if (*new_w < target_w)
        *new_w = target_w;
    return 0;
}

/* Python's floor division by 2 for a possibly negative int. */
static int floor_half(int v)
{
    return v >= 0 ? v / 2 : -((-v + 1) / 2);
}

/* ---- preprocessor_config.json ---- */

/* HF CLIPImageProcessor's defaults, used for keys the file does not set. */
static const double CLIP_MEAN[3] = {0.48145466, 0.4578275, 0.40821073};
static const double CLIP_STD[3] = {0.26862954, 0.26130258, 0.27577711};

image_prep image_prep_default(void)
{
    image_prep p;
    memset(&p, 0, sizeof p);
    p.has_preprocessor = 0;
    p.resample = IMAGE_RESAMPLE_BILINEAR;
    p.do_resize = 1;
    p.do_center_crop = 0; /* the caller's fit decides */
    p.do_rescale = 1;
    p.do_normalize = 1;
    p.rescale_factor = 1.0 / 255.0;
    for (int c = 0; c < 3; c++) {
        p.mean[c] = 0.5;
        p.std[c] = 0.5;
    }
    return p;
}

static int json_get_bool(json_t *root, const char *key, int *dst, const char *path,
                         char *err, size_t errlen)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "%s: \"%s\" must be true or false", path, key);
        return -1;
    }
    *dst = json_is_true(v);
    return 0;
}

static int json_positive_int(json_t *v, int *dst)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t n = json_integer_value(v);
    if (n <= 0 || n > PREP_MAX_SIDE)
        return -1;
    *dst = (int)n;
    return 0;
}

/* `size` / `crop_size`: an int, or an object with height and width (and,
 * for size only, shortest_edge). */
static int json_get_size(json_t *root, const char *key, int allow_shortest, int *shortest,
                         int *height, int *width, const char *path, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        int n;
        if (json_positive_int(v, &n) != 0)
            goto bad;
        if (allow_shortest) {
            /* HF's get_size_dict(int, default_to_square=False). */
            *shortest = n;
            *height = *width = 0;
        } else {
            *height = *width = n;
        }
        return 0;
    }
    if (!json_is_object(v))
        goto bad;
    if (json_object_get(v, "longest_edge")) {
        snprintf(err, errlen, "%s: \"%s\".longest_edge is not supported", path, key);
        return -1;
    }
    json_t *se = json_object_get(v, "shortest_edge");
    json_t *hh = json_object_get(v, "height"), *ww = json_object_get(v, "width");
    if (se && allow_shortest) {
        if (json_positive_int(se, shortest) != 0) {
            snprintf(err, errlen, "%s: \"%s\".shortest_edge must be a positive integer", path, key);
            return -1;
        }
        *height = *width = 0;
        return 0;
    }
    if (hh && ww) {
        if (json_positive_int(hh, height) != 0 || json_positive_int(ww, width) != 0) {
            snprintf(err, errlen, "%s: \"%s\".height and .width must be positive integers",
                     path, key);
            return -1;
        }
        if (allow_shortest)
            *shortest = 0;
        return 0;
    }
bad:
    snprintf(err, errlen, "%s: \"%s\" must be a positive integer or an object with %s",
             path, key, allow_shortest ? "shortest_edge or height and width" : "height and width");
    return -1;
}

/* image_mean / image_std: a number or a list of 1 or 3 numbers. */
static int json_get_triple(json_t *root, const char *key, double dst[3], int positive,
                           const char *path, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, key);
    double vals[3];
    if (!v || json_is_null(v))
        return 0;
    if (json_is_number(v)) {
        vals[0] = vals[1] = vals[2] = json_number_value(v);
    } else if (json_is_array(v) && (json_array_size(v) == 1 || json_array_size(v) == 3)) {
        size_t n = json_array_size(v);
        for (size_t i = 0; i < 3; i++) {
            json_t *e = json_array_get(v, n == 1 ? 0 : i);
            if (!json_is_number(e)) {
                snprintf(err, errlen, "%s: \"%s\"[%zu] must be a number", path, key,
                         n == 1 ? (size_t)0 : i);
                return -1;
            }
            vals[i] = json_number_value(e);
        }
    } else {
        snprintf(err, errlen, "%s: \"%s\" must be a number or a list of 1 or 3 numbers",
                 path, key);
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        if (!isfinite(vals[i]) || (positive && vals[i] <= 0)) {
            snprintf(err, errlen, "%s: \"%s\" has an invalid value %g", path, key, vals[i]);
            return -1;
        }
        dst[i] = vals[i];
    }
    return 0;
}

int image_prep_load(const char *path, image_prep *out, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = NULL, *v;
    image_prep p;
    int rc = -1;

    memset(&p, 0, sizeof p);
    p.has_preprocessor = 1;
    p.resample = IMAGE_RESAMPLE_BICUBIC;
    p.do_resize = p.do_center_crop = p.do_rescale = p.do_normalize = 1;
    p.size_shortest_edge = 224;
    p.crop_height = p.crop_width = 224;
    p.rescale_factor = 1.0 / 255.0;
    memcpy(p.mean, CLIP_MEAN, sizeof p.mean);
    memcpy(p.std, CLIP_STD, sizeof p.std);

    root = json_load_file(path, 0, &jerr);
    if (!root) {
        snprintf(err, errlen, "%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
        goto cleanup;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "%s: the top level is not a JSON object", path);
        goto cleanup;
    }
    if (json_get_bool(root, "do_resize", &p.do_resize, path, err, errlen) ||
        json_get_bool(root, "do_center_crop", &p.do_center_crop, path, err, errlen) ||
        json_get_bool(root, "do_rescale", &p.do_rescale, path, err, errlen) ||
        json_get_bool(root, "do_normalize", &p.do_normalize, path, err, errlen))
        goto cleanup;

    v = json_object_get(root, "resample");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v)) {
            snprintf(err, errlen, "%s: \"resample\" must be an integer (2 bilinear, 3 bicubic)", path);
            goto cleanup;
        }
        json_int_t r = json_integer_value(v);
        if (r != IMAGE_RESAMPLE_BILINEAR && r != IMAGE_RESAMPLE_BICUBIC) {
            snprintf(err, errlen, "%s: \"resample\" %lld is not supported (2 bilinear, 3 bicubic)",
                     path, (long long)r);
            goto cleanup;
        }
        p.resample = (int)r;
    }

    if (json_get_size(root, "size", 1, &p.size_shortest_edge, &p.size_height, &p.size_width,
                      path, err, errlen) ||
        json_get_size(root, "crop_size", 0, NULL, &p.crop_height, &p.crop_width,
                      path, err, errlen))
        goto cleanup;

    v = json_object_get(root, "rescale_factor");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v))) {
            snprintf(err, errlen, "%s: \"rescale_factor\" must be a positive number", path);
            goto cleanup;
        }
        p.rescale_factor = json_number_value(v);
    }
    if (json_get_triple(root, "image_mean", p.mean, 0, path, err, errlen) ||
        json_get_triple(root, "image_std", p.std, 1, path, err, errlen))
        goto cleanup;

    *out = p;
    rc = 0;

cleanup:
    json_decref(root);
    return rc;
}

/* ---- image_prepare ---- */

/* Resizes *cur to w x h when it differs, replacing *cur (freeing it when
 * owned). */
static int step_resize(image_u8 *cur, int *owned, int w, int h, int resample)
{
    image_u8 next;
    if (cur->width == w && cur->height == h)
        return 0; /* torchvision and PIL leave it as it is */
    if (resize_u8(cur, w, h, resample, &next) != 0)
        return -1;
    if (*owned)
        image_free(cur);
    *cur = next;
    *owned = 1;
    return 0;
}

static int step_crop(image_u8 *cur, int *owned, int top, int left, int h, int w)
{
    image_u8 next;
    if (top == 0 && left == 0 && cur->width == w && cur->height == h)
        return 0;
    if (crop_u8(cur, top, left, h, w, &next) != 0)
        return -1;
    if (*owned)
        image_free(cur);
    *cur = next;
    *owned = 1;
    return 0;
}

/* A size scaled by requested / reference, rounded half to even. */
static int scaled_side(int size, int requested, int reference)
{
    if (reference <= 0)
        return size;
    double v = (double)size * requested / reference;
    if (v > PREP_MAX_SIDE * 16.0)
        v = PREP_MAX_SIDE * 16.0; /* refused later as too large */
    int r = round_half_even(v);
    return r < 1 ? 1 : r;
}

int image_prepare(const image_u8 *img, int out_h, int out_w, int fit,
                  const image_prep *prep, float *out, char *err, size_t errlen)
{
    image_u8 cur;
    int owned = 0, rc = -1;
    image_prep def = image_prep_default();

    if (!prep)
        prep = &def;
    if (!img || !img->pixels || img->width <= 0 || img->height <= 0 ||
        (img->channels != 1 && img->channels != 3)) {
        snprintf(err, errlen, "image_prepare: no valid image");
        return -1;
    }
    if (out_h <= 0 || out_w <= 0 || out_h > PREP_MAX_SIDE || out_w > PREP_MAX_SIDE) {
        snprintf(err, errlen, "image_prepare: output size %dx%d out of range (1..%d)",
                 out_w, out_h, PREP_MAX_SIDE);
        return -1;
    }
    if ((int64_t)out_h * out_w > PREP_MAX_RESIZE_PIXELS) {
        snprintf(err, errlen, "image_prepare: output size %dx%d is too large", out_w, out_h);
        return -1;
    }
    if (fit != IMAGE_FIT_RESIZE && fit != IMAGE_FIT_CROP) {
        snprintf(err, errlen, "image_prepare: unknown fit %d", fit);
        return -1;
    }
    if (prep->resample != IMAGE_RESAMPLE_BILINEAR && prep->resample != IMAGE_RESAMPLE_BICUBIC) {
        snprintf(err, errlen, "image_prepare: resample %d is not supported (2 or 3)",
                 prep->resample);
        return -1;
    }
    cur = *img;

    if (!prep->has_preprocessor) {
        if (fit == IMAGE_FIT_RESIZE) {
            /* torchvision Resize((h, w)) on a PIL image. */
            if (step_resize(&cur, &owned, out_w, out_h, prep->resample) != 0)
                goto oom;
        } else {
            /* The official ImageTransform without its randomness:
             * Resize(round(1.1 * r)) then CenterCrop(r), generalized to
             * h x w by cover_size. */
            int sh = round_half_even(1.1 * out_h), sw = round_half_even(1.1 * out_w);
            int nw, nh;
            if (cover_size(cur.width, cur.height, sh, sw, out_h, out_w, &nw, &nh) != 0 ||
                (int64_t)nw * nh > PREP_MAX_RESIZE_PIXELS) {
                snprintf(err, errlen, "image_prepare: a %dx%d image is too elongated to "
                         "cover %dx%d", cur.width, cur.height, out_w, out_h);
                goto cleanup;
            }
            if (step_resize(&cur, &owned, nw, nh, prep->resample) != 0)
                goto oom;
            /* torchvision CenterCrop: int(round((H - h) / 2.0)). */
            int top = round_half_even((cur.height - out_h) / 2.0);
            int left = round_half_even((cur.width - out_w) / 2.0);
            if (step_crop(&cur, &owned, top, left, out_h, out_w) != 0)
                goto oom;
        }
    } else {
        /* HF CLIPImageProcessor: resize, center_crop, rescale, normalize,
         * with the requested h x w in place of crop_size (and size scaled
         * by the same ratio). `fit` does not apply: the file rules. */
        int crop_h = prep->crop_height > 0 ? prep->crop_height : out_h;
        int crop_w = prep->crop_width > 0 ? prep->crop_width : out_w;
        if (prep->do_resize) {
            int nw, nh;
            if (!prep->do_center_crop) {
                /* Without a crop only a resize to h x w yields the model's
                 * input size; `size` is then the resolution itself. */
                nw = out_w;
                nh = out_h;
            } else if (prep->size_shortest_edge > 0) {
                int sh = scaled_side(prep->size_shortest_edge, out_h, crop_h);
                int sw = scaled_side(prep->size_shortest_edge, out_w, crop_w);
                if (cover_size(cur.width, cur.height, sh, sw, out_h, out_w, &nw, &nh) != 0) {
                    snprintf(err, errlen, "image_prepare: a %dx%d image is too elongated to "
                             "cover %dx%d", cur.width, cur.height, out_w, out_h);
                    goto cleanup;
                }
            } else if (prep->size_height > 0 && prep->size_width > 0) {
                nh = scaled_side(prep->size_height, out_h, crop_h);
                nw = scaled_side(prep->size_width, out_w, crop_w);
            } else {
                nw = out_w;
                nh = out_h;
            }
            if ((int64_t)nw * nh > PREP_MAX_RESIZE_PIXELS) {
                snprintf(err, errlen, "image_prepare: resize target %dx%d is too large", nw, nh);
                goto cleanup;
            }
            if (step_resize(&cur, &owned, nw, nh, prep->resample) != 0)
                goto oom;
        }
        if (prep->do_center_crop) {
            /* HF center_crop: top = (H - h) // 2, zero padding when smaller. */
            int top = floor_half(cur.height - out_h), left = floor_half(cur.width - out_w);
            if (step_crop(&cur, &owned, top, left, out_h, out_w) != 0)
                goto oom;
        }
        if (cur.width != out_w || cur.height != out_h) {
            snprintf(err, errlen,
                     "image_prepare: preprocessor without resize or crop leaves a %dx%d image, "
                     "the model needs %dx%d", cur.width, cur.height, out_w, out_h);
            goto cleanup;
        }
    }

    /* ToTensor + Normalize. torchvision divides the byte by 255 in float32,
     * which for every byte equals the double product v * (1/255) rounded
     * to float (HF's rescale: float64 multiply, then float32). The
     * normalization is float32 arithmetic with float32 mean and std, as
     * both torch and numpy do it. */
    {
        const int C = cur.channels;
        const size_t plane = (size_t)out_h * out_w;
        int do_rescale = prep->has_preprocessor ? prep->do_rescale : 1;
        int do_normalize = prep->has_preprocessor ? prep->do_normalize : 1;
        for (int c = 0; c < C; c++) {
            float mean = (float)prep->mean[c], std = (float)prep->std[c];
            float *dst = out + (size_t)c * plane;
            for (size_t i = 0; i < plane; i++) {
                uint8_t v = cur.pixels[i * C + c];
                float x = do_rescale ? (float)(v * prep->rescale_factor) : (float)v;
                if (do_normalize)
                    x = (x - mean) / std;
                dst[i] = x;
            }
        }
    }
    rc = 0;
    goto cleanup;

oom:
    snprintf(err, errlen, "image_prepare: out of memory at %dx%d", out_w, out_h);
cleanup:
    if (owned)
        image_free(&cur);
    return rc;
}
