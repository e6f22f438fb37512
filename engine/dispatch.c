/* dispatch.c: choosing a context's kernel table (see dispatch.h). */
#include "dispatch.h"

#include <stdio.h>
#include <string.h>

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
