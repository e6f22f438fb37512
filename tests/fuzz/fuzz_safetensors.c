/* fuzz_safetensors.c: safetensors_open on an arbitrary file, then every
 * tensor it accepted converted to float32, as vit_load takes them. */
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64], err[512];
    int fd = fuzz_memfile(data, size, path, sizeof(path));
    if (fd < 0) return 0;
    safetensors_file f;
    if (safetensors_open(path, &f, err, sizeof(err)) == 0) {
        for (int i = 0; i < f.n; i++) {
            const st_tensor *t = &f.tensors[i];
            /* open checked the byte range against the shape, so count is
             * bounded by the file's size */
            float *dst = malloc(sizeof(float) * (size_t)(t->count ? t->count : 1));
            if (!dst) abort();
            safetensors_take(&f, t->name, t->ndim, t->shape, dst, err, sizeof(err));
            free(dst);
        }
        safetensors_check_all_used(&f, err, sizeof(err));
        safetensors_close(&f);
    }
    close(fd);
    return 0;
}
