/* test_accuracy.c: the bundled default model against PyTorch on real data.
 *
 * tests/fixtures/accuracy (tools/make_accuracy_fixture.py) holds the first
 * Fashion-MNIST test images as uint8, their labels, and the float64
 * reference logits of the default model at its training resolution. Each
 * image is prepared as the daemon prepares an upload (an 8-bit image_u8 of
 * the model's channel count through image_prepare with the model's prep,
 * at the training resolution), the batch runs through vit_forward_ragged,
 * and every logit must be within 1e-4 of the reference, every predicted
 * class the reference's, and the number of correct answers the PyTorch
 * count in meta.json. A retrained model needs a new fixture.
 *
 * Under valgrind (scripts/test.sh runs every test binary in it) only the
 * first VALGRIND_IMAGES images run, logits and classes checked, the count
 * of correct answers not: 300 forwards take minutes there, and memory
 * errors show on a few as well as on all. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#include "image.h"
#include "npy.h"
#include "vit.h"
#include "check_run.h"

#define ACC_DIR FIXTURE_DIR "/accuracy"
#define BATCH 64
#define VALGRIND_IMAGES 3

/* A uint8 .npy ('|u1', C order) read whole: the engine's npy.h reads only
 * floats. Returns the bytes (caller frees) and the shape. */
static uint8_t *load_u8_npy(const char *path, int64_t *shape, int *ndim) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    uint8_t pre[12];
    ck_assert_msg(fread(pre, 1, 10, f) == 10 && memcmp(pre, "\x93NUMPY", 6) == 0, "%s: not a .npy", path);
    size_t hlen = pre[8] | (size_t)pre[9] << 8;
    if (pre[6] >= 2) { /* version 2/3: 4-byte header length */
        ck_assert(fread(pre + 10, 1, 2, f) == 2);
        hlen = pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    }
    char *hdr = calloc(hlen + 1, 1);
    ck_assert(fread(hdr, 1, hlen, f) == hlen);
    ck_assert_msg(strstr(hdr, "'descr': '|u1'") != NULL, "%s: not uint8: %s", path, hdr);
    ck_assert_msg(strstr(hdr, "'fortran_order': False") != NULL, "%s: Fortran order", path);
    const char *s = strstr(hdr, "'shape': (");
    ck_assert_msg(s != NULL, "%s: no shape", path);
    s += strlen("'shape': (");
    int64_t count = 1;
    *ndim = 0;
    while (*s && *s != ')' && *ndim < NPY_MAX_DIMS) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s) break;
        shape[(*ndim)++] = v;
        count *= v;
        s = end;
        while (*s == ',' || *s == ' ') s++;
    }
    free(hdr);
    uint8_t *data = malloc((size_t)count);
    ck_assert_msg(fread(data, 1, (size_t)count, f) == (size_t)count, "%s: short data", path);
    fclose(f);
    return data;
}

