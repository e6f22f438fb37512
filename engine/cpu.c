/* cpu.c: the CPU probe (see cpu.h). */
#include "cpu.h"

#include <cpuid.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Linux's arch_prctl request for an extended state component (asm/prctl.h,
 * 5.16+; spelled out so that older headers build) and the component of the
 * AMX tile data. Without the grant, the first tile instruction faults. */
#define COMROPE_ARCH_REQ_XCOMP_PERM 0x1023
#define COMROPE_XFEATURE_XTILEDATA 18

/* Written once by probe() under pthread_once, read-only afterwards. */
static cpu_features features;
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;

/* CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE; the OS must
 * enable the tile state in XCR0 (bits 17, 18) and grant it to us. */
static int probe_amx(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return 0;
    return syscall(SYS_arch_prctl, COMROPE_ARCH_REQ_XCOMP_PERM, COMROPE_XFEATURE_XTILEDATA) == 0;
}

static void probe(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) features.best = CPU_ISA_AVX512;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) features.best = CPU_ISA_AVX2;
    else features.best = CPU_ISA_SCALAR;
    features.vendor = __builtin_cpu_is("intel") ? CPU_VENDOR_INTEL
                      : __builtin_cpu_is("amd") ? CPU_VENDOR_AMD
                                                : CPU_VENDOR_OTHER;
    features.avx512bf16 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
    features.amx_bf16 = probe_amx();
}

const cpu_features *cpu_get_features(void) {
    pthread_once(&probe_once, probe);
    return &features;
}

cpu_isa cpu_best_isa(void) { return cpu_get_features()->best; }

int cpu_has_avx512bf16(void) { return cpu_get_features()->avx512bf16; }

int cpu_has_amx_bf16(void) { return cpu_get_features()->amx_bf16; }

static const char *const isa_names[] = {"scalar", "avx2", "avx512"};

const char *cpu_isa_name(cpu_isa isa) {
    return (unsigned)isa < sizeof(isa_names) / sizeof(isa_names[0]) ? isa_names[isa] : "unknown";
}

const char *cpu_vendor_name(cpu_vendor v) {
    return v == CPU_VENDOR_INTEL ? "intel" : v == CPU_VENDOR_AMD ? "amd" : "other";
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
