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

/* Ordered: a CPU that runs a level runs every level below it. */
typedef enum { CPU_ISA_SCALAR = 0, CPU_ISA_AVX2 = 1, CPU_ISA_AVX512 = 2 } cpu_isa;

/* "Best available": what a context asks for when nothing is forced. */
#define CPU_ISA_BEST (-1)

typedef enum { CPU_VENDOR_OTHER = 0, CPU_VENDOR_INTEL = 1, CPU_VENDOR_AMD = 2 } cpu_vendor;

/* What the probe found. The bf16 precision table (dispatch.h) reads it;
 * tests make their own to try CPUs this machine is not. */
typedef struct {
    cpu_isa best; /* the highest level (AVX2 means AVX2 and FMA) */
    cpu_vendor vendor;
    int avx512bf16; /* AVX512-BF16: vdpbf16ps, vcvtne2ps2bf16 */
    int amx_bf16;   /* AMX-TILE and AMX-BF16, with the tile state granted
                          by Linux (arch_prctl ARCH_REQ_XCOMP_PERM; the
                          probe asks once, process-wide) */
} cpu_features;

/* This CPU's features (probed on the first call). */
const cpu_features *cpu_get_features(void);

/* The highest level this CPU runs. */
cpu_isa cpu_best_isa(void);

/* 1 when this CPU has AVX512-BF16. */
int cpu_has_avx512bf16(void);

/* 1 when this CPU has AMX-BF16 and the process may use the tiles. */
int cpu_has_amx_bf16(void);

/* "scalar", "avx2", "avx512". */
const char *cpu_isa_name(cpu_isa isa);

/* "intel", "amd", "other". */
const char *cpu_vendor_name(cpu_vendor v);

/* The level named `name` ("scalar", "avx2", "avx512"; "auto" gives
 * CPU_ISA_BEST). Returns 0, or -1 for an unknown name. */
int cpu_isa_parse(const char *name, int *out);

#endif
