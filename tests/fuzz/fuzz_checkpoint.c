/* fuzz_checkpoint.c: a whole checkpoint directory through vit_load
 * (config.json, model.safetensors, the shapes each implies for the other,
 * the refusal of a config that claims more than the file holds), then one
 * forward of the loaded model at two small resolutions, so that a
 * checkpoint the loader accepts can also be run.
 *
 * Input: 4 bytes (little-endian), the length of config.json; config.json;
 * then model.safetensors. Written to a directory made once (on tmpfs when
 * there is one). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gemm.h"
#include "vit.h"

static char dir[64];

static void put(const char *name, const uint8_t *data, size_t len) {
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f)) abort();
}

static void remove_dir(void) {
    char path[128];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof(dir), "%s/comrope-fuzz-XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir)) abort();
    atexit(remove_dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    size_t clen = (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 | (size_t)data[3] << 24;
    if (clen > size - 4) clen = size - 4;
    put("config.json", data + 4, clen);
    put("model.safetensors", data + 4 + clen, size - 4 - clen);
    vit_model *m;
    char err[1024];
    if (vit_load(dir, NULL, &m, err, sizeof(err))) {
        if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "vit_load: %s\n", err);
        return 0;
    }
    vit_context_params cp = vit_context_default_params(); /* one thread: the fuzzer's own */
    cp.max_images = 1;
    vit_context *ctx = NULL;
    if (vit_context_new(m, &cp, &ctx, err, sizeof(err))) {
        if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "vit_context_new: %s\n", err);
        vit_free(m);
        return 0;
    }
    int p = m->cfg.patch_size, C = m->cfg.num_channels, K = m->cfg.num_class;
    int sizes[2][2] = {{p, p}, {2 * p, 3 * p}};
    for (int i = 0; i < 2; i++) {
        int h = sizes[i][0], w = sizes[i][1];
        if (vit_check_resolution(m, h, w, err, sizeof(err))) continue;
        float *px = malloc(sizeof(float) * (size_t)C * h * w), *logits = malloc(sizeof(float) * (size_t)K);
        if (!px || !logits) abort();
        for (size_t j = 0; j < (size_t)C * h * w; j++) px[j] = (float)(j % 7) / 7.0f - 0.5f;
        vit_image im = {h, w, px};
        (void)vit_forward_ragged(ctx, &im, 1, logits, err, sizeof(err));
        free(px);
        free(logits);
    }
    vit_context_free(ctx);
    vit_free(m);
    return 0;
}
