/* test_accuracy.c: the bundled default model against PyTorch on real data.
 *
 * tests/fixtures/accuracy (tools/make_accuracy_fixture.py) holds the first
 * Fashion-MNIST test images as uint8, their labels, and the float64
 * reference logits of the default model at its training resolution and at
 * every other size it is promised to be good at (meta.json "resolutions":
 * 16 to 84 px and 28x40; PIL's resize made the reference's pixels). Each
 * image is prepared as the daemon prepares an upload (an 8-bit image_u8 of
 * the model's channel count through image_prepare with the model's prep,
 * at that resolution), the batch runs through vit_forward_ragged, and at
 * every resolution every logit must be within 1e-4 of the reference,
 * every predicted class the reference's, and the number of correct answers
 * the PyTorch count in meta.json. A retrained model needs a new fixture.
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

/* Under ASan (UNDER_ASAN, check_run.h) an unoptimised sanitizer build
 * runs the forward some 50x slower, so sizes other than the training one
 * run on the first SANITIZER_IMAGES images only (all seven sizes in full
 * took 6 minutes). */
#define SANITIZER_IMAGES 24

#include "dnnl_gemm.h"
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

/* The fixture, prepared as the daemon prepares uploads, and run through
 * one model with `opt` (NULL: the defaults) in batches of BATCH. */
typedef struct {
    int count, all, K, res_h, res_w, want_correct, training;
    uint8_t *labels;
    npy_array ref; /* (count, K) reference logits */
    float *logits; /* (count, K) the engine's */
    vit_model *m;
    json_t *meta;
} fixture_run;

/* How many resolutions the fixture holds (meta.json "resolutions"; the
 * first is the training resolution). */
static int fixture_resolutions(void) {
    json_error_t jerr;
    json_t *meta = json_load_file(ACC_DIR "/meta.json", 0, &jerr);
    ck_assert_msg(meta != NULL, "meta.json: %s", jerr.text);
    json_t *list = json_object_get(meta, "resolutions");
    ck_assert_msg(json_is_array(list) && json_array_size(list) > 0,
                  "meta.json: no \"resolutions\" (tools/make_accuracy_fixture.py)");
    int n = (int)json_array_size(list);
    json_decref(meta);
    return n;
}

