/* image_prep.c: preprocessor_config.json and the preparation of the
 * model's input (see image.h): the torchvision / HuggingFace resize and
 * crops on the decoded pixels (image_resample.c), then the rescale +
 * normalize into a float tensor [C, h, w]. */
#include "image.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_error.h"
#include "image_resample.h"
#include "small_file.h"

/* Largest output side image_prepare accepts; keeps every intermediate size
 * (1.1 x the side, times the other side) far from int overflow. */
#define PREP_MAX_SIDE 65536
/* Largest output image of image_prepare (the resize a crop covers may be
 * larger: only the crop is resampled, step_resize_crop). */
#define PREP_MAX_OUT_PIXELS ((int64_t)1 << 26)

/* Python's round() on a double: halves go to even (rint in the default
 * rounding mode does exactly that). */
static int round_half_even(double v) { return (int)nearbyint(v); }

/* Size that covers a target_h x target_w crop after the resize that pins
 * one side: torchvision's Resize(int) / HF's shortest_edge resize pin the
 * image's shorter side to s and give the other int(s * long / short).
 * With per-axis wishes sh (for height) and sw (for width) the intent is the
 * scale max(sh / H, sw / W): the axis with the larger ratio is pinned and
 * the other follows the same int() formula. For sh == sw this is exactly
 * the shorter side pinned to s (equal sides: both s). The result never
 * falls below the crop, so the crop needs no padding. */
static int cover_size(int W, int H, int sh, int sw, int target_h, int target_w, int *new_w, int *new_h) {
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
    if (other > PREP_MAX_SIDE * 16.0) return -1;
    if ((int64_t)sh * W >= (int64_t)sw * H) *new_w = (int)other;
    else *new_h = (int)other;
    if (*new_h < target_h) *new_h = target_h;
    if (*new_w < target_w) *new_w = target_w;
    return 0;
}

/* Python's floor division by 2 for a possibly negative int. */
static int floor_half(int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

/* ---- preprocessor_config.json ---- */

/* HF CLIPImageProcessor's defaults, used for keys the file does not set. */
static const double CLIP_MEAN[3] = {0.48145466, 0.4578275, 0.40821073};
static const double CLIP_STD[3] = {0.26862954, 0.26130258, 0.27577711};

image_prep image_prep_default(void) {
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

static int json_get_bool(json_t *root, const char *key, int *dst, const char *path, char *err,
                         size_t errlen) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "%s: \"%s\" must be true or false", path, key);
        return -1;
    }
    *dst = json_is_true(v);
    return 0;
}

static int json_positive_int(json_t *v, int *dst) {
    if (!json_is_integer(v)) return -1;
    json_int_t n = json_integer_value(v);
    if (n <= 0 || n > PREP_MAX_SIDE) return -1;
    *dst = (int)n;
    return 0;
}

/* `size` / `crop_size`: an int, or an object with height and width (and,
 * for size only, shortest_edge). */
static int json_get_size(json_t *root, const char *key, int allow_shortest, int *shortest, int *height,
                         int *width, const char *path, char *err, size_t errlen) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (json_is_integer(v)) {
        int n;
        if (json_positive_int(v, &n) != 0) goto bad;
        if (allow_shortest) {
            /* HF's get_size_dict(int, default_to_square=False). */
            *shortest = n;
            *height = *width = 0;
        } else {
            *height = *width = n;
        }
        return 0;
    }
    if (!json_is_object(v)) goto bad;
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
            snprintf(err, errlen, "%s: \"%s\".height and .width must be positive integers", path, key);
            return -1;
        }
        if (allow_shortest) *shortest = 0;
        return 0;
    }
bad:
    snprintf(err, errlen, "%s: \"%s\" must be a positive integer or an object with %s", path, key,
             allow_shortest ? "shortest_edge or height and width" : "height and width");
    return -1;
}

