/* image_decode.c: JPEG/PNG decoding (see image.h).
 *
 * Owns: the header probe and the limits checked before any pixel is decoded,
 * the libpng and libjpeg-turbo decoders (both report errors by longjmp, so
 * every decoder keeps its state in a heap context that survives the jump),
 * and the conversion to PIL's "RGB" or "L". The resampler is
 * image_resample.c, the preparation of the model's input image_prep.c.
 *
 * Reference behaviour is what the model saw at training time: torchvision
 * transforms on PIL images (Pillow 9.4, libjpeg-turbo). The one deliberate
 * difference: 16-bit grayscale PNGs keep their high byte here, where Pillow
 * 9.4 opens them as mode "I" and clips every value above 255 to white. */
#include "image.h"

#include <stdio.h> /* before jpeglib.h, which uses FILE */
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

image_limits image_limits_default(void) {
    image_limits l;
    l.max_width = 16384;
    l.max_height = 16384;
    l.max_pixels = 40000000; /* 40 MP: 120 MB of RGB once decoded */
    return l;
}

/* ---- format sniffing and header probe ---- */

static const uint8_t PNG_SIGNATURE[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

int image_format(const uint8_t *data, size_t len) {
    if (!data) return IMAGE_FORMAT_UNKNOWN;
    if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return IMAGE_FORMAT_JPEG;
    if (len >= 8 && memcmp(data, PNG_SIGNATURE, 8) == 0) return IMAGE_FORMAT_PNG;
    return IMAGE_FORMAT_UNKNOWN;
}

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static unsigned be16(const uint8_t *p) { return ((unsigned)p[0] << 8) | p[1]; }

/* PNG: the IHDR chunk must come first, right after the signature. */
static int probe_png(const uint8_t *data, size_t len, int64_t *w, int64_t *h, char *err, size_t errlen) {
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
        snprintf(err, errlen, "PNG header gives an invalid size %lldx%lld", (long long)*w, (long long)*h);
        return IMAGE_ERR_CORRUPT;
    }
    return IMAGE_OK;
}

/* JPEG: walks the marker segments up to the first frame header (SOFn). Bytes
 * that are not a marker are skipped, as libjpeg and PIL skip them. */
static int probe_jpeg(const uint8_t *data, size_t len, int64_t *w, int64_t *h, char *err, size_t errlen) {
    size_t pos = 2; /* after SOI */
    for (;;) {
        while (pos < len && data[pos] != 0xFF) pos++;
        while (pos < len && data[pos] == 0xFF) pos++;
        if (pos >= len) break;
        unsigned m = data[pos++];
        /* Standalone markers carry no length. */
        if (m == 0x00 || m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) continue;
        if (m == 0xD9 || m == 0xDA) {
            snprintf(err, errlen, "JPEG has no frame header before its %s marker",
                     m == 0xD9 ? "end-of-image" : "start-of-scan");
            return IMAGE_ERR_CORRUPT;
        }
        if (len - pos < 2) break;
        size_t seglen = be16(data + pos);
        if (seglen < 2) {
            snprintf(err, errlen, "JPEG marker 0x%02X has an invalid length %zu", m, seglen);
            return IMAGE_ERR_CORRUPT;
        }
        /* SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC). */
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (seglen < 8 || len - pos < 7) break;
            *h = be16(data + pos + 3);
            *w = be16(data + pos + 5);
            return IMAGE_OK;
        }
        if (len - pos < seglen) break;
        pos += seglen;
    }
    snprintf(err, errlen, "JPEG is truncated before its frame header (%zu bytes)", len);
    return IMAGE_ERR_CORRUPT;
}

/* Dimensions from the header, as int64 so that the limit check never sees a
 * wrapped value. */
static int probe_dims(const uint8_t *data, size_t len, int64_t *w, int64_t *h, char *err, size_t errlen) {
    int rc;
    *w = *h = 0;
    switch (image_format(data, len)) {
    case IMAGE_FORMAT_PNG: rc = probe_png(data, len, w, h, err, errlen); break;
    case IMAGE_FORMAT_JPEG: rc = probe_jpeg(data, len, w, h, err, errlen); break;
    default:
        snprintf(err, errlen, "not a JPEG or PNG file (%zu bytes, unknown magic)", len);
        return IMAGE_ERR_FORMAT;
    }
    if (rc != IMAGE_OK) return rc;
    if (*w == 0 || *h == 0) {
        snprintf(err, errlen, "image header gives a zero size %lldx%lld", (long long)*w, (long long)*h);
        return IMAGE_ERR_CORRUPT;
    }
    return IMAGE_OK;
}

