/* cpu.h: what this CPU can run, probed once per process.
 *
 * Owns: the instruction-set levels the engine has kernels for, their names,
 * and the one CPU probe (cpuid through GCC's builtins and <cpuid.h>, behind
 * pthread_once: the only process-wide state of the engine, written once and
 * read-only afterwards). Which kernels a computation uses is not decided
 * here but by its context (dispatch.h), which may ask for a lower level
 * than the best. */
#ifndef COMROPE_CPU_H
#define COMROPE_CPU_H

#include <stddef.h>

/* Ordered: a CPU that runs a level runs every level below it. */
typedef enum { CPU_ISA_SCALAR = 0, CPU_ISA_AVX2 = 1, CPU_ISA_AVX512 = 2 } cpu_isa;

/* "Best available": what a context asks for when nothing is forced. */
#define CPU_ISA_BEST (-1)

typedef enum { CPU_VENDOR_OTHER = 0, CPU_VENDOR_INTEL = 1, CPU_VENDOR_AMD = 2 } cpu_vendor;

/* Why the tiles are out of reach, in the order the probe checks. */
typedef enum {
    CPU_AMX_NO_CPUID = 0,      /* no AMX-BF16 and AMX-TILE (the zero of a made-up cpu_features) */
    CPU_AMX_SMALL_PALETTE = 1, /* fewer or smaller tiles than our kernel configures */
    CPU_AMX_NO_XCR0 = 2,       /* the OS has not enabled the tile state */
    CPU_AMX_NO_GRANT = 3,      /* Linux refused arch_prctl(ARCH_REQ_XCOMP_PERM): amx_errno */
    CPU_AMX_OK = 4
} cpu_amx_missing;

/* What the probe found. The bf16 precision table (dispatch.h) reads it;
 * tests make their own to try CPUs this machine is not. */
typedef struct {
    cpu_isa best; /* the highest level (AVX2 means AVX2 and FMA) */
    cpu_vendor vendor;
    int avx512bf16;              /* AVX512-BF16: vdpbf16ps, vcvtne2ps2bf16 */
    int amx_bf16;                /* AMX-TILE and AMX-BF16, with the tile state granted
                          by Linux (arch_prctl ARCH_REQ_XCOMP_PERM; the
                          probe asks once, process-wide) */
    cpu_amx_missing amx_missing; /* CPU_AMX_OK, or why amx_bf16 is 0 */
    int amx_errno;               /* CPU_AMX_NO_GRANT: arch_prctl's errno */
} cpu_features;

/* This CPU's features (probed on the first call). */
const cpu_features *cpu_get_features(void);

/* The highest level this CPU runs. */
cpu_isa cpu_best_isa(void);

/* 1 when this CPU has AVX512-BF16. */
int cpu_has_avx512bf16(void);

/* 1 when this CPU has AMX-BF16 and the process may use the tiles. */
int cpu_has_amx_bf16(void);

/* 0 where `f` (cpu_get_features()) may use the AMX tiles; else 1 and a
 * sentence for an error message in `why`: what is missing (no AMX in
 * CPUID, the OS's XCR0, Linux's grant with its errno). */
int cpu_amx_unavailable(const cpu_features *f, char *why, size_t len);

/* "scalar", "avx2", "avx512". */
const char *cpu_isa_name(cpu_isa isa);

/* "intel", "amd", "other". */
const char *cpu_vendor_name(cpu_vendor v);

/* The level named `name` ("scalar", "avx2", "avx512"; "auto" gives
 * CPU_ISA_BEST). Returns 0, or -1 for an unknown name. */
int cpu_isa_parse(const char *name, int *out);

#endif