/* image_mean / image_std: a number or a list of 1 or 3 numbers. */
static int json_get_triple(json_t *root, const char *key, double dst[3], int positive, const char *path,
                           char *err, size_t errlen) {
    json_t *v = json_object_get(root, key);
    double vals[3];
    if (!v || json_is_null(v)) return 0;
    if (json_is_number(v)) {
        vals[0] = vals[1] = vals[2] = json_number_value(v);
    } else if (json_is_array(v) && (json_array_size(v) == 1 || json_array_size(v) == 3)) {
        size_t n = json_array_size(v);
        for (size_t i = 0; i < 3; i++) {
            json_t *e = json_array_get(v, n == 1 ? 0 : i);
            if (!json_is_number(e)) {
                snprintf(err, errlen, "%s: \"%s\"[%zu] must be a number", path, key, n == 1 ? (size_t)0 : i);
                return -1;
            }
            vals[i] = json_number_value(e);
        }
    } else {
        snprintf(err, errlen, "%s: \"%s\" must be a number or a list of 1 or 3 numbers", path, key);
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

/* What the model sees of byte v of channel c: ToTensor + Normalize. torchvision
 * divides the byte by 255 in float32, which for every byte equals the double
 * product v * (1/255) rounded to float (HF's rescale: float64 multiply, then
 * float32). The normalization is float32 arithmetic with float32 mean and
 * std, as both torch and numpy do it. */
static float pixel_value(const image_prep *p, int c, uint8_t v) {
    int do_rescale = p->has_preprocessor ? p->do_rescale : 1;
    int do_normalize = p->has_preprocessor ? p->do_normalize : 1;
    float x = do_rescale ? (float)(v * p->rescale_factor) : (float)v;
    return do_normalize ? (x - (float)p->mean[c]) / (float)p->std[c] : x;
}

int image_prep_load(const char *path, image_prep *out, char *err, size_t errlen) {
    json_error_t jerr;
    json_t *root = NULL, *v;
    image_prep p;
    char *text = NULL;
    size_t len;
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

    rc = small_file_read(path, IMAGE_PREP_MAX_BYTES, SMALL_FILE_REGULAR, &text, &len, err, errlen);
    if (rc != 0) goto cleanup;
    rc = -1;
    root = json_loadb(text, len, 0, &jerr);
    if (!root) {
        snprintf(err, errlen, "%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
        if (json_error_code(&jerr) == json_error_out_of_memory) rc = ENGINE_ERR_MEMORY;
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
            snprintf(err, errlen, "%s: \"resample\" %lld is not supported (2 bilinear, 3 bicubic)", path,
                     (long long)r);
            goto cleanup;
        }
        p.resample = (int)r;
    }

    if (json_get_size(root, "size", 1, &p.size_shortest_edge, &p.size_height, &p.size_width, path, err,
                      errlen) ||
        json_get_size(root, "crop_size", 0, NULL, &p.crop_height, &p.crop_width, path, err, errlen))
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
    /* Finite in double, they may not be in the float32 arithmetic of the
     * model's input (an image_std of 1e-50 is 0 there, a rescale_factor of
     * 1e39 infinite): every image then had non-finite logits, a 400 that
     * blamed the client's pixels while the model showed ready. The value
     * is linear in the byte: its ends bound it. */
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v += 255)
            if (!isfinite(pixel_value(&p, c, (uint8_t)v))) {
                snprintf(
                    err, errlen,
                    "%s: \"rescale_factor\", \"image_mean\" and \"image_std\" make byte %d of channel %d "
                    "%g, not a float32 number",
                    path, v, c, (double)pixel_value(&p, c, (uint8_t)v));
                goto cleanup;
            }

    *out = p;
    rc = 0;

cleanup:
    json_decref(root);
    free(text);
    return rc;
}

/* ---- image_prepare ---- */

/* Makes next the current image, freeing the one it replaces when owned. */
static void step_replace(image_u8 *cur, int *owned, image_u8 next) {
    if (*owned) image_free(cur);
    *cur = next;
    *owned = 1;
}

/* Resizes *cur to w x h when it differs, replacing *cur (freeing it when
 * owned). */
static int step_resize(image_u8 *cur, int *owned, int w, int h, int resample) {
    image_u8 next;
    if (cur->width == w && cur->height == h) return 0; /* torchvision and PIL leave it as it is */
    if (resize_u8(cur, w, h, resample, &next) != 0) return -1;
    step_replace(cur, owned, next);
    return 0;
}

static int step_crop(image_u8 *cur, int *owned, int top, int left, int h, int w) {
    image_u8 next;
    if (top == 0 && left == 0 && cur->width == w && cur->height == h) return 0;
    if (crop_u8(cur, top, left, h, w, &next) != 0) return -1;
    step_replace(cur, owned, next);
    return 0;
}

/* A resize to w x h, then the crop_h x crop_w crop at (top, left) of it
 * (zero outside): the window the crop keeps is resampled alone
 * (resize_window_u8), the rest of the resize never made. Bit for bit
 * step_resize then step_crop, at the cost of the crop rather than of the
 * resize: cover_size gives an elongated image a resize far larger than the
 * image (16384 x 20 to cover 282 x 282: 231014 x 282). */
static int step_resize_crop(image_u8 *cur, int *owned, int w, int h, int resample, int top, int left,
                            int crop_h, int crop_w) {
    if (cur->width == w && cur->height == h) return step_crop(cur, owned, top, left, crop_h, crop_w);
    int y0 = top > 0 ? top : 0, x0 = left > 0 ? left : 0;
    int y1 = top + crop_h < h ? top + crop_h : h, x1 = left + crop_w < w ? left + crop_w : w;
    image_u8 next;
    if (y1 <= y0 || x1 <= x0) { /* the crop misses the image: all padding (the centred crops cannot) */
        next = (image_u8){crop_w, crop_h, cur->channels, calloc((size_t)crop_w * crop_h * cur->channels, 1)};
        if (!next.pixels) return -1;
        step_replace(cur, owned, next);
        return 0;
    }
    if (resize_window_u8(cur, w, h, resample, y0, x0, y1 - y0, x1 - x0, &next) != 0) return -1;
    step_replace(cur, owned, next);
    return step_crop(cur, owned, top - y0, left - x0, crop_h, crop_w); /* the padding, if any */
}

/* A size scaled by requested / reference, rounded half to even. */
static int scaled_side(int size, int requested, int reference) {
    if (reference <= 0) return size;
    double v = (double)size * requested / reference;
    if (v > PREP_MAX_SIDE * 16.0) v = PREP_MAX_SIDE * 16.0; /* refused later as too large */
    int r = round_half_even(v);
    return r < 1 ? 1 : r;
}

int image_prepare(const image_u8 *img, int out_h, int out_w, int fit, const image_prep *prep, float *out,
                  char *err, size_t errlen) {
    image_u8 cur;
    int owned = 0, rc = -1;
    image_prep def = image_prep_default();

    if (!prep) prep = &def;
    if (!img || !img->pixels || img->width <= 0 || img->height <= 0 ||
        (img->channels != 1 && img->channels != 3)) {
        snprintf(err, errlen, "image_prepare: no valid image");
        return -1;
    }
    if (out_h <= 0 || out_w <= 0 || out_h > PREP_MAX_SIDE || out_w > PREP_MAX_SIDE) {
        snprintf(err, errlen, "image_prepare: output size %dx%d out of range (1..%d)", out_w, out_h,
                 PREP_MAX_SIDE);
        return -1;
    }
    if ((int64_t)out_h * out_w > PREP_MAX_OUT_PIXELS) {
        snprintf(err, errlen, "image_prepare: output size %dx%d is too large", out_w, out_h);
        return -1;
    }
    if (fit != IMAGE_FIT_RESIZE && fit != IMAGE_FIT_CROP) {
        snprintf(err, errlen, "image_prepare: unknown fit %d", fit);
        return -1;
    }
    if (prep->resample != IMAGE_RESAMPLE_BILINEAR && prep->resample != IMAGE_RESAMPLE_BICUBIC) {
        snprintf(err, errlen, "image_prepare: resample %d is not supported (2 or 3)", prep->resample);
        return -1;
    }
    cur = *img;

    if (!prep->has_preprocessor) {
        if (fit == IMAGE_FIT_RESIZE) {
            /* torchvision Resize((h, w)) on a PIL image. */
            if (step_resize(&cur, &owned, out_w, out_h, prep->resample) != 0) goto oom;
        } else {
            /* The official ImageTransform without its randomness:
             * Resize(round(1.1 * r)) then CenterCrop(r), generalized to
             * h x w by cover_size. */
            int sh = round_half_even(1.1 * out_h), sw = round_half_even(1.1 * out_w);
            int nw, nh;
            if (cover_size(cur.width, cur.height, sh, sw, out_h, out_w, &nw, &nh) != 0) {
                snprintf(err, errlen,
                         "image_prepare: a %dx%d image is too elongated to "
                         "cover %dx%d",
                         cur.width, cur.height, out_w, out_h);
                goto cleanup;
            }
            /* torchvision CenterCrop: int(round((H - h) / 2.0)). */
            int top = round_half_even((nh - out_h) / 2.0);
            int left = round_half_even((nw - out_w) / 2.0);
            if (step_resize_crop(&cur, &owned, nw, nh, prep->resample, top, left, out_h, out_w) != 0)
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
                    snprintf(err, errlen,
                             "image_prepare: a %dx%d image is too elongated to "
                             "cover %dx%d",
                             cur.width, cur.height, out_w, out_h);
                    goto cleanup;
                }
            } else if (prep->size_height > 0 && prep->size_width > 0) {
                nh = scaled_side(prep->size_height, out_h, crop_h);
                nw = scaled_side(prep->size_width, out_w, crop_w);
            } else {
                nw = out_w;
                nh = out_h;
            }
            if (prep->do_center_crop) {
                /* HF center_crop: top = (H - h) // 2, zero padding when smaller;
                 * only what it keeps is resampled (nw x nh may be huge) */
                int top = floor_half(nh - out_h), left = floor_half(nw - out_w);
                if (step_resize_crop(&cur, &owned, nw, nh, prep->resample, top, left, out_h, out_w) != 0)
                    goto oom;
            } else if (step_resize(&cur, &owned, nw, nh, prep->resample) != 0) { /* to h x w */
                goto oom;
            }
        } else if (prep->do_center_crop) {
            int top = floor_half(cur.height - out_h), left = floor_half(cur.width - out_w);
            if (step_crop(&cur, &owned, top, left, out_h, out_w) != 0) goto oom;
        }
        if (cur.width != out_w || cur.height != out_h) {
            snprintf(err, errlen,
                     "image_prepare: preprocessor without resize or crop leaves a %dx%d image, "
                     "the model needs %dx%d",
                     cur.width, cur.height, out_w, out_h);
            goto cleanup;
        }
    }

    /* ToTensor + Normalize (pixel_value) */
    {
        const int C = cur.channels;
        const size_t plane = (size_t)out_h * out_w;
        for (int c = 0; c < C; c++) {
            float *dst = out + (size_t)c * plane;
            for (size_t i = 0; i < plane; i++) dst[i] = pixel_value(prep, c, cur.pixels[i * C + c]);
        }
    }
    rc = 0;
    goto cleanup;

oom: /* the steps fail only for memory: their sizes are checked above */
    snprintf(err, errlen, "image_prepare: out of memory at %dx%d", out_w, out_h);
    rc = IMAGE_ERR_MEMORY;
cleanup:
    if (owned) image_free(&cur);
    return rc;
}
