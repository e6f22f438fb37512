/* fuzz_v1.c: POST /v1/classify bodies (v1_parse), then the response to
 * what was accepted. The first byte picks the Content-Type; the rest is
 * the body. */
#include <stdint.h>

#include "fuzz_proto_common.h"

static const char *const content_types[] = {
    "application/json", "image/png", "image/jpeg", "application/json; charset=utf-8", "text/plain", NULL,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *ct = content_types[data[0] % (sizeof(content_types) / sizeof(content_types[0]))];
    proto_request req;
    memset(&req, 0, sizeof(req)); /* as the server's calloc'd request */
    char err[512];
    proto_json_meter meter;
    int metered = fuzz_meter_begin(&meter, data, size);
    int rc = v1_parse(&fuzz_pm, ct, data + 1, size - 1, &req, err, sizeof(err));
    fuzz_meter_end(&meter, metered);
    fuzz_check_outcome(rc, &req, err);
    proto_request_free(&req);
    return 0;
}
