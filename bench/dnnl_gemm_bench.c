/* dnnl_gemm_bench.c: oneDNN's bf16 matmul primitive against the engine's
 * own bf16 GEMM (vdpbf16ps; gemm.h) at the token-wise GEMMs of ViT-B/16,
 * the numbers behind "is oneDNN faster here?" (issue 25).
 *
 *   comrope-dnnl-gemm-bench [--threads T] [--reps R]
 *
 * Both run out (M, N) = A (M, K) @ W^T + bias with A and out fp32 and the
 * weights prepared once (ours: bf16 panels; oneDNN: its own layout chosen
 * through format_tag_any and reordered once). oneDNN takes bf16 A (2.6 has
 * no f32 x bf16 matmul), so its time includes converting A, as the engine
 * would have to. oneDNN threads through OpenMP (OMP_NUM_THREADS is set to
 * --threads), ours through its pool. On a CPU with AMX, our AMX kernel
 * (gemm_amx_kernel: the same bf16 panels through the tiles) runs in turn
 * with the two (amx_gflops; null elsewhere), with its largest difference
 * from our vdpbf16ps kernel, and so does its 2 x 2 block (amx22_gflops,
 * amx22_over_amx: which block to keep; amx22_same_bits: it must give the
 * 1 x 3 block's bits). Prints one JSON line per shape. */
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gemm.h"
#include "parallel.h"