START_TEST(test_default_model_matches_pytorch) {
    json_error_t jerr;
    json_t *meta = json_load_file(ACC_DIR "/meta.json", 0, &jerr);
    ck_assert_msg(meta != NULL, "meta.json: %s", jerr.text);
    int count = (int)json_integer_value(json_object_get(meta, "count"));
    int res_h = (int)json_integer_value(json_array_get(json_object_get(meta, "resolution"), 0));
    int res_w = (int)json_integer_value(json_array_get(json_object_get(meta, "resolution"), 1));
    int want_correct = (int)json_integer_value(json_object_get(meta, "pytorch_correct"));
    ck_assert_int_gt(count, 0);
    int all = count;

    int64_t ishape[NPY_MAX_DIMS], lshape[NPY_MAX_DIMS];
    int indim, lndim;
    uint8_t *images = load_u8_npy(ACC_DIR "/images.npy", ishape, &indim);
    uint8_t *labels = load_u8_npy(ACC_DIR "/labels.npy", lshape, &lndim);
    ck_assert_int_eq(indim, 3);
    ck_assert_int_eq(lndim, 1);
    ck_assert_int_eq(ishape[0], count);
    ck_assert_int_eq(lshape[0], count);
    int ih = (int)ishape[1], iw = (int)ishape[2];
    npy_array ref;
    char err[512];
    ck_assert_msg(npy_load(ACC_DIR "/logits.npy", &ref, err, sizeof(err)) == 0, "%s", err);

    vit_model *m = NULL;
    ck_assert_msg(vit_load(COMROPE_DEFAULT_MODEL_DIR, NULL, &m, err, sizeof(err)) == 0,
                  "default model %s: %s", COMROPE_DEFAULT_MODEL_DIR, err);
    int K = m->cfg.num_class, C = m->cfg.num_channels;
    ck_assert_int_eq(ref.ndim, 2);
    ck_assert_int_eq(ref.shape[0], count);
    ck_assert_int_eq(ref.shape[1], K);
    ck_assert_msg(res_h == m->cfg.image_size && res_w == m->cfg.image_size,
                  "fixture at %dx%d, the model trains at %d", res_h, res_w, m->cfg.image_size);
    if (RUNNING_ON_VALGRIND && count > VALGRIND_IMAGES) count = VALGRIND_IMAGES;

    /* the daemon: decode to 8-bit pixels with the model's channels (gray
     * replicated for an RGB model), then image_prepare at the resolution */
    size_t per = (size_t)C * res_h * res_w;
    float *pixels = malloc((size_t)count * per * sizeof(float));
    uint8_t *u8 = malloc((size_t)ih * iw * C);
    for (int n = 0; n < count; n++) {
        const uint8_t *src = images + (size_t)n * ih * iw;
        for (int i = 0; i < ih * iw; i++)
            for (int c = 0; c < C; c++) u8[(size_t)i * C + c] = src[i];
        image_u8 img = {iw, ih, C, u8};
        ck_assert_msg(image_prepare(&img, res_h, res_w, IMAGE_FIT_RESIZE, &m->prep,
                                    pixels + (size_t)n * per, err, sizeof(err)) == 0, "%s", err);
    }
    free(u8);

    vit_context_params cp = vit_context_default_params();
    cp.max_images = BATCH;
    vit_context *ctx = NULL;
    ck_assert_msg(vit_context_new(m, &cp, &ctx, err, sizeof(err)) == 0, "%s", err);
    float *logits = malloc((size_t)count * K * sizeof(float));
    vit_image batch[BATCH];
    for (int n0 = 0; n0 < count; n0 += BATCH) {
        int nb = count - n0 < BATCH ? count - n0 : BATCH;
        for (int k = 0; k < nb; k++)
            batch[k] = (vit_image){res_h, res_w, pixels + (size_t)(n0 + k) * per};
        ck_assert_msg(vit_forward_ragged(ctx, batch, nb, logits + (size_t)n0 * K, err,
                                         sizeof(err)) == 0, "%s", err);
    }

    double worst = 0;
    int worst_at = -1, agree = 0, correct = 0;
    for (int n = 0; n < count; n++) {
        int ours = 0, theirs = 0;
        for (int k = 0; k < K; k++) {
            size_t i = (size_t)n * K + k;
            double d = fabs((double)logits[i] - ref.data[i]);
            if (!(d <= worst)) { /* NaN counts as the worst */
                worst = d;
                worst_at = n;
            }
            if (logits[i] > logits[(size_t)n * K + ours]) ours = k;
            if (ref.data[i] > ref.data[(size_t)n * K + theirs]) theirs = k;
        }
        agree += ours == theirs;
        correct += ours == labels[n];
    }
    fprintf(stderr,
            "accuracy fixture: %d images at %dx%d, max |logit - reference| = %.3g (image %d), "
            "same class %d/%d, engine top-1 %.2f%% (%d), PyTorch %d\n",
            count, res_h, res_w, worst, worst_at, agree, count, 100.0 * correct / count, correct,
            want_correct);
    ck_assert_msg(worst <= 1e-4,
                  "image %d: max |logit - reference| = %g (a retrained model needs "
                  "tools/make_accuracy_fixture.py)", worst_at, worst);
    ck_assert_int_eq(agree, count);
    if (count == all) ck_assert_int_eq(correct, want_correct);
    else fprintf(stderr, "accuracy fixture: under valgrind, %d of %d images\n", count, all);

    free(logits);
    free(pixels);
    vit_context_free(ctx);
    vit_free(m);
    npy_free(&ref);
    free(images);
    free(labels);
    json_decref(meta);
}
END_TEST

int main(void) {
    Suite *s = suite_create("accuracy");
    TCase *tc = tcase_create("accuracy");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_default_model_matches_pytorch);
    suite_add_tcase(s, tc);
    return check_run(s);
}
