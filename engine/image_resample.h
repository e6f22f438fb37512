/* image_resample.h: PIL's resampling of 8-bit images, for image_prep.c.
 *
 * Owns: resizing with PIL's antialiased filters (each output coordinate a
 * window of input samples weighted by the filter, stretched when
 * shrinking; fixed-point sums as Pillow 9.4 computes them) and cropping
 * with zero padding. Internal to the engine. */
#ifndef COMROPE_IMAGE_RESAMPLE_H
#define COMROPE_IMAGE_RESAMPLE_H

#include "image.h"

/* Resizes `in` to out_w x out_h with PIL's algorithm (`resample`: an
 * IMAGE_RESAMPLE_* of image.h) into `out` (fresh pixels, owned by the
 * caller). Returns 0, or -1 when out of memory. */
int resize_u8(const image_u8 *in, int out_w, int out_h, int resample, image_u8 *out);

/* The h x w window at (top, left) of that resize, inside it, into `out`:
 * the same pixels as resize_u8 then crop_u8 (each output pixel of PIL's
 * resize depends on its own coordinates only), computing only the window
 * and the input rows it reads, so a crop costs what it keeps (an elongated
 * image's full resize to cover a crop can be far larger than the image).
 * Returns 0, or -1 when out of memory or the window is not inside. */
int resize_window_u8(const image_u8 *in, int out_w, int out_h, int resample, int top, int left, int h, int w,
                     image_u8 *out);

/* Copies the h x w window at (top, left) of `in` into `out` (fresh pixels);
 * pixels outside the image are 0. Returns 0, or -1 when out of memory. */
int crop_u8(const image_u8 *in, int top, int left, int h, int w, image_u8 *out);

#endif
