/* input.h: from a caller's request to a model input.
 *
 * Owns: parsing a requested resolution ("224", "384x512", "native"),
 * resolving "native" against an image's own size, and the whole path from
 * an encoded JPEG/PNG to the normalized (C, h, w) floats a vit_image points
 * at. Shared by the CLI and the daemon so both answer alike. */
#ifndef COMROPE_INPUT_H
#define COMROPE_INPUT_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "vit.h"

typedef struct {
    int native; /* 1: the image's own size rounded down to multiples of p */
    int h, w;   /* when not native */
} resolution_request;

/* "N", "HxW" or "native". Checks only the syntax and positivity; the model
 * checks the patch size (vit_check_resolution). Returns 0 or -1. */
int resolution_parse(const char *s, resolution_request *out, char *err, size_t errlen);

/* The model's default: its training size (image_size x image_size). */
resolution_request resolution_default(const vit_model *m);

/* Resolves a request for an image of img_h x img_w: "native" rounds down to
 * multiples of p and, beyond max_tokens, scales both sides down evenly.
 * Then checks the result against the model. Returns 0 or -1. */
int resolution_resolve(const vit_model *m, resolution_request req, int img_h, int img_w, int *h, int *w,
                       char *err, size_t errlen);

/* Decodes an encoded JPEG/PNG and prepares it at the requested resolution
 * with `fit`. On success *pixels is a malloc'd (C, h, w) array the caller
 * frees. Returns 0, an IMAGE_ERR_* code from decoding (so that a server can
 * tell 415 from 413 from 400 from 500), IMAGE_ERR_CORRUPT for an image the
 * preparation refuses, IMAGE_ERR_MEMORY where either ran out of memory, or
 * INPUT_ERR_RESOLUTION. */
#define INPUT_ERR_RESOLUTION (-10)
int input_from_encoded(const vit_model *m, const uint8_t *data, size_t len, resolution_request req, int fit,
                       const image_limits *limits, float **pixels, int *h, int *w, char *err, size_t errlen);

#endif
