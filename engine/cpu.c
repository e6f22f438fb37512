/* cpu.c: the CPU probe (see cpu.h). */
#include "cpu.h"

#include <pthread.h>
#include <string.h>

/* Written once by probe() under pthread_once, read-only afterwards. */
static struct {
    cpu_isa best;
    int bf16;
} features;
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;

static void probe(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        features.best = CPU_ISA_AVX512;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        features.best = CPU_ISA_AVX2;
    else
        features.best = CPU_ISA_SCALAR;
    features.bf16 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
}

cpu_isa cpu_best_isa(void) {
    pthread_once(&probe_once, probe);
    return features.best;
}

int cpu_has_avx512bf16(void) {
    pthread_once(&probe_once, probe);
    return features.bf16;
}

static const char *const isa_names[] = {"scalar", "avx2", "avx512"};

const char *cpu_isa_name(cpu_isa isa) {
    return (unsigned)isa < sizeof(isa_names) / sizeof(isa_names[0]) ? isa_names[isa] : "unknown";
}

int cpu_isa_parse(const char *name, int *out) {
    if (strcmp(name, "auto") == 0) {
        *out = CPU_ISA_BEST;
        return 0;
    }
    for (int i = 0; i < (int)(sizeof(isa_names) / sizeof(isa_names[0])); i++)
        if (strcmp(name, isa_names[i]) == 0) {
            *out = i;
            return 0;
        }
    return -1;
}
