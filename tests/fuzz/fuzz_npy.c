/* fuzz_npy.c: npy_parse on arbitrary bytes (tests/fuzz/README.md). */
#include <stdint.h>

#include "npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    npy_array a;
    char err[512];
    if (npy_parse(data, size, "fuzz.npy", &a, err, sizeof(err)) == 0) {
        /* every float the header promised must be readable */
        volatile float sum = 0;
        for (int64_t i = 0; i < a.count; i++) sum += a.data[i];
        (void)sum;
        npy_free(&a);
    }
    return 0;
}
