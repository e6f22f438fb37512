/* fuzz_query.c: the knobs of a raw-image request as query arguments
 * (v1_parse_query_arg, resolution_parse) and the resolution they ask for
 * resolved against an image of some size with the bundled model
 * (resolution_resolve), as the server validates a request before queueing.
 *
 * Input: 4 bytes, the image's height and width (16-bit little-endian),
 * then "key=value&key=value..." (already URL-decoded, as MHD hands them). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_model.h"
#include "fuzz_proto_common.h"
#include "fuzz_util.h"
#include "input.h"
#include "vit.h"

static vit_model *model;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    model = fuzz_load_model("fuzz_query");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    int img_h = data[0] | data[1] << 8, img_w = data[2] | data[3] << 8;
    char *query = fuzz_cstr(data + 4, size - 4), *save = NULL, err[512];
    proto_request req;
    proto_request_init(&req, &fuzz_pm, PROTO_V1);
    int rc = 0;
    for (char *arg = strtok_r(query, "&", &save); arg && !rc; arg = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(arg, '=');
        const char *value = "";
        if (eq) {
            *eq = '\0';
            value = eq + 1;
        }
        resolution_request r;
        (void)resolution_parse(value, &r, err, sizeof(err));
        rc = v1_parse_query_arg(&fuzz_pm, &req, arg, value, err, sizeof(err));
    }
    if (!rc) {
        int h, w;
        if (resolution_resolve(model, req.resolution, img_h, img_w, &h, &w, err, sizeof(err)) == 0) {
            if (h < model->cfg.patch_size || w < model->cfg.patch_size || h % model->cfg.patch_size ||
                w % model->cfg.patch_size)
                abort(); /* resolve promises a valid grid */
        } else {
            rc = 400;
        }
    }
    if (rc) {
        char *body = proto_error_json(err);
        fuzz_expect_json("error body", body, body ? strlen(body) : 0);
        free(body);
    }
    proto_request_free(&req);
    free(query);
    return 0;
}
