/* fuzz_model_config.c: a checkpoint's JSON files -- config.json
 * (vit_config_parse, with its shape rules and id2label) and
 * preprocessor_config.json (image_prep_load) -- from the same bytes. */
#include <stdint.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "image.h"
#include "model_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512], path[64];
    vit_config cfg;
    if (vit_config_parse((const char *)data, size, "config.json", &cfg, err, sizeof(err)) == 0) {
        for (int k = 0; k < cfg.num_class; k++) (void)vit_config_label(&cfg, k);
        vit_config_free(&cfg);
    }
    int fd = fuzz_memfile(data, size, path, sizeof(path));
    if (fd >= 0) {
        image_prep prep;
        image_prep_load(path, &prep, err, sizeof(err));
        close(fd);
    }
    return 0;
}
