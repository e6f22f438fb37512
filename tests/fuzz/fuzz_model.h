/* fuzz_model.h: the bundled model, for the harnesses that take a request's
 * path against it (fuzz_image, fuzz_query): loaded once, in
 * LLVMFuzzerInitialize; a model that does not load aborts the run. */
#ifndef COMROPE_FUZZ_MODEL_H
#define COMROPE_FUZZ_MODEL_H

#include <stdio.h>
#include <stdlib.h>

#include "vit.h"

static inline vit_model *fuzz_load_model(const char *harness) {
    vit_model *m = NULL;
    char err[1024];
    if (vit_load(COMROPE_DEFAULT_MODEL_DIR, NULL, &m, err, sizeof(err))) {
        fprintf(stderr, "%s: %s\n", harness, err);
        abort();
    }
    return m;
}

#endif
