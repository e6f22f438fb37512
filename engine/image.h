/* image.h: turns JPEG/PNG files into the model's input.
 *
 * Owns: decoding (libjpeg-turbo, libpng) into 8-bit interleaved pixels with
 * the model's channel count, the limits checked from the file header before
 * any pixel is decoded, preprocessor_config.json, and the preparation that
 * torchvision/PIL apply at training time (antialiased resize or
 * resize-then-center-crop, rescale to [0,1], normalize), producing a float
 * tensor [C, h, w]. Knows nothing about the model's weights. Implemented
 * in image_decode.c (probe, limits, decoders), image_resample.c (PIL's
 * resampler) and image_prep.c (the config and the preparation). */
#ifndef COMROPE_IMAGE_H
#define COMROPE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "engine_error.h"

/* 8-bit pixels, row-major, channels interleaved (RGB or L). Owned by whoever
 * received it from image_decode; release with image_free. */
typedef struct {
    int width, height, channels; /* channels is 1 or 3 */
    uint8_t *pixels;             /* width*height*channels bytes */
} image_u8;

/* Refusals made from the header, before decoding. 0 means "no limit" for
 * that field; image_limits_default() gives the daemon's defaults. */
typedef struct {
    int max_width, max_height;
    int64_t max_pixels;
} image_limits;

image_limits image_limits_default(void);

enum { IMAGE_FORMAT_UNKNOWN = 0, IMAGE_FORMAT_JPEG, IMAGE_FORMAT_PNG };

/* Sniffs the magic bytes; IMAGE_FORMAT_UNKNOWN for anything else. */
int image_format(const uint8_t *data, size_t len);

/* Reads width and height from the header only (no pixel decoding).
 * Returns 0, or -1 with a message in err. */
int image_probe(const uint8_t *data, size_t len, int *width, int *height, char *err, size_t errlen);

/* Error codes of image_decode, so that callers can map them to HTTP
 * statuses (415 / 413 / 400 / 500); in engine_error.h's scheme: memory is
 * ENGINE_ERR_MEMORY, the others collide with none of its values. */
enum {
    IMAGE_OK = 0,
    IMAGE_ERR_FORMAT = -1,    /* not a JPEG or PNG */
    IMAGE_ERR_TOO_LARGE = -6, /* dimensions or pixel count over the limits */
    IMAGE_ERR_CORRUPT = -5,   /* a JPEG/PNG that fails to decode */
    IMAGE_ERR_MEMORY = ENGINE_ERR_MEMORY
};

/* Decodes a whole JPEG or PNG file held in memory into `channels` (1 or 3)
 * 8-bit channels, as PIL's Image.open(..).convert("RGB" or "L") would:
 * gray, palette, alpha (dropped, not composited) and 16-bit (high byte)
 * inputs are handled. Limits are checked from the header first.
 * Returns IMAGE_OK, or an IMAGE_ERR_* code with a message in err. */
int image_decode(const uint8_t *data, size_t len, int channels, const image_limits *limits, image_u8 *out,
                 char *err, size_t errlen);

void image_free(image_u8 *img);

enum { IMAGE_FIT_RESIZE = 0, IMAGE_FIT_CROP = 1 };
enum { IMAGE_RESAMPLE_BILINEAR = 2, IMAGE_RESAMPLE_BICUBIC = 3 }; /* PIL's numbers */

/* How pixels become the model's input. image_prep_default() is the official
 * code's ImageTransform normalization (bilinear, mean 0.5, std 0.5) used when
 * a checkpoint has no preprocessor_config.json. */
typedef struct {
    int has_preprocessor; /* 1 when loaded from preprocessor_config.json */
    int resample;         /* IMAGE_RESAMPLE_* */
    int do_resize, do_center_crop, do_rescale, do_normalize;
    int size_shortest_edge;      /* preprocessor `size` (shortest edge), 0 if not given */
    int size_height, size_width; /* preprocessor `size` as {height,width}, 0 if not given */
    int crop_height, crop_width; /* preprocessor `crop_size` */
    double rescale_factor;
    double mean[3], std[3];
} image_prep;

image_prep image_prep_default(void);

/* The most a preprocessor_config.json may hold (a real one is some 500
 * bytes; config.json's cap, VIT_CONFIG_MAX_BYTES, alike). */
#define IMAGE_PREP_MAX_BYTES (16 << 20)

/* Loads preprocessor_config.json at `path`, read as small_file_read reads
 * it: a regular file of at most IMAGE_PREP_MAX_BYTES (a FIFO, a device, a
 * directory refused at once, never waited on). Unknown keys are ignored; a
 * listed key of the wrong type, or a resample other than 2 or 3, is refused
 * naming the key. Returns 0; or -1, or SMALL_FILE_MISSING when there is no
 * such file (the model then has none: image_prep_default), or
 * ENGINE_ERR_MEMORY (engine_error.h), with a message in err. */
int image_prep_load(const char *path, image_prep *out, char *err, size_t errlen);

/* Prepares `img` as the model's input at out_h x out_w with `fit`
 * (IMAGE_FIT_RESIZE or IMAGE_FIT_CROP): writes img->channels*out_h*out_w
 * floats, channel-major [C, h, w], into `out` (caller-allocated).
 * Returns 0, IMAGE_ERR_MEMORY where an allocation was refused, or -1 (a
 * size, fit or preparation it cannot make), with a message in err. */
int image_prepare(const image_u8 *img, int out_h, int out_w, int fit, const image_prep *prep, float *out,
                  char *err, size_t errlen);

#endif
