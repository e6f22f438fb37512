/* test_image.c: decoding, limits and preparation of images (engine/image_*.c)
 * against what PIL 9.4 and torchvision produce.
 *
 * Every expected value lives in tests/fixtures/images, written by
 * tools/make_image_fixtures.py from PIL / torchvision; the manifests there
 * (decode_cases.txt, truncation_cases.txt, prepare_cases.txt) list the
 * cases. Hostile inputs (huge or zero headers, garbage, cuts, flipped
 * bytes) are built here in memory. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "image_resample.h"
#include "npy.h"
#include "small_file.h"
#include "check_run.h"

#define IMAGES FIXTURE_DIR "/images/"

static void path_of(char *dst, size_t n, const char *name) { snprintf(dst, n, "%s%s", IMAGES, name); }

/* Whole fixture file; the caller frees it. */
static uint8_t *slurp(const char *name, size_t *len) {
    char path[1024];
    path_of(path, sizeof path, name);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open fixture %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    ck_assert(buf != NULL);
    ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static npy_array load_expected(const char *name) {
    char path[1024], err[512];
    npy_array a;
    path_of(path, sizeof path, name);
    ck_assert_msg(npy_load(path, &a, err, sizeof err) == 0, "%s", err);
    return a;
}

/* Lines of a manifest, without comments; returns the count. */
static int read_manifest(const char *name, char lines[][256], int max) {
    char path[1024], buf[256];
    int n = 0;
    path_of(path, sizeof path, name);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open manifest %s", path);
    while (n < max && fgets(buf, sizeof buf, f)) {
        if (buf[0] == '#' || buf[0] == '\n') continue;
        buf[strcspn(buf, "\n")] = '\0';
        snprintf(lines[n++], 256, "%s", buf);
    }
    fclose(f);
    return n;
}

/* Decodes `data` and checks it against expected pixels [h, w, c] or [h, w]. */
static void check_decode(const uint8_t *data, size_t len, int channels, const npy_array *exp,
                         const char *what) {
    image_u8 img;
    char err[512] = "";
    int rc = image_decode(data, len, channels, NULL, &img, err, sizeof err);
    ck_assert_msg(rc == IMAGE_OK, "%s (%d channels): rc %d: %s", what, channels, rc, err);
    ck_assert_int_eq(img.channels, channels);
    ck_assert_msg(exp->ndim == (channels == 3 ? 3 : 2), "%s: expected array rank", what);
    ck_assert_msg(img.height == exp->shape[0] && img.width == exp->shape[1], "%s: size %dx%d, PIL %lldx%lld",
                  what, img.width, img.height, (long long)exp->shape[1], (long long)exp->shape[0]);
    int64_t n = (int64_t)img.width * img.height * channels;
    ck_assert_int_eq(n, exp->count);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        if ((float)img.pixels[i] != exp->data[i]) {
            if (first < 0) first = i;
            bad++;
        }
    }
    ck_assert_msg(bad == 0,
                  "%s (%d channels): %lld of %lld values differ from PIL, first at %lld "
                  "(%u vs %g)",
                  what, channels, (long long)bad, (long long)n, (long long)first,
                  first >= 0 ? img.pixels[first] : 0, first >= 0 ? exp->data[first] : 0.0);
    image_free(&img);
    ck_assert(img.pixels == NULL);
}

/* ---- decoding ---- */

START_TEST(test_format_sniffing) {
    static const uint8_t jpg[] = {0xFF, 0xD8, 0xFF, 0xE0};
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    static const uint8_t gif[] = {'G', 'I', 'F', '8', '9', 'a'};
    ck_assert_int_eq(image_format(jpg, sizeof jpg), IMAGE_FORMAT_JPEG);
    ck_assert_int_eq(image_format(png, sizeof png), IMAGE_FORMAT_PNG);
    ck_assert_int_eq(image_format(png, 7), IMAGE_FORMAT_UNKNOWN);
    ck_assert_int_eq(image_format(gif, sizeof gif), IMAGE_FORMAT_UNKNOWN);
    ck_assert_int_eq(image_format(NULL, 0), IMAGE_FORMAT_UNKNOWN);
}
END_TEST