/* Resolution `which` of the fixture (0: the training one). */
static void fixture_classify(fixture_run *r, const vit_options *opt, int which) {
    memset(r, 0, sizeof(*r));
    json_error_t jerr;
    r->meta = json_load_file(ACC_DIR "/meta.json", 0, &jerr);
    ck_assert_msg(r->meta != NULL, "meta.json: %s", jerr.text);
    json_t *meta = r->meta;
    json_t *entry = json_array_get(json_object_get(meta, "resolutions"), (size_t)which);
    ck_assert_msg(entry != NULL, "meta.json: no resolution %d", which);
    int count = (int)json_integer_value(json_object_get(meta, "count"));
    int res_h = (int)json_integer_value(json_array_get(json_object_get(entry, "resolution"), 0));
    int res_w = (int)json_integer_value(json_array_get(json_object_get(entry, "resolution"), 1));
    const char *logits_file = json_string_value(json_object_get(entry, "logits"));
    ck_assert_msg(logits_file != NULL && strchr(logits_file, '/') == NULL,
                  "meta.json: resolution %d: bad logits", which);
    r->want_correct = (int)json_integer_value(json_object_get(entry, "pytorch_correct"));
    r->training = which == 0;
    ck_assert_int_gt(count, 0);
    r->all = count;

    int64_t ishape[NPY_MAX_DIMS], lshape[NPY_MAX_DIMS];
    int indim, lndim;
    uint8_t *images = load_u8_npy(ACC_DIR "/images.npy", ishape, &indim);
    r->labels = load_u8_npy(ACC_DIR "/labels.npy", lshape, &lndim);
    ck_assert_int_eq(indim, 3);
    ck_assert_int_eq(lndim, 1);
    ck_assert_int_eq(ishape[0], count);
    ck_assert_int_eq(lshape[0], count);
    int ih = (int)ishape[1], iw = (int)ishape[2];
    char err[512];
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", ACC_DIR, logits_file);
    ck_assert_msg(npy_load(path, &r->ref, err, sizeof(err)) == 0, "%s", err);

    ck_assert_msg(vit_load(COMROPE_DEFAULT_MODEL_DIR, opt, &r->m, err, sizeof(err)) == 0,
                  "default model %s: %s", COMROPE_DEFAULT_MODEL_DIR, err);
    vit_model *m = r->m;
    int K = m->cfg.num_class, C = m->cfg.num_channels;
    ck_assert_int_eq(r->ref.ndim, 2);
    ck_assert_int_eq(r->ref.shape[0], count);
    ck_assert_int_eq(r->ref.shape[1], K);
    if (r->training)
        ck_assert_msg(res_h == m->cfg.image_size && res_w == m->cfg.image_size,
                      "fixture at %dx%d, the model trains at %d", res_h, res_w, m->cfg.image_size);
    if (RUNNING_ON_VALGRIND && count > VALGRIND_IMAGES) count = VALGRIND_IMAGES;
    if (UNDER_ASAN && !r->training && count > SANITIZER_IMAGES) count = SANITIZER_IMAGES;

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
        ck_assert_msg(image_prepare(&img, res_h, res_w, IMAGE_FIT_RESIZE, &m->prep, pixels + (size_t)n * per,
                                    err, sizeof(err)) == 0,
                      "%s", err);
    }
    free(u8);
    free(images);

    vit_context_params cp = vit_context_default_params();
    cp.max_images = BATCH;
    cp.max_tokens = BATCH * vit_tokens(m, res_h, res_w); /* 64 images at 84x84 are 28 288 tokens */
    vit_context *ctx = NULL;
    ck_assert_msg(vit_context_new(m, &cp, &ctx, err, sizeof(err)) == 0, "%s", err);
    r->logits = malloc((size_t)count * K * sizeof(float));
    vit_image batch[BATCH];
    for (int n0 = 0; n0 < count; n0 += BATCH) {
        int nb = count - n0 < BATCH ? count - n0 : BATCH;
        for (int k = 0; k < nb; k++) batch[k] = (vit_image){res_h, res_w, pixels + (size_t)(n0 + k) * per};
        ck_assert_msg(vit_forward_ragged(ctx, batch, nb, r->logits + (size_t)n0 * K, err, sizeof(err)) == 0,
                      "%s", err);
    }
    vit_context_free(ctx);
    free(pixels);
    r->count = count;
    r->K = K;
    r->res_h = res_h;
    r->res_w = res_w;
}

static void fixture_free(fixture_run *r) {
    free(r->logits);
    vit_free(r->m);
    npy_free(&r->ref);
    free(r->labels);
    json_decref(r->meta);
}

static int argmax_f(const float *x, int K) {
    int best = 0;
    for (int k = 1; k < K; k++)
        if (x[k] > x[best]) best = k;
    return best;
}

START_TEST(test_default_model_matches_pytorch) {
    int nres = fixture_resolutions();
    for (int which = 0; which < nres; which++) {
        fixture_run r;
        fixture_classify(&r, NULL, which);
        int count = r.count, K = r.K;
        ck_assert_int_eq(r.m->precision, GEMM_FP32); /* fp32 is the default, and the reference */
        double worst = 0;
        int worst_at = -1, agree = 0, correct = 0;
        for (int n = 0; n < count; n++) {
            int ours = 0, theirs = 0;
            for (int k = 0; k < K; k++) {
                size_t i = (size_t)n * K + k;
                double d = fabs((double)r.logits[i] - r.ref.data[i]);
                if (!(d <= worst)) { /* NaN counts as the worst */
                    worst = d;
                    worst_at = n;
                }
                if (r.logits[i] > r.logits[(size_t)n * K + ours]) ours = k;
                if (r.ref.data[i] > r.ref.data[(size_t)n * K + theirs]) theirs = k;
            }
            agree += ours == theirs;
            correct += ours == r.labels[n];
        }
        fprintf(stderr,
                "accuracy fixture: %d images at %dx%d%s, max |logit - reference| = %.3g (image %d), "
                "same class %d/%d, engine top-1 %.2f%% (%d), PyTorch %d\n",
                count, r.res_h, r.res_w, r.training ? " (training)" : "", worst, worst_at, agree, count,
                100.0 * correct / count, correct, r.want_correct);
        ck_assert_msg(worst <= 1e-4,
                      "%dx%d, image %d: max |logit - reference| = %g (a retrained model needs "
                      "tools/make_accuracy_fixture.py)",
                      r.res_h, r.res_w, worst_at, worst);
        ck_assert_msg(agree == count, "%dx%d: same class as the reference %d/%d", r.res_h, r.res_w, agree,
                      count);
        if (count == r.all)
            ck_assert_msg(correct == r.want_correct, "%dx%d: %d correct, PyTorch %d", r.res_h, r.res_w,
                          correct, r.want_correct);
        else
            fprintf(stderr, "accuracy fixture: under %s, %d of %d images\n",
                    RUNNING_ON_VALGRIND ? "valgrind" : "ASan", count, r.all);
        fixture_free(&r);
    }
}
END_TEST