int image_probe(const uint8_t *data, size_t len, int *width, int *height, char *err, size_t errlen) {
    int64_t w, h;
    if (probe_dims(data, len, &w, &h, err, errlen) != IMAGE_OK) return -1;
    *width = (int)w; /* probe_dims bounds both by INT32_MAX */
    *height = (int)h;
    return 0;
}

static int check_limits(int64_t w, int64_t h, const image_limits *limits, char *err, size_t errlen) {
    if (!limits) return IMAGE_OK;
    if (limits->max_width > 0 && w > limits->max_width) {
        snprintf(err, errlen, "image width %lld is over the limit %d", (long long)w, limits->max_width);
        return IMAGE_ERR_TOO_LARGE;
    }
    if (limits->max_height > 0 && h > limits->max_height) {
        snprintf(err, errlen, "image height %lld is over the limit %d", (long long)h, limits->max_height);
        return IMAGE_ERR_TOO_LARGE;
    }
    if (limits->max_pixels > 0 && w * h > limits->max_pixels) {
        snprintf(err, errlen, "image of %lldx%lld = %lld pixels is over the limit %lld", (long long)w,
                 (long long)h, (long long)(w * h), (long long)limits->max_pixels);
        return IMAGE_ERR_TOO_LARGE;
    }
    return IMAGE_OK;
}

/* ---- pixel conversions (PIL's Convert.c semantics) ---- */

