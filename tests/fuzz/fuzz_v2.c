/* fuzz_v2.c: Open Inference Protocol v2 infer bodies (v2_parse_infer),
 * JSON and the binary tensor extension, then the response to what was
 * accepted. The first 4 bytes (little-endian) are the
 * Inference-Header-Content-Length (0: the body is all JSON); the rest is
 * the body. */
#include <stdint.h>

#include "fuzz_proto_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    size_t header_len =
        (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 | (size_t)data[3] << 24;
    proto_request req;
    memset(&req, 0, sizeof(req)); /* as the server's calloc'd request */
    char err[512];
    proto_json_meter meter;
    int metered = fuzz_meter_begin(&meter, data, size);
    int rc = v2_parse_infer(&fuzz_pm, data + 4, size - 4, header_len, &req, err, sizeof(err));
    fuzz_meter_end(&meter, metered);
    fuzz_check_outcome(rc, &req, err);
    proto_request_free(&req);
    return 0;
}