/* --precision auto and bf16: top-1 agreement with fp32 (the float64
 * reference's classes, which fp32 matches exactly: the test above) of at
 * least 99 % on the fixture's test images, and auto picks what the
 * precision table says for this CPU. The whole test set (10,000 images) is
 * bench/bf16_agreement.py's. */
START_TEST(test_auto_and_bf16_agree_with_fp32) {
    /* auto; bf16 where the CPU has it; bf16 through oneDNN where the build
     * has it too; bf16 on our AMX kernel where the CPU has AMX */
    int asks[4] = {PRECISION_AUTO, GEMM_BF16, GEMM_BF16, GEMM_BF16};
    int backends[4] = {GEMM_BACKEND_AUTO, GEMM_BACKEND_OWN, GEMM_BACKEND_ONEDNN, GEMM_BACKEND_AMX};
    int runs[4] = {1, cpu_has_avx512bf16(), cpu_has_avx512bf16() && dnnl_gemm_available(),
                   gemm_amx_kernel(GEMM_AMX_DEFAULT) != NULL};
    for (int a = 0; a < 4; a++) {
        if (!runs[a]) continue;
        vit_options opt = vit_default_options();
        opt.precision = asks[a];
        opt.gemm_backend = backends[a];
        fixture_run r;
        fixture_classify(&r, &opt, 0);
        const char *why;
        int pays = bf16_pays(cpu_get_features(), dispatch_amx_backend(), &why);
        if (asks[a] == PRECISION_AUTO)
            ck_assert_int_eq(r.m->precision,
                             pays && cpu_best_isa() >= CPU_ISA_AVX512 ? GEMM_BF16 : GEMM_FP32);
        else ck_assert_int_eq(r.m->precision, GEMM_BF16);
        int agree = 0, correct = 0;
        double worst = 0;
        for (int n = 0; n < r.count; n++) {
            int ours = argmax_f(r.logits + (size_t)n * r.K, r.K), theirs = 0;
            for (int k = 0; k < r.K; k++) {
                size_t i = (size_t)n * r.K + k;
                if (r.ref.data[i] > r.ref.data[(size_t)n * r.K + theirs]) theirs = k;
                double d = fabs((double)r.logits[i] - r.ref.data[i]);
                if (!(d <= worst)) worst = d;
            }
            agree += ours == theirs;
            correct += ours == r.labels[n];
        }
        fprintf(stderr,
                "accuracy fixture, precision %s (%s, gemm %s): same class as fp32 %d/%d (%.2f%%), "
                "max |logit - reference| = %.3g, top-1 %.2f%% (%s)\n",
                precision_name(asks[a]), precision_name(r.m->precision), gemm_backend_name(r.m->backend),
                agree, r.count, 100.0 * agree / r.count, worst, 100.0 * correct / r.count, why);
        ck_assert_msg(agree * 100 >= r.count * 99, "precision %s: top-1 agreement %d/%d < 99%%",
                      precision_name(asks[a]), agree, r.count);
        fixture_free(&r);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("accuracy");
    TCase *tc = tcase_create("accuracy");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_default_model_matches_pytorch);
    tcase_add_test(tc, test_auto_and_bf16_agree_with_fp32);
    suite_add_tcase(s, tc);
    return check_run(s);
}