/* Every file of decode_cases.txt, as "RGB" and as "L". */
START_TEST(test_decode_matches_pil) {
    static char lines[64][256];
    int n = read_manifest("decode_cases.txt", lines, 64);
    /* gray, gray+alpha, RGB(A), 1/4-bit, palettes (+tRNS), 16-bit, Adam7,
     * JPEG 4:2:0 / 4:4:4 / progressive / gray / CMYK. */
    ck_assert_int_ge(n, 22);
    for (int i = 0; i < n; i++) {
        char file[128], rgb[128], lum[128], err[512];
        ck_assert_int_eq(sscanf(lines[i], "%127s %127s %127s", file, rgb, lum), 3);
        size_t len;
        uint8_t *data = slurp(file, &len);
        npy_array e3 = load_expected(rgb), e1 = load_expected(lum);
        int w, h;
        ck_assert_msg(image_probe(data, len, &w, &h, err, sizeof err) == 0, "%s: %s", file, err);
        ck_assert_msg(w == e3.shape[1] && h == e3.shape[0], "%s: probe %dx%d", file, w, h);
        check_decode(data, len, 3, &e3, file);
        check_decode(data, len, 1, &e1, file);
        npy_free(&e3);
        npy_free(&e1);
        free(data);
    }
}
END_TEST

/* Cut files: refused wherever PIL refuses them; accepted, with the full
 * file's pixels, once the image data is complete. */
START_TEST(test_truncated_files) {
    static char lines[16][256];
    int n = read_manifest("truncation_cases.txt", lines, 16);
    ck_assert_int_ge(n, 4);
    for (int i = 0; i < n; i++) {
        char file[128], err[512];
        long pil_min, need;
        ck_assert_int_eq(sscanf(lines[i], "%127s %ld %ld", file, &pil_min, &need), 3);
        ck_assert_int_ge(need, pil_min);
        size_t len;
        uint8_t *data = slurp(file, &len);
        image_u8 full, img;
        ck_assert_int_eq(image_decode(data, len, 3, NULL, &full, err, sizeof err), IMAGE_OK);
        for (size_t cut = 0; cut < len; cut++) {
            /* A private copy, so that ASan and valgrind see any read past
             * the cut. */
            uint8_t *part = malloc(cut > 0 ? cut : 1);
            memcpy(part, data, cut);
            int rc = image_decode(part, cut, 3, NULL, &img, err, sizeof err);
            if ((long)cut < need) {
                ck_assert_msg(rc != IMAGE_OK, "%s cut at %zu of %zu was accepted", file, cut, len);
                ck_assert_msg(img.pixels == NULL, "%s: pixels left after a refusal", file);
                ck_assert_msg(err[0] != '\0', "%s: refusal without a message", file);
                if (cut >= 64)
                    ck_assert_msg(rc == IMAGE_ERR_CORRUPT, "%s cut at %zu: rc %d (%s)", file, cut, rc, err);
            } else {
                ck_assert_msg(rc == IMAGE_OK, "%s cut at %zu (data ends at %ld): %s", file, cut, need, err);
                ck_assert_int_eq(memcmp(img.pixels, full.pixels, (size_t)full.width * full.height * 3), 0);
                image_free(&img);
            }
            free(part);
        }
        image_free(&full);
        free(data);
    }
}
END_TEST

