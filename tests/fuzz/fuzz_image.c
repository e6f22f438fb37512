/* fuzz_image.c: image decode + resize. A JPEG/PNG file goes through
 * image_format, image_probe and image_decode (limits checked from the
 * header), then image_prepare at a size and with a preparation picked by
 * the input, and the whole input path of the bundled model
 * (input_from_encoded, "native" resolution).
 *
 * Input: the file, then 4 control bytes: output height and width
 * (1..64 each), flags (1: center crop, 2: bicubic, 4: RGB, 8: a
 * preprocessor_config.json-style preparation, 16: also input_from_encoded),
 * and the preprocessor's shortest edge / crop size. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_model.h"
#include "image.h"
#include "input.h"
#include "vit.h"

static vit_model *model;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    model = fuzz_load_model("fuzz_image");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    const uint8_t *ctl = data + size - 4;
    size -= 4;
    int out_h = ctl[0] % 64 + 1, out_w = ctl[1] % 64 + 1, flags = ctl[2], edge = ctl[3] % 80 + 1;
    int channels = flags & 4 ? 3 : 1;
    /* smaller than the daemon's defaults: a fuzzer's input decodes fast */
    image_limits limits = {2048, 2048, 1 << 20};
    char err[512];

    (void)image_format(data, size);
    int pw = 0, ph = 0;
    int probed = image_probe(data, size, &pw, &ph, err, sizeof(err)) == 0;

    image_u8 img;
    if (image_decode(data, size, channels, &limits, &img, err, sizeof(err)) == IMAGE_OK) {
        /* the server checks its limits on the probed size: decoding must
         * agree with it */
        if (!probed || pw != img.width || ph != img.height) {
            fprintf(stderr, "probe %s %dx%d, decode %dx%d\n", probed ? "ok" : "failed", pw, ph, img.width,
                    img.height);
            abort();
        }
        image_prep prep = image_prep_default();
        if (flags & 8) {
            prep.has_preprocessor = 1;
            prep.do_resize = prep.do_center_crop = prep.do_rescale = prep.do_normalize = 1;
            prep.size_shortest_edge = edge;
            prep.crop_height = prep.crop_width = edge;
            prep.rescale_factor = 1.0 / 255;
        }
        prep.resample = flags & 2 ? IMAGE_RESAMPLE_BICUBIC : IMAGE_RESAMPLE_BILINEAR;
        float *out = malloc(sizeof(float) * (size_t)channels * out_h * out_w);
        if (!out) abort();
        (void)image_prepare(&img, out_h, out_w, flags & 1 ? IMAGE_FIT_CROP : IMAGE_FIT_RESIZE, &prep, out,
                            err, sizeof(err));
        free(out);
        image_free(&img);
    }
    if (flags & 16) {
        resolution_request native = {1, 0, 0};
        float *pixels;
        int h, w;
        if (input_from_encoded(model, data, size, native, flags & 1, &limits, &pixels, &h, &w, err,
                               sizeof(err)) == 0)
            free(pixels);
    }
    return 0;
}