#define CHECK(x)                                                                                             \
    do {                                                                                                     \
        dnnl_status_t s_ = (x);                                                                              \
        if (s_ != dnnl_success) {                                                                            \
            fprintf(stderr, "dnnl-gemm-bench: %s: status %d\n", #x, (int)s_);                                \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint16_t to_bf16(float f) { /* round to nearest even, as gemm.c packs */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

int main(int argc, char **argv) {
    int threads = 2, reps = 10;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--reps") == 0) reps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: comrope-dnnl-gemm-bench [--threads T] [--reps R]\n");
            return 2;
        }
    }
    char tbuf[16];
    snprintf(tbuf, sizeof(tbuf), "%d", threads);
    setenv("OMP_NUM_THREADS", tbuf, 1);

    kernel_table kt;
    char err[256];
    if (kernel_table_init(&kt, CPU_ISA_BEST, err, sizeof(err)) || !kt.gemm_bf16) {
        fprintf(stderr, "dnnl-gemm-bench: this CPU has no bf16 GEMM of ours (%s)\n", err);
        return 77;
    }
    kernel_table ka = kt, kb = kt; /* our AMX kernel's two blocks, where the CPU has AMX */
    ka.gemm_bf16 = gemm_amx_kernel(GEMM_AMX_1X3);
    kb.gemm_bf16 = gemm_amx_kernel(GEMM_AMX_2X2);
    thread_pool *pool = thread_pool_new(threads);
    dnnl_engine_t eng;
    dnnl_stream_t st;
    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&st, eng, dnnl_stream_default_flags));

    /* tokens: 197 (224), 577 (384); batch 1 and 8 */
    const int Ms[] = {197, 8 * 197, 577, 8 * 577};
    const int NK[][2] = {{2304, 768}, {768, 768}, {3072, 768}, {768, 3072}};
    const char *names[] = {"qkv", "out", "fc1", "fc2"};
    for (int mi = 0; mi < 4; mi++)
        for (int s = 0; s < 4; s++) {
            int M = Ms[mi], N = NK[s][0], K = NK[s][1];
            float *W = malloc((size_t)N * K * 4), *A = malloc((size_t)M * K * 4);
            float *bias = malloc((size_t)N * 4), *o1 = malloc((size_t)M * N * 4);
            float *o2 = malloc((size_t)M * N * 4), *o3 = malloc((size_t)M * N * 4);
            float *o4 = malloc((size_t)M * N * 4);
            uint16_t *Ab = malloc((size_t)M * K * 2), *Wb = malloc((size_t)N * K * 2);
            srand(1);
            for (size_t i = 0; i < (size_t)N * K; i++) W[i] = (float)rand() / (float)RAND_MAX - 0.5f;
            for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)rand() / (float)RAND_MAX - 0.5f;
            for (int i = 0; i < N; i++) bias[i] = (float)i / N;
            for (size_t i = 0; i < (size_t)N * K; i++) Wb[i] = to_bf16(W[i]);

            /* ours */
            packed_weight pw;
            if (gemm_pack(W, N, K, GEMM_BF16, &pw)) return 1;
            float *scratch =
                aligned_alloc(64, (gemm_scratch_floats(&kt, M, K, GEMM_BF16) * 4 + 63) / 64 * 64);
            double t_ours[64], t_dnnl[64], t_amx[64], t_amx22[64];
            if (reps > 64) reps = 64;

            /* oneDNN: src (M, K) bf16, weights (K, N) from W (N, K) = tag ba */
            dnnl_memory_desc_t src_md, wplain_md, wany_md, bias_md, dst_md;
            dnnl_dims_t sd = {M, K}, wd = {K, N}, bd = {1, N}, dd = {M, N};
            CHECK(dnnl_memory_desc_init_by_tag(&src_md, 2, sd, dnnl_bf16, dnnl_ab));
            CHECK(dnnl_memory_desc_init_by_tag(&wplain_md, 2, wd, dnnl_bf16, dnnl_ba));
            CHECK(dnnl_memory_desc_init_by_tag(&wany_md, 2, wd, dnnl_bf16, dnnl_format_tag_any));
            CHECK(dnnl_memory_desc_init_by_tag(&bias_md, 2, bd, dnnl_f32, dnnl_ab));
            CHECK(dnnl_memory_desc_init_by_tag(&dst_md, 2, dd, dnnl_f32, dnnl_ab));
            dnnl_matmul_desc_t md;
            CHECK(dnnl_matmul_desc_init(&md, &src_md, &wany_md, &bias_md, &dst_md));
            dnnl_primitive_desc_t pd;
            CHECK(dnnl_primitive_desc_create(&pd, &md, NULL, eng, NULL));
            const char *impl = NULL;
            CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
            const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
            dnnl_memory_t wplain, wmem, smem, bmem, dmem;
            CHECK(dnnl_memory_create(&wplain, &wplain_md, eng, Wb));
            CHECK(dnnl_memory_create(&wmem, wmd, eng, DNNL_MEMORY_ALLOCATE));
            dnnl_primitive_desc_t rpd;
            CHECK(dnnl_reorder_primitive_desc_create(&rpd, &wplain_md, eng, wmd, eng, NULL));
            dnnl_primitive_t reorder, mm;
            CHECK(dnnl_primitive_create(&reorder, rpd));
            dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, wplain}, {DNNL_ARG_TO, wmem}};
            CHECK(dnnl_primitive_execute(reorder, st, 2, rargs));
            CHECK(dnnl_stream_wait(st));
            CHECK(dnnl_primitive_create(&mm, pd));
            CHECK(dnnl_memory_create(&smem, &src_md, eng, Ab));
            CHECK(dnnl_memory_create(&bmem, &bias_md, eng, bias));
            CHECK(dnnl_memory_create(&dmem, &dst_md, eng, o2));
            dnnl_exec_arg_t args[4] = {
                {DNNL_ARG_SRC, smem}, {DNNL_ARG_WEIGHTS, wmem}, {DNNL_ARG_BIAS, bmem}, {DNNL_ARG_DST, dmem}};
            /* alternating, so that both see the same load of a shared host */
            for (int r = -2; r < reps; r++) {
                double t0 = now_s();
                gemm_forward(&kt, pool, o1, A, &pw, bias, M, scratch);
                if (r >= 0) t_ours[r] = now_s() - t0;
                t0 = now_s();
                for (size_t i = 0; i < (size_t)M * K; i++) Ab[i] = to_bf16(A[i]);
                CHECK(dnnl_primitive_execute(mm, st, 4, args));
                CHECK(dnnl_stream_wait(st));
                if (r >= 0) t_dnnl[r] = now_s() - t0;
                if (!ka.gemm_bf16) continue;
                t0 = now_s();
                gemm_forward(&ka, pool, o3, A, &pw, bias, M, scratch);
                if (r >= 0) t_amx[r] = now_s() - t0;
                t0 = now_s();
                gemm_forward(&kb, pool, o4, A, &pw, bias, M, scratch);
                if (r >= 0) t_amx22[r] = now_s() - t0;
            }
            double maxd = 0, maxv = 0, maxd_amx = 0;
            for (size_t i = 0; i < (size_t)M * N; i++) {
                double d = fabs((double)o1[i] - o2[i]);
                if (d > maxd) maxd = d;
                if (fabs(o1[i]) > maxv) maxv = fabs(o1[i]);
                if (ka.gemm_bf16 && fabs((double)o1[i] - o3[i]) > maxd_amx)
                    maxd_amx = fabs((double)o1[i] - o3[i]);
            }
            qsort(t_ours, reps, sizeof(double), cmp_d);
            qsort(t_dnnl, reps, sizeof(double), cmp_d);
            double gf = 2.0 * M * N * K * 1e-9;
            char amx[320] = "\"amx_gflops\": null, \"amx22_gflops\": null";
            if (ka.gemm_bf16) {
                qsort(t_amx, reps, sizeof(double), cmp_d);
                qsort(t_amx22, reps, sizeof(double), cmp_d);
                /* the 2 x 2 block computes the same sums in the same order */
                int same = memcmp(o3, o4, (size_t)M * N * 4) == 0;
                snprintf(amx, sizeof(amx),
                         "\"amx_gflops\": %.1f, \"amx_over_ours\": %.3f, \"amx_max_abs_diff\": %.3g, "
                         "\"amx22_gflops\": %.1f, \"amx22_over_amx\": %.3f, \"amx22_same_bits\": %s",
                         gf / t_amx[reps / 2], t_ours[reps / 2] / t_amx[reps / 2], maxd_amx,
                         gf / t_amx22[reps / 2], t_amx[reps / 2] / t_amx22[reps / 2],
                         same ? "true" : "false");
            }
            printf("{\"gemm\": \"%s\", \"M\": %d, \"N\": %d, \"K\": %d, \"threads\": %d, "
                   "\"ours_gflops\": %.1f, \"dnnl_gflops\": %.1f, \"dnnl_over_ours\": %.3f, "
                   "\"dnnl_impl\": \"%s\", \"max_abs_diff\": %.3g, \"max_abs\": %.3g, %s}\n",
                   names[s], M, N, K, threads, gf / t_ours[reps / 2], gf / t_dnnl[reps / 2],
                   t_ours[reps / 2] / t_dnnl[reps / 2], impl, maxd, maxv, amx);
            fflush(stdout);
            dnnl_primitive_destroy(mm);
            dnnl_primitive_destroy(reorder);
            dnnl_primitive_desc_destroy(rpd);
            dnnl_primitive_desc_destroy(pd);
            dnnl_memory_destroy(wplain);
            dnnl_memory_destroy(wmem);
            dnnl_memory_destroy(smem);
            dnnl_memory_destroy(bmem);
            dnnl_memory_destroy(dmem);
            gemm_pack_free(&pw);
            free(scratch);
            free(W);
            free(A);
            free(bias);
            free(o1);
            free(o2);
            free(o3);
            free(o4);
            free(Ab);
            free(Wb);
        }
    dnnl_stream_destroy(st);
    dnnl_engine_destroy(eng);
    thread_pool_free(pool);
    return 0;
}
