/* engine_bench.c: images/s of the engine alone, no HTTP.
 *
 *   comrope-bench-engine --model DIR [--resolution N|HxW] [--batch B]
 *                        [--threads T] [--reps R] [--warmup W] [--precision fp32|bf16]
 *
 * Random normalized pixels, one workspace, W warm-up forwards (the arena
 * and rotation tables are built there), then R timed forwards of a batch
 * of B images; prints one JSON line with the median and the spread. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gemm.h"
#include "input.h"
#include "vit.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *res_text = NULL;
    int batch = 1, threads = 2, reps = 5, warmup = 1;
    vit_options opts = vit_default_options();
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--model") == 0) model_dir = argv[i + 1];
        else if (strcmp(argv[i], "--resolution") == 0) res_text = argv[i + 1];
        else if (strcmp(argv[i], "--batch") == 0) batch = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--reps") == 0) reps = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--warmup") == 0) warmup = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--precision") == 0)
            opts.precision = strcmp(argv[i + 1], "bf16") == 0 ? GEMM_BF16 : GEMM_FP32;
        else {
            fprintf(stderr, "comrope-bench-engine: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!model_dir || batch < 1 || threads < 1 || reps < 1 || warmup < 0) {
        fprintf(stderr, "usage: comrope-bench-engine --model DIR [--resolution N|HxW] [--batch B] "
                        "[--threads T] [--reps R] [--warmup W]\n");
        return 2;
    }
    char err[1024];
    vit_model *m = NULL;
    /* threads first: the pool also sets OpenBLAS to one thread */
    gemm_set_threads(threads);
    if (vit_load(model_dir, &opts, &m, err, sizeof(err))) {
        fprintf(stderr, "comrope-bench-engine: %s\n", err);
        return 1;
    }
    resolution_request req = resolution_default(m);
    if (res_text && resolution_parse(res_text, &req, err, sizeof(err))) {
        fprintf(stderr, "comrope-bench-engine: %s\n", err);
        return 2;
    }
    int h = req.h, w = req.w, C = m->cfg.num_channels;
    if (vit_check_resolution(m, h, w, err, sizeof(err))) {
        fprintf(stderr, "comrope-bench-engine: %s\n", err);
        return 2;
    }
    size_t per = (size_t)C * h * w;
    float *pix = malloc(sizeof(float) * per * batch);
    float *logits = malloc(sizeof(float) * (size_t)batch * m->cfg.num_class);
    vit_image *imgs = calloc((size_t)batch, sizeof(*imgs));
    double *secs = calloc((size_t)reps, sizeof(double));
    vit_workspace *ws = vit_workspace_new(m);
    unsigned st = 1;
    for (size_t i = 0; i < per * batch; i++) {
        st = st * 1103515245u + 12345u;
        pix[i] = ((st >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    for (int i = 0; i < batch; i++) imgs[i] = (vit_image){h, w, pix + per * i};
    for (int r = 0; r < warmup + reps; r++) {
        double t0 = now_s();
        if (vit_forward_ragged(m, ws, imgs, batch, logits, err, sizeof(err))) {
            fprintf(stderr, "comrope-bench-engine: %s\n", err);
            return 1;
        }
        double dt = now_s() - t0;
        if (r >= warmup) secs[r - warmup] = dt;
        fprintf(stderr, "  rep %d/%d: %.3f s\n", r + 1, warmup + reps, dt);
    }
    qsort(secs, (size_t)reps, sizeof(double), cmp_double);
    double med = secs[reps / 2];
    printf("{\"model\": \"%s\", \"pe\": \"%s\", \"resolution\": [%d, %d], \"batch\": %d, "
           "\"threads\": %d, \"kernel\": \"%s\", \"precision\": \"%s\", \"median_s\": %.6f, \"min_s\": %.6f, "
           "\"max_s\": %.6f, \"images_per_s\": %.3f}\n",
           model_dir, pe_type_name(m->cfg.custom_pe_type), h, w, batch, threads,
           gemm_kernel_name(), m->precision == GEMM_BF16 ? "bf16" : "fp32", med, secs[0], secs[reps - 1], batch / med);
    vit_workspace_free(ws);
    vit_free(m);
    free(pix); free(logits); free(imgs); free(secs);
    return 0;
}
