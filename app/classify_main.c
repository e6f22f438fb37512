/* classify_main.c: comrope-classify, the engine on the command line.
 *
 *   comrope-classify [--model DIR] [--resolution N | HxW | native]
 *                    [--fit resize|crop] [--top-k K] [--logits] [--threads T]
 *                    [--precision fp32|bf16|auto] [--isa auto|avx512|avx2|scalar]
 *                    [--dump-stages DIR] FILE...
 *
 * FILE is a JPEG, a PNG, or a .npy float32/float64 array [C,H,W] or
 * [N,C,H,W] of already normalized pixels (run at its own size). One JSON
 * object per image per line, in input order; a file that fails gives
 * {"file", "error"} and the exit status 1, the others still run. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "image.h"
#include "input.h"
#include "model_path.h"
#include "npy.h"
#include "proto.h" /* proto_utf8_sanitize */
#include "small_file.h"
#include "vit.h"

static void usage(FILE *out) {
    fprintf(out, "usage: comrope-classify [--model DIR] [--resolution N|HxW|native] [--fit resize|crop]\n"
                 "                        [--top-k K] [--logits] [--threads T] [--precision fp32|bf16|auto]\n"
                 "                        [--isa auto|avx512|avx2|scalar] [--dump-stages DIR] FILE...\n"
                 "Options may also come between and after the files; -- ends them.\n"
                 "--dump-stages DIR: write each image's residual stream after every stage of the\n"
                 "forward to DIR/image<I>_stage<S>.npy (T, D) (debugging parity layer by layer:\n"
                 "tools/parity_stages.py compares them with the reference).\n"
                 "FILE: JPEG, PNG, or .npy float array [C,H,W] / [N,C,H,W] of normalized pixels.\n"
                 "Prints one JSON object per image per line.\n");
}

/* Files are read whole; 256 MiB is far beyond any image we would accept. A
 * pipe is read too (`comrope-classify <(curl -s URL)`, /dev/stdin); a FIFO
 * no one writes is refused, not waited on, a device or a directory at once
 * (small_file_read). */
#define CLI_FILE_MAX_BYTES (256u << 20)

static void print_json(json_t *obj) {
    char *s = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(9) | JSON_PRESERVE_ORDER);
    if (s) {
        puts(s);
        free(s);
    }
    json_decref(obj);
}

/* A file's name or a message as a JSON string. A Linux file name is any
 * bytes, and jansson makes no string of bytes that are not UTF-8: the
 * line of "caf\xe9.png" had no "file" at all. Such bytes become '?'. */
static json_t *json_text(const char *s) {
    char *clean = proto_utf8_sanitize(s);
    json_t *j = clean ? json_string(clean) : NULL;
    free(clean);
    return j;
}

