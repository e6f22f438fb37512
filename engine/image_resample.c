/* image_resample.c: PIL's antialiased resampling and the crop (see
 * image_resample.h): Pillow 9.4 src/libImaging/Resample.c, 8-bit path,
 * re-implemented. */
#include "image_resample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    int ksize;   /* coefficients per output sample */
    int *bounds; /* [out][2]: first input index, count */
    int32_t *kk; /* [out][ksize], fixed point */
} resample_coeffs;

static double filter_bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* Keys' cubic with a = -0.5, written in Pillow's order of operations. */
static double filter_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static void coeffs_free(resample_coeffs *c) {
    free(c->bounds);
    free(c->kk);
    c->bounds = NULL;
    c->kk = NULL;
}

/* Pillow's precompute_coeffs for the box (0, in_size) followed by
 * normalize_coeffs_8bpc, for the output samples first .. first + count - 1
 * of out_size (each sample's weights depend on its own coordinate only).
 * Returns 0, or -1 when out of memory. */
static int coeffs_compute(int in_size, int out_size, int first, int count, int resample, resample_coeffs *c) {
    double (*filter)(double) = resample == IMAGE_RESAMPLE_BICUBIC ? filter_bicubic : filter_bilinear;
    double base_support = resample == IMAGE_RESAMPLE_BICUBIC ? 2.0 : 1.0;
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = base_support * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *w = NULL;

    memset(c, 0, sizeof *c);
    c->ksize = ksize;
    c->bounds = malloc(sizeof(int) * 2 * (size_t)count);
    c->kk = calloc((size_t)count * (size_t)ksize, sizeof(int32_t));
    w = malloc(sizeof(double) * (size_t)ksize);
    if (!c->bounds || !c->kk || !w) {
        free(w);
        coeffs_free(c);
        return -1;
    }
    for (int i = 0; i < count; i++) {
        double center = (first + i + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        /* Pillow rounds with (int)(v + 0.5), truncating toward zero; the
         * clamp makes the difference for negative values irrelevant. */
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        if (xmax > ksize) xmax = ksize; /* cannot happen; keeps the buffer index provably safe */
        for (int x = 0; x < xmax; x++) {
            w[x] = filter((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = c->kk + (size_t)i * ksize;
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                         : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        c->bounds[2 * i + 0] = xmin;
        c->bounds[2 * i + 1] = xmax;
    }
    free(w);
    return 0;
}

/* Pillow's clip8: the fixed-point sum shifted down, clamped to a byte. */
static uint8_t clip8(int64_t ss) {
    if (ss < 0) return 0;
    ss >>= PRECISION_BITS;
    return ss > 255 ? 255 : (uint8_t)ss;
}

int resize_u8(const image_u8 *in, int out_w, int out_h, int resample, image_u8 *out) {
    return resize_window_u8(in, out_w, out_h, resample, 0, 0, out_h, out_w, out);
}

int resize_window_u8(const image_u8 *in, int out_w, int out_h, int resample, int top, int left, int h, int w,
                     image_u8 *out) {
    const int C = in->channels;
    int need_h = out_w != in->width, need_v = out_h != in->height;
    resample_coeffs ch = {0}, cv = {0};
    uint8_t *tmp = NULL;
    int rc = -1;

    memset(out, 0, sizeof *out);
    if (top < 0 || left < 0 || h < 1 || w < 1 || top + h > out_h || left + w > out_w) return -1;
    if (!need_h && !need_v) return crop_u8(in, top, left, h, w, out); /* same size: PIL copies */

    /* The input rows the window's output rows read (Pillow's
     * ybox_first..ybox_last for the whole image), and where the window's
     * columns start in what the vertical pass reads. */
    int row0 = top, nrows = h;
    if (need_v) {
        if (coeffs_compute(in->height, out_h, top, h, resample, &cv) != 0) goto cleanup;
        row0 = cv.bounds[0];
        nrows = cv.bounds[2 * (h - 1)] + cv.bounds[2 * (h - 1) + 1] - row0;
    }
    const uint8_t *src =
        in->pixels + (size_t)row0 * in->width * C + (size_t)left * C; /* no horizontal pass */
    size_t src_row = (size_t)in->width * C;
    if (need_h) {
        if (coeffs_compute(in->width, out_w, left, w, resample, &ch) != 0) goto cleanup;
        tmp = malloc((size_t)w * nrows * C);
        if (!tmp) goto cleanup;
        for (int y = 0; y < nrows; y++) {
            const uint8_t *srow = in->pixels + (size_t)(y + row0) * in->width * C;
            uint8_t *drow = tmp + (size_t)y * w * C;
            for (int xx = 0; xx < w; xx++) {
                int xmin = ch.bounds[2 * xx], xn = ch.bounds[2 * xx + 1];
                const int32_t *k = ch.kk + (size_t)xx * ch.ksize;
                for (int c = 0; c < C; c++) {
                    int64_t ss = 1 << (PRECISION_BITS - 1);
                    for (int x = 0; x < xn; x++) ss += (int64_t)srow[(size_t)(x + xmin) * C + c] * k[x];
                    drow[(size_t)xx * C + c] = clip8(ss);
                }
            }
        }
        src = tmp;
        src_row = (size_t)w * C;
    }

    /* `src`: nrows rows from input row row0, the window's columns first */
    out->pixels = malloc((size_t)w * h * C);
    if (!out->pixels) goto cleanup;
    for (int yy = 0; yy < h; yy++) {
        uint8_t *drow = out->pixels + (size_t)yy * w * C;
        if (!need_v) {
            memcpy(drow, src + (size_t)yy * src_row, (size_t)w * C);
            continue;
        }
        int ymin = cv.bounds[2 * yy] - row0, yn = cv.bounds[2 * yy + 1];
        const int32_t *k = cv.kk + (size_t)yy * cv.ksize;
        for (int xc = 0; xc < w * C; xc++) {
            int64_t ss = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < yn; y++) ss += (int64_t)src[(size_t)(y + ymin) * src_row + xc] * k[y];
            drow[xc] = clip8(ss);
        }
    }
    out->width = w;
    out->height = h;
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
int crop_u8(const image_u8 *in, int top, int left, int h, int w, image_u8 *out) {
    const int C = in->channels;
    memset(out, 0, sizeof *out);
    out->pixels = calloc((size_t)w * h * C, 1);
    if (!out->pixels) return -1;
    for (int y = 0; y < h; y++) {
        int sy = y + top;
        if (sy < 0 || sy >= in->height) continue;
        for (int x = 0; x < w; x++) {
            int sx = x + left;
            if (sx < 0 || sx >= in->width) continue;
            memcpy(out->pixels + ((size_t)y * w + x) * C, in->pixels + ((size_t)sy * in->width + sx) * C,
                   (size_t)C);
        }
    }
    out->width = w;
    out->height = h;
    out->channels = C;
    return 0;
}
