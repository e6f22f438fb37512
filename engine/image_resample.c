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
 * normalize_coeffs_8bpc. Returns 0, or -1 when out of memory. */
static int coeffs_compute(int in_size, int out_size, int resample, resample_coeffs *c) {
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
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        if (xmax > ksize) xmax = ksize; /* cannot happen; keeps the buffer index provably safe */
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
static uint8_t clip8(int64_t ss) {
    if (ss < 0) return 0;
    ss >>= PRECISION_BITS;
    return ss > 255 ? 255 : (uint8_t)ss;
}

/* Resizes `in` to out_w x out_h with PIL's algorithm into `out` (fresh
 * pixels, owned by the caller). Returns 0, or -1 when out of memory. */
int resize_u8(const image_u8 *in, int out_w, int out_h, int resample, image_u8 *out) {
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
        if (!out->pixels) return -1;
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
        if (coeffs_compute(in->height, out_h, resample, &cv) != 0) goto cleanup;
        row0 = cv.bounds[0];
        nrows = cv.bounds[2 * (out_h - 1)] + cv.bounds[2 * (out_h - 1) + 1] - row0;
    }

    const uint8_t *src = in->pixels;
    int src_w = in->width;
    if (need_h) {
        if (coeffs_compute(in->width, out_w, resample, &ch) != 0) goto cleanup;
        tmp = malloc((size_t)out_w * nrows * C);
        if (!tmp) goto cleanup;
        for (int y = 0; y < nrows; y++) {
            const uint8_t *srow = in->pixels + (size_t)(y + row0) * in->width * C;
            uint8_t *drow = tmp + (size_t)y * out_w * C;
            for (int xx = 0; xx < out_w; xx++) {
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
        src_w = out_w;
    }

    out->pixels = malloc((size_t)out_w * out_h * C);
    if (!out->pixels) goto cleanup;
    if (need_v) {
        for (int yy = 0; yy < out_h; yy++) {
            /* Rows of `src` start at input row row0 when the horizontal pass
             * ran; otherwise src is the input itself (row0 is then added). */
            int ymin = cv.bounds[2 * yy] - (need_h ? row0 : 0), yn = cv.bounds[2 * yy + 1];
            const int32_t *k = cv.kk + (size_t)yy * cv.ksize;
            uint8_t *drow = out->pixels + (size_t)yy * out_w * C;
            for (int xc = 0; xc < out_w * C; xc++) {
                int64_t ss = 1 << (PRECISION_BITS - 1);
                for (int y = 0; y < yn; y++) ss += (int64_t)src[(size_t)(y + ymin) * src_w * C + xc] * k[y];
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