START_TEST(test_truncation_messages) {
    size_t len;
    char err[512];
    image_u8 img;
    uint8_t *png = slurp("rgb8.png", &len);
    ck_assert_int_eq(image_decode(png, len / 2, 3, NULL, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
    ck_assert_msg(strstr(err, "PNG") && strstr(err, "truncated"), "message: %s", err);
    free(png);
    uint8_t *jpg = slurp("color420.jpg", &len);
    ck_assert_int_eq(image_decode(jpg, len / 2, 3, NULL, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
    ck_assert_msg(strstr(err, "JPEG") && strstr(err, "truncated"), "message: %s", err);
    free(jpg);
}
END_TEST

START_TEST(test_garbage_refused) {
    uint8_t buf[600];
    char err[512];
    image_u8 img;
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof buf; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
    buf[0] = 'x';
    ck_assert_int_eq(image_decode(buf, sizeof buf, 3, NULL, &img, err, sizeof err), IMAGE_ERR_FORMAT);
    ck_assert_msg(strstr(err, "not a JPEG or PNG"), "message: %s", err);
    ck_assert_int_eq(image_decode(buf, 0, 3, NULL, &img, err, sizeof err), IMAGE_ERR_FORMAT);
    ck_assert_int_eq(image_decode(NULL, 0, 3, NULL, &img, err, sizeof err), IMAGE_ERR_FORMAT);

    /* Right magic, garbage after it. */
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(buf, png_sig, 8);
    ck_assert_int_eq(image_decode(buf, sizeof buf, 3, NULL, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
    ck_assert_ptr_null(img.pixels);
    buf[0] = 0xFF;
    buf[1] = 0xD8;
    buf[2] = 0xFF;
    int rc = image_decode(buf, sizeof buf, 3, NULL, &img, err, sizeof err);
    ck_assert_msg(rc == IMAGE_ERR_CORRUPT, "garbage JPEG: rc %d", rc);
    ck_assert_ptr_null(img.pixels);

    /* A valid IHDR followed by garbage where IDAT should be. */
    size_t len;
    uint8_t *png = slurp("rgb8.png", &len);
    for (size_t i = 45; i < len; i++) png[i] = (uint8_t)(i * 7);
    ck_assert_int_eq(image_decode(png, len, 3, NULL, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
    ck_assert_ptr_null(img.pixels);
    free(png);
}
END_TEST

/* Single flipped bytes anywhere: any outcome but a crash, a leak or a read
 * out of bounds (the point of running this under valgrind and ASan). */
START_TEST(test_flipped_bytes) {
    const char *files[] = {"rgb8.png", "interlaced_pal2.png", "color420.jpg", "progressive.jpg"};
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        size_t len;
        uint8_t *data = slurp(files[f], &len);
        size_t step = len > 1200 ? 3 : 1;
        for (size_t i = 0; i < len; i += step) {
            uint8_t *copy = malloc(len);
            memcpy(copy, data, len);
            copy[i] ^= (uint8_t)(0x5A + i);
            image_u8 img;
            char err[512];
            int rc = image_decode(copy, len, 3, NULL, &img, err, sizeof err);
            if (rc == IMAGE_OK) {
                ck_assert_ptr_nonnull(img.pixels);
                image_free(&img);
            } else {
                ck_assert_ptr_null(img.pixels);
            }
            free(copy);
        }
        free(data);
    }
}
END_TEST

/* A 33-byte PNG: signature and an IHDR claiming 100000 x 100000, no IDAT.
 * Refused as too large from the header alone: had anything been decoded,
 * the missing image data would have given IMAGE_ERR_CORRUPT instead. */
static size_t tiny_png(uint8_t *buf, uint32_t w, uint32_t h) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(buf, sig, 8);
    const uint8_t ihdr[] = {0,
                            0,
                            0,
                            13,
                            'I',
                            'H',
                            'D',
                            'R',
                            (uint8_t)(w >> 24),
                            (uint8_t)(w >> 16),
                            (uint8_t)(w >> 8),
                            (uint8_t)w,
                            (uint8_t)(h >> 24),
                            (uint8_t)(h >> 16),
                            (uint8_t)(h >> 8),
                            (uint8_t)h,
                            8,
                            2,
                            0,
                            0,
                            0,
                            0,
                            0,
                            0,
                            0};
    memcpy(buf + 8, ihdr, sizeof ihdr);
    return 8 + sizeof ihdr;
}

/* SOI, SOF0 for a 3-component w x h frame, EOI. */
static size_t tiny_jpeg(uint8_t *buf, unsigned w, unsigned h) {
    const uint8_t b[] = {0xFF,       0xD8,
                         0xFF,       0xC0,
                         0,          17,
                         8,          (uint8_t)(h >> 8),
                         (uint8_t)h, (uint8_t)(w >> 8),
                         (uint8_t)w, 3,
                         1,          0x22,
                         0,          2,
                         0x11,       1,
                         3,          0x11,
                         1,          0xFF,
                         0xD9};
    memcpy(buf, b, sizeof b);
    return sizeof b;
}

START_TEST(test_huge_header_refused) {
    uint8_t buf[64];
    char err[512];
    image_u8 img;
    int w, h;
    image_limits lim = image_limits_default();
    ck_assert_int_gt(lim.max_width, 0);
    ck_assert_int_gt(lim.max_pixels, 0);

    size_t n = tiny_png(buf, 100000, 100000);
    ck_assert_int_eq(image_probe(buf, n, &w, &h, err, sizeof err), 0);
    ck_assert_int_eq(w, 100000);
    ck_assert_int_eq(h, 100000);
    ck_assert_int_eq(image_decode(buf, n, 3, &lim, &img, err, sizeof err), IMAGE_ERR_TOO_LARGE);
    ck_assert_msg(strstr(err, "100000"), "message: %s", err);
    ck_assert_ptr_null(img.pixels);
    /* Only the pixel count over the limit: 10000 x 10000 passes width and
     * height checks, not max_pixels. */
    n = tiny_png(buf, 10000, 10000);
    ck_assert_int_eq(image_decode(buf, n, 3, &lim, &img, err, sizeof err), IMAGE_ERR_TOO_LARGE);
    ck_assert_msg(strstr(err, "pixels"), "message: %s", err);
    /* Within the limits, the same header goes on to decoding and fails
     * there: the refusals above did come from the header. */
    n = tiny_png(buf, 100, 100);
    ck_assert_int_eq(image_decode(buf, n, 3, &lim, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
    /* Sizes beyond the PNG spec's 2^31-1 are corrupt. */
    n = tiny_png(buf, 0x80000000u, 1);
    ck_assert_int_eq(image_decode(buf, n, 3, NULL, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
    ck_assert_int_eq(image_probe(buf, n, &w, &h, err, sizeof err), -1);

    n = tiny_jpeg(buf, 60000, 60000);
    ck_assert_int_eq(image_probe(buf, n, &w, &h, err, sizeof err), 0);
    ck_assert_int_eq(w, 60000);
    ck_assert_int_eq(h, 60000);
    ck_assert_int_eq(image_decode(buf, n, 3, &lim, &img, err, sizeof err), IMAGE_ERR_TOO_LARGE);
    ck_assert_ptr_null(img.pixels);
    /* Without limits, still over libjpeg's own maximum. */
    n = tiny_jpeg(buf, 65535, 16);
    ck_assert_int_eq(image_decode(buf, n, 3, NULL, &img, err, sizeof err), IMAGE_ERR_TOO_LARGE);
    n = tiny_jpeg(buf, 100, 100);
    ck_assert_int_eq(image_decode(buf, n, 3, &lim, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
}
END_TEST

START_TEST(test_limits_on_real_files) {
    size_t len;
    char err[512];
    image_u8 img;
    uint8_t *data = slurp("rgb8.png", &len); /* 14 x 11 */
    image_limits lim = {0, 0, 0};
    ck_assert_int_eq(image_decode(data, len, 3, &lim, &img, err, sizeof err), IMAGE_OK);
    image_free(&img);
    lim = (image_limits){14, 11, 154};
    ck_assert_int_eq(image_decode(data, len, 3, &lim, &img, err, sizeof err), IMAGE_OK);
    image_free(&img);
    lim = (image_limits){13, 0, 0};
    ck_assert_int_eq(image_decode(data, len, 3, &lim, &img, err, sizeof err), IMAGE_ERR_TOO_LARGE);
    ck_assert_msg(strstr(err, "width"), "message: %s", err);
    lim = (image_limits){0, 10, 0};
    ck_assert_int_eq(image_decode(data, len, 3, &lim, &img, err, sizeof err), IMAGE_ERR_TOO_LARGE);
    ck_assert_msg(strstr(err, "height"), "message: %s", err);
    lim = (image_limits){0, 0, 153};
    ck_assert_int_eq(image_decode(data, len, 3, &lim, &img, err, sizeof err), IMAGE_ERR_TOO_LARGE);
    free(data);

    data = slurp("color420.jpg", &len); /* 37 x 23 */
    lim = (image_limits){36, 0, 0};
    ck_assert_int_eq(image_decode(data, len, 3, &lim, &img, err, sizeof err), IMAGE_ERR_TOO_LARGE);
    lim = (image_limits){37, 23, 37 * 23};
    ck_assert_int_eq(image_decode(data, len, 1, &lim, &img, err, sizeof err), IMAGE_OK);
    image_free(&img);
    free(data);
}
END_TEST

START_TEST(test_zero_size_refused) {
    uint8_t buf[64];
    char err[512];
    image_u8 img;
    int w, h;
    size_t n = tiny_png(buf, 0, 10);
    ck_assert_int_eq(image_decode(buf, n, 3, NULL, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
    ck_assert_msg(strstr(err, "zero"), "message: %s", err);
    ck_assert_int_eq(image_probe(buf, n, &w, &h, err, sizeof err), -1);
    n = tiny_png(buf, 10, 0);
    ck_assert_int_eq(image_decode(buf, n, 3, NULL, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
    /* A JPEG frame of height 0 (a DNL marker would define it; neither PIL
     * nor libjpeg supports that). */
    n = tiny_jpeg(buf, 16, 0);
    ck_assert_int_eq(image_decode(buf, n, 3, NULL, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
    ck_assert_msg(strstr(err, "zero"), "message: %s", err);
    n = tiny_jpeg(buf, 0, 16);
    ck_assert_int_eq(image_probe(buf, n, &w, &h, err, sizeof err), -1);
    /* Headers cut short. */
    ck_assert_int_eq(image_decode(buf, 3, 3, NULL, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
    n = tiny_png(buf, 10, 10);
    ck_assert_int_eq(image_decode(buf, 20, 3, NULL, &img, err, sizeof err), IMAGE_ERR_CORRUPT);
}
END_TEST

START_TEST(test_bad_channel_count) {
    size_t len;
    char err[512];
    image_u8 img;
    uint8_t *data = slurp("rgb8.png", &len);
    ck_assert_int_ne(image_decode(data, len, 2, NULL, &img, err, sizeof err), IMAGE_OK);
    ck_assert_int_ne(image_decode(data, len, 4, NULL, &img, err, sizeof err), IMAGE_OK);
    ck_assert_ptr_null(img.pixels);
    free(data);
    image_free(NULL);
}
END_TEST

/* ---- preparation ---- */

START_TEST(test_prep_default) {
    image_prep p = image_prep_default();
    ck_assert_int_eq(p.has_preprocessor, 0);
    ck_assert_int_eq(p.resample, IMAGE_RESAMPLE_BILINEAR);
    for (int c = 0; c < 3; c++) {
        ck_assert(p.mean[c] == 0.5);
        ck_assert(p.std[c] == 0.5);
    }
    ck_assert(p.rescale_factor == 1.0 / 255.0);
    ck_assert_int_eq(p.do_rescale, 1);
    ck_assert_int_eq(p.do_normalize, 1);
}
END_TEST

/* Every case of prepare_cases.txt: torchvision's Resize / CenterCrop /
 * ToTensor / Normalize, or CLIPImageProcessor with a preprocessor file. */
START_TEST(test_prepare_matches_reference) {
    static char lines[64][256];
    int n = read_manifest("prepare_cases.txt", lines, 64);
    ck_assert_int_ge(n, 20);
    for (int i = 0; i < n; i++) {
        char name[64], src[64], fit[16], pp[64], err[512], file[128];
        int ch, h, w, resample;
        ck_assert_int_eq(
            sscanf(lines[i], "%63s %63s %d %15s %d %d %d %63s", name, src, &ch, fit, &h, &w, &resample, pp),
            8);
        image_prep prep = image_prep_default();
        if (strcmp(pp, "-") != 0) {
            char path[1024];
            path_of(path, sizeof path, pp);
            ck_assert_msg(image_prep_load(path, &prep, err, sizeof err) == 0, "%s: %s", name, err);
            ck_assert_int_eq(prep.has_preprocessor, 1);
        } else {
            prep.resample = resample;
        }
        size_t len;
        uint8_t *data = slurp(src, &len);
        image_u8 img;
        ck_assert_int_eq(image_decode(data, len, ch, NULL, &img, err, sizeof err), IMAGE_OK);
        snprintf(file, sizeof file, "prep_%s.npy", name);
        npy_array exp = load_expected(file);
        ck_assert_msg(exp.ndim == 3 && exp.shape[0] == ch && exp.shape[1] == h && exp.shape[2] == w,
                      "%s: reference shape", name);
        float *out = malloc(sizeof(float) * (size_t)exp.count);
        int fit_v = strcmp(fit, "crop") == 0 ? IMAGE_FIT_CROP : IMAGE_FIT_RESIZE;
        ck_assert_msg(image_prepare(&img, h, w, fit_v, &prep, out, err, sizeof err) == 0, "%s: %s", name,
                      err);
        double maxdiff = 0;
        int64_t at = 0;
        for (int64_t k = 0; k < exp.count; k++) {
            double d = fabs((double)out[k] - exp.data[k]);
            if (d > maxdiff) {
                maxdiff = d;
                at = k;
            }
        }
        ck_assert_msg(maxdiff <= 1e-6, "%s: max |diff| %g at %lld (%g vs reference %g)", name, maxdiff,
                      (long long)at, out[at], exp.data[at]);
        free(out);
        npy_free(&exp);
        image_free(&img);
        free(data);
    }
}
END_TEST

/* Same size in, same size out: no resampling, just v / 255 normalized. */
START_TEST(test_prepare_identity) {
    size_t len;
    char err[512];
    image_u8 img;
    uint8_t *data = slurp("rgb8.png", &len);
    ck_assert_int_eq(image_decode(data, len, 3, NULL, &img, err, sizeof err), IMAGE_OK);
    image_prep prep = image_prep_default();
    float *out = malloc(sizeof(float) * 3 * (size_t)img.width * img.height);
    ck_assert_int_eq(
        image_prepare(&img, img.height, img.width, IMAGE_FIT_RESIZE, &prep, out, err, sizeof err), 0);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < img.width * img.height; i++) {
            /* torchvision: ToTensor divides by 255 in float32. */
            float want = ((float)img.pixels[i * 3 + c] / 255.0f - 0.5f) / 0.5f;
            ck_assert(out[(size_t)c * img.width * img.height + i] == want);
        }
    free(out);
    image_free(&img);
    free(data);
}
END_TEST

START_TEST(test_prepare_refusals) {
    char err[512];
    uint8_t px[4 * 4 * 3] = {0};
    image_u8 img = {4, 4, 3, px};
    float out[3 * 8 * 8];
    image_prep prep = image_prep_default();
    ck_assert_int_eq(image_prepare(&img, 0, 4, IMAGE_FIT_RESIZE, &prep, out, err, sizeof err), -1);
    ck_assert_int_eq(image_prepare(&img, 4, -1, IMAGE_FIT_RESIZE, &prep, out, err, sizeof err), -1);
    ck_assert_int_eq(image_prepare(&img, 4, 4, 7, &prep, out, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "fit"), "message: %s", err);
    prep.resample = 1;
    ck_assert_int_eq(image_prepare(&img, 4, 4, IMAGE_FIT_RESIZE, &prep, out, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "resample"), "message: %s", err);
    prep = image_prep_default();
    image_u8 two = {4, 4, 2, px};
    ck_assert_int_eq(image_prepare(&two, 4, 4, IMAGE_FIT_RESIZE, &prep, out, err, sizeof err), -1);
    image_u8 empty = {0, 4, 3, px};
    ck_assert_int_eq(image_prepare(&empty, 4, 4, IMAGE_FIT_RESIZE, &prep, out, err, sizeof err), -1);
    /* A preprocessor that neither resizes nor crops cannot reach 8 x 8. */
    prep.has_preprocessor = 1;
    prep.do_resize = 0;
    prep.do_center_crop = 0;
    ck_assert_int_eq(image_prepare(&img, 8, 8, IMAGE_FIT_RESIZE, &prep, out, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "4x4"), "message: %s", err);
    ck_assert_int_eq(image_prepare(&img, 4, 4, IMAGE_FIT_RESIZE, &prep, out, err, sizeof err), 0);
    /* Absurd aspect ratio for a crop fit: refused, not a huge allocation. */
    static uint8_t line[40000 * 1];
    image_u8 strip = {40000, 1, 1, line};
    float *big = malloc(sizeof(float) * 224 * 224);
    prep = image_prep_default();
    ck_assert_int_eq(image_prepare(&strip, 224, 224, IMAGE_FIT_CROP, &prep, big, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "elongated"), "message: %s", err);
    /* ...while a resize fit of the same strip is fine. */
    ck_assert_int_eq(image_prepare(&strip, 224, 224, IMAGE_FIT_RESIZE, &prep, big, err, sizeof err), 0);
    free(big);
}
END_TEST

/* A window of a resize (resize_window_u8, what a crop fit resamples) is
 * the same bytes as the whole resize then the crop: up and down, one axis
 * or both or neither, both filters, windows at the corners, inside, one
 * pixel wide, the whole image. */
START_TEST(test_resize_window_matches_crop) {
    static const int sizes[][5] = {
        /* in_w, in_h, channels, out_w, out_h */
        {37, 23, 3, 61, 47}, {61, 47, 3, 19, 13}, {40, 30, 1, 40, 71},
        {40, 30, 1, 97, 30}, {33, 29, 3, 33, 29}, {300, 7, 1, 23, 51},
    };
    uint32_t seed = 12345;
    for (size_t t = 0; t < sizeof(sizes) / sizeof(sizes[0]); t++) {
        int iw = sizes[t][0], ih = sizes[t][1], C = sizes[t][2], ow = sizes[t][3], oh = sizes[t][4];
        uint8_t *px = malloc((size_t)iw * ih * C);
        for (int i = 0; i < iw * ih * C; i++) {
            seed = seed * 1664525u + 1013904223u;
            px[i] = (uint8_t)(seed >> 24);
        }
        image_u8 in = {iw, ih, C, px};
        const int windows[][4] = {/* top, left, h, w */
                                  {0, 0, oh, ow},         {0, 0, 1, 1},
                                  {oh - 1, ow - 1, 1, 1}, {oh / 3, ow / 4, oh / 2, ow / 2},
                                  {0, ow / 2, oh, 1},     {oh / 2, 0, 1, ow}};
        for (int resample = IMAGE_RESAMPLE_BILINEAR; resample <= IMAGE_RESAMPLE_BICUBIC; resample++) {
            image_u8 full, want, got;
            ck_assert_int_eq(resize_u8(&in, ow, oh, resample, &full), 0);
            for (size_t k = 0; k < sizeof(windows) / sizeof(windows[0]); k++) {
                int top = windows[k][0], left = windows[k][1], h = windows[k][2], w = windows[k][3];
                ck_assert_int_eq(crop_u8(&full, top, left, h, w, &want), 0);
                ck_assert_int_eq(resize_window_u8(&in, ow, oh, resample, top, left, h, w, &got), 0);
                ck_assert_msg(
                    got.width == w && got.height == h && got.channels == C &&
                        memcmp(got.pixels, want.pixels, (size_t)w * h * C) == 0,
                    "%dx%d -> %dx%d (resample %d), window %dx%d at (%d, %d): not the crop of the resize", iw,
                    ih, ow, oh, resample, w, h, top, left);
                image_free(&want);
                image_free(&got);
            }
            /* a window that is not inside the resize: refused */
            ck_assert_int_eq(resize_window_u8(&in, ow, oh, resample, 1, 0, oh, ow, &got), -1);
            ck_assert_int_eq(resize_window_u8(&in, ow, oh, resample, 0, -1, 1, 1, &got), -1);
            image_free(&full);
        }
        free(px);
    }
}
END_TEST

/* A crop fit of an elongated image resamples only the crop: a 4000 x 8
 * strip at 64 is torchvision's Resize(70) (70 x 35000) then CenterCrop(64),
 * computed here the long way; and a 16384 x 20 strip at 384, whose resize
 * to cover the crop would be 345702 x 422 (146 M pixels, refused as too
 * elongated when it was made whole), is prepared. */
START_TEST(test_prepare_crop_elongated) {
    char err[512];
    int W = 4000, H = 8;
    uint8_t *px = malloc((size_t)W * H);
    for (int i = 0; i < W * H; i++) px[i] = (uint8_t)(i * 7 + i / W * 31);
    image_u8 strip = {W, H, 1, px};
    image_prep prep = image_prep_default();
    float out[64 * 64];
    ck_assert_msg(image_prepare(&strip, 64, 64, IMAGE_FIT_CROP, &prep, out, err, sizeof err) == 0, "%s", err);
    /* Resize(round(1.1 * 64) = 70): the short side to 70, the long to
     * int(70 * 4000 / 8) = 35000; CenterCrop(64): top round(6 / 2) = 3,
     * left round(34936 / 2) = 17468 */
    image_u8 big, crop;
    ck_assert_int_eq(resize_u8(&strip, 35000, 70, prep.resample, &big), 0);
    ck_assert_int_eq(crop_u8(&big, 3, 17468, 64, 64, &crop), 0);
    for (int i = 0; i < 64 * 64; i++) {
        float want = ((float)crop.pixels[i] / 255.0f - 0.5f) / 0.5f;
        ck_assert_msg(out[i] == want, "pixel %d: %g, the resize then the crop give %g", i, out[i], want);
    }
    image_free(&big);
    image_free(&crop);
    free(px);

    uint8_t *line = calloc((size_t)16384 * 20, 1);
    image_u8 wide = {16384, 20, 1, line};
    float *o384 = malloc(sizeof(float) * 384 * 384);
    ck_assert_msg(image_prepare(&wide, 384, 384, IMAGE_FIT_CROP, &prep, o384, err, sizeof err) == 0, "%s",
                  err);
    free(o384);
    free(line);
}
END_TEST

/* ---- preprocessor_config.json ---- */

START_TEST(test_prep_load_good) {
    char path[1024], err[512];
    image_prep p;

    path_of(path, sizeof path, "pp_clip.json");
    ck_assert_msg(image_prep_load(path, &p, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(p.has_preprocessor, 1);
    ck_assert_int_eq(p.resample, IMAGE_RESAMPLE_BICUBIC);
    ck_assert_int_eq(p.size_shortest_edge, 28);
    ck_assert_int_eq(p.size_height, 0);
    ck_assert_int_eq(p.crop_height, 24);
    ck_assert_int_eq(p.crop_width, 24);
    ck_assert(p.do_resize && p.do_center_crop && p.do_rescale && p.do_normalize);
    ck_assert(fabs(p.rescale_factor - 1.0 / 255.0) < 1e-15);
    ck_assert(p.mean[0] == 0.48145466 && p.std[2] == 0.27577711);

    path_of(path, sizeof path, "pp_hw.json");
    ck_assert_msg(image_prep_load(path, &p, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(p.size_shortest_edge, 0);
    ck_assert_int_eq(p.size_height, 30);
    ck_assert_int_eq(p.size_width, 30);
    ck_assert_int_eq(p.crop_height, 24); /* crop_size given as an int */
    ck_assert_int_eq(p.crop_width, 24);
    ck_assert_int_eq(p.resample, IMAGE_RESAMPLE_BILINEAR);
    ck_assert(p.mean[0] == 0.5 && p.mean[1] == 0.5 && p.mean[2] == 0.5); /* a number */
    ck_assert(p.std[0] == 0.5 && p.std[2] == 0.5);                       /* a list of 1 */

    path_of(path, sizeof path, "pp_int_size.json");
    ck_assert_msg(image_prep_load(path, &p, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(p.size_shortest_edge, 26); /* size as an int: shortest edge */
    ck_assert_int_eq(p.do_normalize, 0);

    path_of(path, sizeof path, "pp_cropflow.json");
    ck_assert_msg(image_prep_load(path, &p, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(p.do_resize, 0);
    ck_assert_int_eq(p.resample, IMAGE_RESAMPLE_BICUBIC); /* CLIPImageProcessor's default */
}
END_TEST

START_TEST(test_prep_load_bad) {
    struct {
        const char *file, *needle;
    } cases[] = {
        {"pp_bad_type.json", "\"do_resize\""},
        {"pp_bad_resample.json", "\"resample\" 0"},
        {"pp_bad_size.json", "\"size\""},
        {"pp_bad_mean.json", "\"image_mean\"[1]"},
        {"pp_bad_std.json", "\"image_std\""},
        {"pp_bad_rescale.json", "\"rescale_factor\""},
        {"pp_bad_syntax.json", "line"},
        {"pp_does_not_exist.json", "pp_does_not_exist.json"},
        /* finite in double, not in the float32 of the model's input: every
         * image's logits were infinite or NaN, each request a 400 */
        {"pp_std_underflows.json", "byte 0 of channel 0 -inf, not a float32 number"},
        {"pp_rescale_overflows.json", "byte 255 of channel 0 inf"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[1024], err[512] = "";
        image_prep p;
        path_of(path, sizeof path, cases[i].file);
        /* none there: SMALL_FILE_MISSING, which vit_load takes as "no preprocessor config" */
        int expect = strcmp(cases[i].file, "pp_does_not_exist.json") == 0 ? SMALL_FILE_MISSING : -1;
        ck_assert_msg(image_prep_load(path, &p, err, sizeof err) == expect, "%s was accepted", cases[i].file);
        ck_assert_msg(strstr(err, cases[i].needle), "%s: message \"%s\" lacks %s", cases[i].file, err,
                      cases[i].needle);
        ck_assert_msg(strstr(err, cases[i].file), "%s: message \"%s\" does not name the file", cases[i].file,
                      err);
    }
}
END_TEST

static Suite *image_suite(void) {
    Suite *s = suite_create("image");
    TCase *dec = tcase_create("decode");
    tcase_set_timeout(dec, 600);
    tcase_add_test(dec, test_format_sniffing);
    tcase_add_test(dec, test_decode_matches_pil);
    tcase_add_test(dec, test_truncated_files);
    tcase_add_test(dec, test_truncation_messages);
    tcase_add_test(dec, test_garbage_refused);
    tcase_add_test(dec, test_flipped_bytes);
    tcase_add_test(dec, test_huge_header_refused);
    tcase_add_test(dec, test_limits_on_real_files);
    tcase_add_test(dec, test_zero_size_refused);
    tcase_add_test(dec, test_bad_channel_count);
    suite_add_tcase(s, dec);

    TCase *prep = tcase_create("prepare");
    tcase_set_timeout(prep, 120);
    tcase_add_test(prep, test_prep_default);
    tcase_add_test(prep, test_prepare_matches_reference);
    tcase_add_test(prep, test_prepare_identity);
    tcase_add_test(prep, test_prepare_refusals);
    tcase_add_test(prep, test_resize_window_matches_crop);
    tcase_add_test(prep, test_prepare_crop_elongated);
    tcase_add_test(prep, test_prep_load_good);
    tcase_add_test(prep, test_prep_load_bad);
    suite_add_tcase(s, prep);
    return s;
}

int main(void) { return check_run(image_suite()); }