/* PIL's luma for "RGB" -> "L": L24(rgb) >> 16, ITU-R 601-2 weights. */
static uint8_t luma(unsigned r, unsigned g, unsigned b) {
    return (uint8_t)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

/* One row of gray or gray+alpha (src_ch 1 or 2, 8-bit) into 1 or 3 channels:
 * alpha is dropped, as PIL's convert("RGB"/"L") drops it; `scale` maps
 * 1/2/4-bit gray to 0..255 as PIL's "1", "L;2", "L;4" unpackers do. */
static void row_from_gray(uint8_t *dst, const uint8_t *src, int w, int src_ch, unsigned scale, int channels) {
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
static void row_from_rgb(uint8_t *dst, const uint8_t *src, int w, int src_ch, int channels) {
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
    uint8_t *buf;    /* one decoded row, or the whole image when interlaced */
    png_bytep *rows; /* row pointers into buf when interlaced */
    uint8_t *pixels; /* the output, handed to the caller on success */
    uint8_t palette[256 * 3];
    char msg[200];
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    /* A daemon must not write libpng's chatter to stderr; warnings (bad
     * ancillary CRCs, unknown chunks) do not stop PIL either. */
    (void)png;
    (void)msg;
}

static void png_read_mem(png_structp png, png_bytep dst, png_size_t n) {
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->len + c->tail_len - c->pos) png_error(png, "file is truncated");
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
static uint32_t png_crc32(const uint8_t *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
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
static void png_find_tail(png_ctx *c) {
    static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
    size_t pos = 8, idat_start = 0, idat_end = 0;
    for (;;) {
        if (c->len - pos < 8) break;
        uint32_t n = be32(c->data + pos);
        if (n > INT32_MAX || n > c->len - pos - 8) break;
        size_t data_end = pos + 8 + n;
        if (memcmp(c->data + pos + 4, "IDAT", 4) == 0) {
            idat_start = pos;
            idat_end = data_end;
        } else {
            idat_end = 0; /* only a cut right after an IDAT matters */
        }
        if (c->len - data_end < 4) break;
        pos = data_end + 4;
    }
    if (idat_end == 0 || c->len >= idat_end + 4 + sizeof iend) return;
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
static void png_convert_row(png_ctx *c, uint8_t *dst, const uint8_t *src, int w, int color_type, int src_ch,
                            unsigned gray_scale, int channels) {
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
static void png_decode_body(png_ctx *c, int64_t w64, int64_t h64, int channels, image_u8 *out) {
    png_uint_32 pw, ph;
    int bit_depth, color_type, interlace, passes = 1;

    png_set_read_fn(c->png, c, png_read_mem);
    png_set_chunk_malloc_max(c->png, PNG_MAX_CHUNK_BYTES);
    png_read_info(c->png, c->info);
    png_get_IHDR(c->png, c->info, &pw, &ph, &bit_depth, &color_type, &interlace, NULL, NULL);
    if ((int64_t)pw != w64 || (int64_t)ph != h64) png_error(c->png, "IHDR does not match the probed size");
    int w = (int)pw, h = (int)ph;

    /* PIL keeps the high byte of 16-bit samples ("RGB;16B" etc.). */
    if (bit_depth == 16) png_set_strip_16(c->png);
    /* 1/2/4-bit samples to one byte each, values unscaled (palette indices
     * stay indices; gray is scaled in png_convert_row). No png_set_expand:
     * it would turn tRNS into an alpha channel, and PIL ignores tRNS here. */
    if (bit_depth < 8) png_set_packing(c->png);
    if (interlace != PNG_INTERLACE_NONE) passes = png_set_interlace_handling(c->png);
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
        if (!png_get_PLTE(c->png, c->info, &plte, &nplte)) png_error(c->png, "palette image without PLTE");
        for (int i = 0; i < nplte && i < 256; i++) {
            c->palette[3 * i + 0] = plte[i].red;
            c->palette[3 * i + 1] = plte[i].green;
            c->palette[3 * i + 2] = plte[i].blue;
        }
    }

    c->pixels = malloc((size_t)w * (size_t)h * (size_t)channels);
    if (!c->pixels) png_error(c->png, "out of memory for the decoded image");

    if (passes > 1) {
        /* Adam7 needs the whole image before any row is final. */
        c->buf = malloc(rowbytes * (size_t)h);
        c->rows = malloc(sizeof(png_bytep) * (size_t)h);
        if (!c->buf || !c->rows) png_error(c->png, "out of memory for the interlaced image");
        for (int y = 0; y < h; y++) c->rows[y] = c->buf + rowbytes * (size_t)y;
        png_read_image(c->png, c->rows);
        for (int y = 0; y < h; y++)
            png_convert_row(c, c->pixels + (size_t)y * w * channels, c->rows[y], w, color_type, src_ch,
                            gray_scale, channels);
    } else {
        c->buf = malloc(rowbytes);
        if (!c->buf) png_error(c->png, "out of memory for a row");
        for (int y = 0; y < h; y++) {
            png_read_row(c->png, c->buf, NULL);
            png_convert_row(c, c->pixels + (size_t)y * w * channels, c->buf, w, color_type, src_ch,
                            gray_scale, channels);
        }
    }
    /* Chunks after the last IDAT are not read: the pixels are complete, and
     * PIL does not insist on them either. */
    out->width = w;
    out->height = h;
}

static int decode_png(const uint8_t *data, size_t len, int64_t w, int64_t h, int channels, image_u8 *out,
                      char *err, size_t errlen) {
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
    if (c->png) c->info = png_create_info_struct(c->png);
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
    int created;   /* jpeg_create_decompress succeeded */
    int finishing; /* every row is in: running out of data now is tolerated */
    uint8_t *row;
    uint8_t *pixels;
    char msg[JMSG_LENGTH_MAX + 64];
} jpeg_ctx;

/* cinfo is the first member, so the libjpeg pointer is the context. */
static jpeg_ctx *jpeg_ctx_of(j_common_ptr cinfo) { return (jpeg_ctx *)(void *)cinfo; }

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_ctx *c = jpeg_ctx_of(cinfo);
    (*cinfo->err->format_message)(cinfo, c->msg);
    longjmp(c->jmp, 1);
}

/* Warnings are ignored as PIL ignores them, except running out of data
 * before the last row: PIL refuses such a file ("image file is truncated"),
 * while libjpeg would fill the rest with gray. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    jpeg_ctx *c = jpeg_ctx_of(cinfo);
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF && !c->finishing) {
        snprintf(c->msg, sizeof c->msg, "file is truncated");
        longjmp(c->jmp, 1);
    }
}

static void jpeg_on_output(j_common_ptr cinfo) { (void)cinfo; /* never print to stderr */ }

static void jpeg_on_progress(j_common_ptr cinfo) {
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
static uint8_t cmyk_channel(unsigned stored_c, unsigned nk) {
    unsigned c = 255u - stored_c;
    unsigned t = c * nk + 128u;
    unsigned m = ((t >> 8) + t) >> 8;
    return (uint8_t)(nk > m ? nk - m : 0);
}

static void jpeg_decode_body(jpeg_ctx *c, const uint8_t *data, size_t len, int64_t w64, int64_t h64,
                             int channels, image_u8 *out) {
    struct jpeg_decompress_struct *ci = &c->cinfo;
    /* Set first: the context is zeroed, and jpeg_destroy_decompress copes
     * with a create that failed half way (its memory manager is NULL). */
    c->created = 1;
    jpeg_create_decompress(ci);
    ci->progress = &c->progress;
    jpeg_mem_src(ci, data, (unsigned long)len);
    jpeg_read_header(ci, TRUE);
    if ((int64_t)ci->image_width != w64 || (int64_t)ci->image_height != h64) {
        snprintf(c->msg, sizeof c->msg, "frame size %ux%u does not match the probed size", ci->image_width,
                 ci->image_height);
        longjmp(c->jmp, 1);
    }
    int ncomp = ci->num_components;
    if (ncomp == 1) ci->out_color_space = JCS_GRAYSCALE;
    else if (ncomp == 3) ci->out_color_space = JCS_RGB;
    else if (ncomp == 4) ci->out_color_space = JCS_CMYK; /* YCCK is turned into CMYK by libjpeg */
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
                uint8_t r = cmyk_channel(p[0], nk), g = cmyk_channel(p[1], nk), b = cmyk_channel(p[2], nk);
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

static int decode_jpeg(const uint8_t *data, size_t len, int64_t w, int64_t h, int channels, image_u8 *out,
                       char *err, size_t errlen) {
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
        rc = (c->jerr.msg_code == JERR_OUT_OF_MEMORY || strstr(c->msg, "out of memory")) ? IMAGE_ERR_MEMORY
                                                                                         : IMAGE_ERR_CORRUPT;
        goto cleanup;
    }
    jpeg_decode_body(c, data, len, w, h, channels, out);
    out->channels = channels;
    out->pixels = c->pixels;
    c->pixels = NULL;
    rc = IMAGE_OK;

cleanup:
    if (c->created) jpeg_destroy_decompress(&c->cinfo);
    free(c->row);
    free(c->pixels);
    free(c);
    return rc;
}

int image_decode(const uint8_t *data, size_t len, int channels, const image_limits *limits, image_u8 *out,
                 char *err, size_t errlen) {
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
    if (rc != IMAGE_OK) return rc;
    /* The limits are checked from the header alone: nothing is allocated
     * for an image that is refused here. */
    rc = check_limits(w, h, limits, err, errlen);
    if (rc != IMAGE_OK) return rc;
    /* Without limits, the output size must still fit in memory arithmetic
     * (it always does with 64-bit size_t; this is for 32-bit hosts). */
    if ((uint64_t)w * (uint64_t)h > SIZE_MAX / 4) {
        snprintf(err, errlen, "image of %lldx%lld pixels cannot be addressed", (long long)w, (long long)h);
        return IMAGE_ERR_TOO_LARGE;
    }
    if (image_format(data, len) == IMAGE_FORMAT_JPEG) {
        if (w > JPEG_MAX_DIM || h > JPEG_MAX_DIM) {
            snprintf(err, errlen, "JPEG size %lldx%lld is over libjpeg's maximum %d", (long long)w,
                     (long long)h, JPEG_MAX_DIM);
            return IMAGE_ERR_TOO_LARGE;
        }
        return decode_jpeg(data, len, w, h, channels, out, err, errlen);
    }
    return decode_png(data, len, w, h, channels, out, err, errlen);
}

void image_free(image_u8 *img) {
    if (!img) return;
    free(img->pixels);
    img->pixels = NULL;
    img->width = img->height = img->channels = 0;
}
