/* dispatch.c: choosing a context's kernel table (see dispatch.h). */
#include "dispatch.h"

#include <stdio.h>
#include <string.h>

#include "dnnl_gemm.h"
#include "gemm.h"

int kernel_table_init(kernel_table *kt, int isa, char *err, size_t errlen) {
    cpu_isa best = cpu_best_isa();
    if (isa == CPU_ISA_BEST) isa = (int)best;
    if (isa < CPU_ISA_SCALAR || isa > CPU_ISA_AVX512) {
        snprintf(err, errlen, "unknown instruction set level %d", isa);
        return -1;
    }
    if (isa > (int)best) {
        snprintf(err, errlen, "isa %s: this CPU runs at most %s", cpu_isa_name((cpu_isa)isa),
                 cpu_isa_name(best));
        return -1;
    }
    memset(kt, 0, sizeof(*kt));
    kt->isa = (cpu_isa)isa;
    kt->name = cpu_isa_name(kt->isa);
    kernels_fill_table(kt, kt->isa);
    attention_fill_table(kt, kt->isa);
    gemm_fill_table(kt, kt->isa);
    return 0;
}

static const char *const precision_names[] = {"fp32", "bf16"};

const char *precision_name(int precision) {
    if (precision == PRECISION_AUTO) return "auto";
    return precision == GEMM_FP32 || precision == GEMM_BF16 ? precision_names[precision] : "unknown";
}

int precision_parse(const char *name, int *out) {
    if (strcmp(name, "auto") == 0) {
        *out = PRECISION_AUTO;
        return 0;
    }
    for (int i = 0; i < 2; i++)
        if (strcmp(name, precision_names[i]) == 0) {
            *out = i;
            return 0;
        }
    return -1;
}

/* Measured rates behind each row: bench/README.md ("bf16"), issue 25. */
int bf16_pays(const cpu_features *f, int amx_backend, const char **why) {
    if (!f->avx512bf16 && !f->amx_bf16) {
        *why = "no AVX512-BF16 or AMX-BF16: the engine has no bf16 kernels for this CPU";
        return 0;
    }
    if (f->amx_bf16 && amx_backend) {
        *why = "AMX-BF16 with an AMX backend: the tiles run bf16 above the fp32 FMA peak";
        return 1;
    }
    if (f->vendor == CPU_VENDOR_AMD && f->avx512bf16) {
        *why = "AMD with AVX512-BF16 (Zen 4/5): vdpbf16ps runs at twice the fp32 FMA rate "
               "(bf16 1.44-1.70x fp32 on Zen 5)";
        return 1;
    }
    if (f->amx_bf16) {
        *why = "AMX-BF16, but this build has no AMX backend, and vdpbf16ps on Intel runs no "
               "faster than an fp32 FMA";
        return 0;
    }
    if (f->vendor == CPU_VENDOR_INTEL) {
        *why = "Intel with AVX512-BF16 but no AMX: vdpbf16ps runs no faster than an fp32 FMA "
               "(bf16 0.61x fp32 on a Xeon)";
        return 0;
    }
    *why = "AVX512-BF16 on a CPU of unmeasured bf16 speed (neither Intel nor AMD)";
    return 0;
}

int bf16_attention_pays(const cpu_features *f) { return f->vendor == CPU_VENDOR_AMD && f->avx512bf16; }

/* oneDNN drives AMX tiles by default since 2.5 (dnnl_gemm.h) */
int dispatch_amx_backend(void) { return dnnl_gemm_available(); }

int precision_choose(int requested, int isa, const cpu_features *f, int amx_backend, precision_choice *out,
                     char *err, size_t errlen) {
    if (requested != PRECISION_AUTO && requested != GEMM_FP32 && requested != GEMM_BF16) {
        snprintf(err, errlen, "unknown precision %d", requested);
        return -1;
    }
    int level = isa == CPU_ISA_BEST ? (int)f->best : isa;
    int runs = f->avx512bf16 && level >= CPU_ISA_AVX512;
    memset(out, 0, sizeof(*out));
    out->requested = requested;
    out->bf16_pays = bf16_pays(f, amx_backend, &out->why) && runs;
    if (requested == PRECISION_AUTO) {
        out->precision = out->bf16_pays ? GEMM_BF16 : GEMM_FP32;
        if (f->avx512bf16 && level < CPU_ISA_AVX512)
            out->why = "the forced instruction-set level has no bf16 kernels (they need avx512)";
        return 0;
    }
    if (requested == GEMM_BF16 && !runs) {
        if (!f->avx512bf16)
            snprintf(err, errlen, "bf16 compute needs a CPU with AVX512-BF16; this one has none");
        else snprintf(err, errlen, "bf16 compute needs isa avx512 (asked: %s)", cpu_isa_name((cpu_isa)level));
        return -1;
    }
    out->precision = requested;
    out->warn = requested == GEMM_BF16 && !out->bf16_pays;
    return 0;
}