static void print_error(const char *file, const char *msg) {
    /* the file readers' messages start with the path (what a daemon's log
     * needs); here "file" says it already */
    size_t n = strlen(file);
    if (strncmp(msg, file, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ') msg += n + 2;
    json_t *o = json_object();
    json_object_set_new(o, "file", json_text(file));
    json_object_set_new(o, "error", json_text(msg));
    print_json(o);
}

/* Prints one image's result: top-k by softmax probability, logits if asked. */
static void print_result(const vit_model *m, const char *file, int index, int h, int w, const float *logits,
                         int top_k, int with_logits) {
    int K = m->cfg.num_class;
    double maxv = logits[0], sum = 0;
    for (int k = 1; k < K; k++)
        if (logits[k] > maxv) maxv = logits[k];
    for (int k = 0; k < K; k++) sum += exp((double)logits[k] - maxv);
    int *order = malloc(sizeof(int) * (size_t)K);
    if (!order) return;
    for (int k = 0; k < K; k++) order[k] = k;
    /* partial selection sort: k is small */
    for (int i = 0; i < top_k; i++)
        for (int j = i + 1; j < K; j++)
            if (logits[order[j]] > logits[order[i]]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    json_t *o = json_object(), *top = json_array();
    json_object_set_new(o, "file", json_text(file));
    json_object_set_new(o, "index", json_integer(index));
    json_object_set_new(o, "resolution", json_pack("[ii]", h, w));
    for (int i = 0; i < top_k; i++) {
        int k = order[i];
        const char *label = vit_config_label(&m->cfg, k);
        char num[16];
        snprintf(num, sizeof(num), "%d", k);
        json_array_append_new(top, json_pack("{s:i,s:s,s:f}", "index", k, "label", label ? label : num,
                                             "score", exp((double)logits[k] - maxv) / sum));
    }
    json_object_set_new(o, "top", top);
    if (with_logits) {
        json_t *arr = json_array();
        for (int k = 0; k < K; k++) json_array_append_new(arr, json_real(logits[k]));
        json_object_set_new(o, "logits", arr);
    }
    print_json(o);
    free(order);
}

/* --dump-stages: each image's rows of the residual stream after every
 * stage, as DIR/image<I>_stage<S>.npy, I counting the images of the run. */
typedef struct {
    const char *dir;
    int first_image; /* the run's index of the forward's image 0 */
    int failed;
} stage_dump;

static void dump_stage(void *arg, int stage, const float *x, const int *start, int n, int T, int D) {
    stage_dump *d = arg;
    char path[4096], err[512];
    (void)T;
    for (int i = 0; i < n; i++) {
        int64_t shape[2] = {start[i + 1] - start[i], D};
        snprintf(path, sizeof(path), "%s/image%d_stage%d.npy", d->dir, d->first_image + i, stage);
        if (npy_save_f32(path, x + (size_t)start[i] * D, 2, shape, err, sizeof(err))) {
            if (!d->failed) fprintf(stderr, "comrope-classify: --dump-stages: %s\n", err);
            d->failed = 1;
        }
    }
}

/* Runs one .npy file: [C,H,W] or [N,C,H,W], at its own size. */
static int classify_npy(vit_context *ctx, int *images_done, const char *file, const uint8_t *data, size_t len,
                        int top_k, int with_logits) {
    const vit_model *m = ctx->model;
    char err[512];
    npy_array a = {0};
    vit_image *imgs = NULL;
    float *logits = NULL;
    int rc = -1;
    if (npy_parse(data, len, file, &a, err, sizeof(err))) goto fail;
    int C = m->cfg.num_channels;
    int n = a.ndim == 4 ? (int)a.shape[0] : 1;
    int off = a.ndim == 4 ? 1 : 0;
    if ((a.ndim != 3 && a.ndim != 4) || a.shape[off] != C) {
        snprintf(err, sizeof(err), "expected an array [C,H,W] or [N,C,H,W] with C = %d", C);
        goto fail;
    }
    if (n < 1 || a.shape[off + 1] > 65536 || a.shape[off + 2] > 65536) {
        snprintf(err, sizeof(err), "array shape is empty or too large");
        goto fail;
    }
    int h = (int)a.shape[off + 1], w = (int)a.shape[off + 2];
    imgs = calloc((size_t)n, sizeof(*imgs));
    logits = malloc(sizeof(float) * (size_t)n * m->cfg.num_class);
    if (!imgs || !logits) {
        snprintf(err, sizeof(err), "out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        imgs[i].h = h;
        imgs[i].w = w;
        imgs[i].pixels = a.data + (size_t)i * C * h * w;
    }
    /* in forwards of at most the context's images and tokens */
    int per = vit_tokens(m, h, w), step = ctx->params.max_images;
    if (per > 0 && ctx->params.max_tokens / per < step) step = ctx->params.max_tokens / per;
    if (step < 1) step = 1; /* an image too large: the forward names the limit */
    stage_dump *dump = ctx->params.observe_arg;
    for (int i0 = 0; i0 < n; i0 += step) {
        if (dump) dump->first_image = *images_done + i0;
        if (vit_forward_ragged(ctx, imgs + i0, n - i0 < step ? n - i0 : step,
                               logits + (size_t)i0 * m->cfg.num_class, err, sizeof(err)))
            goto fail;
    }
    for (int i = 0; i < n; i++)
        print_result(m, file, i, h, w, logits + (size_t)i * m->cfg.num_class, top_k, with_logits);
    *images_done += n;
    rc = 0;
    goto cleanup;
fail:
    print_error(file, err);
cleanup:
    npy_free(&a);
    free(imgs);
    free(logits);
    return rc;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL;
    resolution_request res = {0};
    int res_given = 0, fit = IMAGE_FIT_RESIZE, top_k = 5, with_logits = 0, threads = 0;
    vit_options opts = vit_default_options();
    vit_context_params cparams = vit_context_default_params();
    stage_dump dump = {.dir = NULL, .first_image = 0, .failed = 0};
    /* Options may come before, between or after the files (as GNU tools
     * take them; `--` ends the options): the files are gathered into
     * argv[1..nfiles] in their order as the loop passes them, over entries
     * it has read already. */
    int nfiles = 0, images_done = 0;
    char err[1024], dir[4096];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--logits") == 0) {
            with_logits = 1;
        } else if (strcmp(a, "--model") == 0 || strcmp(a, "--resolution") == 0 || strcmp(a, "--fit") == 0 ||
                   strcmp(a, "--top-k") == 0 || strcmp(a, "--threads") == 0 ||
                   strcmp(a, "--precision") == 0 || strcmp(a, "--isa") == 0 ||
                   strcmp(a, "--dump-stages") == 0) {
            if (!val) {
                fprintf(stderr, "comrope-classify: %s needs a value\n", a);
                return 2;
            }
            i++;
            char *end;
            if (strcmp(a, "--model") == 0) {
                model_dir = val;
            } else if (strcmp(a, "--resolution") == 0) {
                if (resolution_parse(val, &res, err, sizeof(err))) {
                    fprintf(stderr, "comrope-classify: --resolution: %s\n", err);
                    return 2;
                }
                res_given = 1;
            } else if (strcmp(a, "--fit") == 0) {
                if (strcmp(val, "resize") == 0) fit = IMAGE_FIT_RESIZE;
                else if (strcmp(val, "crop") == 0) fit = IMAGE_FIT_CROP;
                else {
                    fprintf(stderr, "comrope-classify: --fit must be resize or crop, not \"%s\"\n", val);
                    return 2;
                }
            } else if (strcmp(a, "--dump-stages") == 0) {
                dump.dir = val;
                cparams.observe = dump_stage;
                cparams.observe_arg = &dump;
            } else if (strcmp(a, "--isa") == 0) {
                if (cpu_isa_parse(val, &cparams.isa)) {
                    fprintf(stderr,
                            "comrope-classify: --isa must be auto, avx512, avx2 or scalar, not \"%s\"\n",
                            val);
                    return 2;
                }
            } else if (strcmp(a, "--precision") == 0) {
                if (precision_parse(val, &opts.precision)) {
                    fprintf(stderr, "comrope-classify: --precision must be fp32, bf16 or auto, not \"%s\"\n",
                            val);
                    return 2;
                }
            } else if (strcmp(a, "--top-k") == 0) {
                top_k = (int)strtol(val, &end, 10);
                if (*end || top_k < 1) {
                    fprintf(stderr, "comrope-classify: --top-k must be a positive integer, not \"%s\"\n",
                            val);
                    return 2;
                }
            } else {
                threads = (int)strtol(val, &end, 10);
                if (*end || threads < 1 || threads > 1024) {
                    fprintf(stderr, "comrope-classify: --threads must be in [1, 1024], not \"%s\"\n", val);
                    return 2;
                }
            }
        } else if (strcmp(a, "--") == 0) {
            while (++i < argc) argv[1 + nfiles++] = argv[i];
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "comrope-classify: unknown option %s\n", a);
            usage(stderr);
            return 2;
        } else {
            argv[1 + nfiles++] = argv[i];
        }
    }
    if (nfiles == 0) {
        usage(stderr);
        return 2;
    }
    /* default: every online CPU (the engine's pool also keeps OpenBLAS at one thread) */
    if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    cparams.threads = threads > 0 ? threads : 1;
    if (!model_dir) {
        if (model_path_default(dir, sizeof(dir), err, sizeof(err))) {
            fprintf(stderr, "comrope-classify: %s\n", err);
            return 1;
        }
        model_dir = dir;
    }
    vit_model *m = NULL;
    opts.isa = cparams.isa;
    if (vit_load(model_dir, &opts, &m, err, sizeof(err))) {
        fprintf(stderr, "comrope-classify: %s\n", err);
        return 1;
    }
    if (!res_given) res = resolution_default(m);
    if (top_k > m->cfg.num_class) top_k = m->cfg.num_class;
    vit_context *ctx = NULL;
    if (vit_context_new(m, &cparams, &ctx, err, sizeof(err))) {
        fprintf(stderr, "comrope-classify: %s\n", err);
        vit_free(m);
        return 1;
    }
    image_limits limits = image_limits_default();
    int failed = 0;
    for (int i = 1; i <= nfiles; i++) {
        const char *file = argv[i];
        char *text = NULL;
        size_t len = 0;
        if (small_file_read(file, CLI_FILE_MAX_BYTES, SMALL_FILE_OR_PIPE, &text, &len, err, sizeof(err))) {
            print_error(file, err);
            failed = 1;
            continue;
        }
        uint8_t *data = (uint8_t *)text;
        if (has_suffix(file, ".npy")) {
            if (classify_npy(ctx, &images_done, file, data, len, top_k, with_logits)) failed = 1;
        } else {
            float *pixels = NULL;
            float *logits = malloc(sizeof(float) * (size_t)m->cfg.num_class);
            int h = 0, w = 0;
            if (!logits ||
                input_from_encoded(m, data, len, res, fit, &limits, &pixels, &h, &w, err, sizeof(err))) {
                print_error(file, logits ? err : "out of memory");
                failed = 1;
            } else {
                vit_image img = {h, w, pixels};
                dump.first_image = images_done++;
                if (vit_forward_ragged(ctx, &img, 1, logits, err, sizeof(err))) {
                    print_error(file, err);
                    failed = 1;
                } else {
                    print_result(m, file, 0, h, w, logits, top_k, with_logits);
                }
            }
            free(pixels);
            free(logits);
        }
        free(data);
    }
    vit_context_free(ctx);
    if (dump.failed) failed = 1;
    vit_free(m);
    return failed;
}
