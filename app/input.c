/* input.c: resolutions and encoded images -> model input (see input.h). */
#include "input.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_side(const char *s, const char *end, int *out) {
    if (s == end || end - s > 6) return -1;
    int v = 0;
    for (const char *c = s; c < end; c++) {
        if (*c < '0' || *c > '9') return -1;
        v = v * 10 + (*c - '0');
    }
    if (v <= 0) return -1;
    *out = v;
    return 0;
}

int resolution_parse(const char *s, resolution_request *out, char *err, size_t errlen) {
    memset(out, 0, sizeof(*out));
    if (strcmp(s, "native") == 0) {
        out->native = 1;
        return 0;
    }
    const char *x = strchr(s, 'x');
    if (!x) x = strchr(s, 'X');
    const char *end = s + strlen(s);
    if (x ? (parse_side(s, x, &out->h) || parse_side(x + 1, end, &out->w)) : parse_side(s, end, &out->h)) {
        snprintf(err, errlen,
                 "invalid resolution \"%.40s\" (expected N, HxW with positive integers, or native)", s);
        return -1;
    }
    if (!x) out->w = out->h;
    return 0;
}

resolution_request resolution_default(const vit_model *m) {
    resolution_request r = {0, m->cfg.image_size, m->cfg.image_size};
    return r;
}

int resolution_resolve(const vit_model *m, resolution_request req, int img_h, int img_w, int *h, int *w,
                       char *err, size_t errlen) {
    int p = m->cfg.patch_size;
    if (!req.native) {
        *h = req.h;
        *w = req.w;
        return vit_check_resolution(m, *h, *w, err, errlen);
    }
    int ph = img_h / p, pw = img_w / p;
    if (ph < 1 || pw < 1) {
        snprintf(err, errlen,
                 "image of %dx%d is smaller than one %dx%d patch; native resolution "
                 "is impossible",
                 img_h, img_w, p, p);
        return -1;
    }
    /* patches allowed: the tokens besides the class token */
    long limit = m->max_tokens - vit_tokens(m, 0, 0);
    if ((long)ph * pw > limit) {
        /* shrink both sides by the same factor until the grid fits */
        double f = sqrt((double)limit / ((double)ph * pw));
        ph = (int)floor(ph * f);
        pw = (int)floor(pw * f);
        if (ph < 1) ph = 1;
        if (pw < 1) pw = 1;
        while ((long)ph * pw > limit) {
            if (ph > pw) ph--;
            else pw--;
        }
    }
    *h = ph * p;
    *w = pw * p;
    return vit_check_resolution(m, *h, *w, err, errlen);
}

int input_from_encoded(const vit_model *m, const uint8_t *data, size_t len, resolution_request req, int fit,
                       const image_limits *limits, float **pixels, int *h, int *w, char *err, size_t errlen) {
    image_u8 img = {0};
    int rc = image_decode(data, len, m->cfg.num_channels, limits, &img, err, errlen);
    *pixels = NULL;
    if (rc != IMAGE_OK) return rc;
    if (resolution_resolve(m, req, img.height, img.width, h, w, err, errlen)) {
        rc = INPUT_ERR_RESOLUTION;
        goto cleanup;
    }
    *pixels = malloc(sizeof(float) * (size_t)m->cfg.num_channels * (*h) * (*w));
    if (!*pixels) {
        snprintf(err, errlen, "out of memory for a %dx%d input", *h, *w);
        rc = IMAGE_ERR_MEMORY;
        goto cleanup;
    }
    rc = image_prepare(&img, *h, *w, fit, &m->prep, *pixels, err, errlen);
    if (rc != 0) {
        free(*pixels);
        *pixels = NULL;
        /* out of memory is the server's (500), not the image's (400) */
        if (rc != IMAGE_ERR_MEMORY) rc = IMAGE_ERR_CORRUPT;
        goto cleanup;
    }
    rc = 0;
cleanup:
    image_free(&img);
    return rc;
}
