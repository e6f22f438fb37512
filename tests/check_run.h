/* check_run.h: the end of every Check suite's main(): run every test,
 * print the report, and turn the failures into the exit status ctest reads. */
#ifndef COMROPE_CHECK_RUN_H
#define COMROPE_CHECK_RUN_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "dnnl_gemm.h"
#include "gemm.h"

/* Suites with tests for one CPU feature run them as a ctest entry of their
 * own (`test_gemm avx512`, `test_gemm bf16`: tests/CMakeLists.txt), which
 * exits with CHECK_SKIPPED, ctest's SKIP_RETURN_CODE, after saying
 * "skipped: no X" where this CPU lacks it: never a silent pass. Run with no
 * argument, a suite runs every part this CPU has (valgrind does that). */
#define CHECK_SKIPPED 77

/* Built with AddressSanitizer (gcc defines the first, clang answers the
 * second): a test that measures the heap or the address space says
 * "skipped: ..." under it. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* Under valgrind (scripts/test.sh runs every unit-test binary in it):
 * RUNNING_ON_VALGRIND is 1, else 0 (0 too where valgrind's header is
 * missing). */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* The part named by argv[1] (NULL: all). Returns 1 when this CPU lacks
 * it: main() then returns check_skip(part). */
static inline int check_part_missing(const char *part) {
    if (!part) return 0;
    if (strcmp(part, "bf16") == 0) return !cpu_has_avx512bf16();
    /* our AMX kernel (gemm_amx_kernel), and oneDNN's AMX backend */
    if (strcmp(part, "amx") == 0) return gemm_amx_kernel(GEMM_AMX_DEFAULT) == NULL;
    if (strcmp(part, "amx-onednn") == 0) return !cpu_has_amx_bf16() || !dnnl_gemm_available();
    /* oneDNN's bf16 beside our bf16 (the model's attention) */
    if (strcmp(part, "onednn") == 0) return !dnnl_gemm_available() || !cpu_has_avx512bf16();
    int isa;
    if (cpu_isa_parse(part, &isa) != 0) return 0; /* a part that needs no feature ("fp32") */
    return isa > (int)cpu_best_isa();
}

static inline int check_skip(const char *part) {
    if (strcmp(part, "onednn") == 0 || (strcmp(part, "amx-onednn") == 0 && cpu_has_amx_bf16()))
        printf("skipped: %s\n", dnnl_gemm_available() ? "no AVX512-BF16 on this CPU"
                                                      : "this build has no oneDNN (libdnnl-dev)");
    else if (strncmp(part, "amx", 3) == 0) {
        char why[256] = "this CPU has AMX-BF16 but not AVX512-BF16, which our AMX kernel converts A with";
        cpu_amx_unavailable(cpu_get_features(), why, sizeof(why));
        printf("skipped: %s\n", why);
    } else printf("skipped: no %s on this CPU\n", strcmp(part, "bf16") == 0 ? "AVX512-BF16" : part);
    return CHECK_SKIPPED;
}

/* Whether a test of part `name` runs in this invocation (part: argv[1]). */
static inline int check_part_selected(const char *part, const char *name) {
    return !part || strcmp(part, name) == 0;
}

static inline int check_run(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
