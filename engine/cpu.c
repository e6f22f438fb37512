/* cpu.c: the CPU probe (see cpu.h). */
#include "cpu.h"

#include <cpuid.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
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

/* CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE; palette 1
 * (CPUID leaf 0x1D, subleaf 1) must hold the 8 tiles of 16 rows of 64
 * bytes our kernel configures (every AMX CPU so far does); the OS must
 * enable the tile state in XCR0 (bits 17, 18) and grant it to us. Sets
 * features.amx_bf16, or what is missing (amx_missing, amx_errno). */
static void probe_amx(void) {
    unsigned a, b, c, d;
    features.amx_missing = CPU_AMX_NO_CPUID;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return;
    features.amx_missing = CPU_AMX_SMALL_PALETTE;
    if (__get_cpuid_max(0, NULL) < 0x1d || !__get_cpuid_count(0x1d, 1, &a, &b, &c, &d)) return;
    if ((b >> 16) < 8 || (b & 0xffffu) < 64 || (c & 0xffffu) < 16) return; /* names, bytes per row, rows */
    features.amx_missing = CPU_AMX_NO_XCR0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return;
    features.amx_missing = CPU_AMX_NO_GRANT;
    if (syscall(SYS_arch_prctl, COMROPE_ARCH_REQ_XCOMP_PERM, COMROPE_XFEATURE_XTILEDATA) != 0) {
        features.amx_errno = errno;
        return;
    }
    features.amx_missing = CPU_AMX_OK;
    features.amx_bf16 = 1;
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
    probe_amx();
}

const cpu_features *cpu_get_features(void) {
    pthread_once(&probe_once, probe);
    return &features;
}

cpu_isa cpu_best_isa(void) { return cpu_get_features()->best; }

int cpu_has_avx512bf16(void) { return cpu_get_features()->avx512bf16; }

int cpu_has_amx_bf16(void) { return cpu_get_features()->amx_bf16; }

int cpu_amx_unavailable(const cpu_features *f, char *why, size_t len) {
    switch (f->amx_missing) {
    case CPU_AMX_OK: return 0;
    case CPU_AMX_SMALL_PALETTE:
        snprintf(why, len,
                 "this CPU's AMX tile palette is smaller than 8 tiles of 16 rows of 64 bytes "
                 "(CPUID leaf 0x1D)");
        break;
    case CPU_AMX_NO_XCR0:
        snprintf(why, len,
                 "this CPU has AMX-BF16 but the OS has not enabled the tile state (XCR0 bits 17-18)");
        break;
    case CPU_AMX_NO_GRANT:
        snprintf(why, len,
                 "this CPU has AMX-BF16 but Linux did not grant the tile state: "
                 "arch_prctl(ARCH_REQ_XCOMP_PERM) failed with errno %d (%s)",
                 f->amx_errno,
                 f->amx_errno == EINVAL ? "EINVAL: a kernel before 5.16, or one without AMX support"
                 : f->amx_errno == EPERM || f->amx_errno == ENOSYS
                     ? "a seccomp filter, e.g. a container's, refused arch_prctl"
                     : "see arch_prctl(2)");
        break;
    default: snprintf(why, len, "this CPU has no AMX-BF16 (amx_bf16 and amx_tile in /proc/cpuinfo)"); break;
    }
    return 1;
}

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
