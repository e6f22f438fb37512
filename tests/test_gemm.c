/* test_gemm.c: every gemm kernel against OpenBLAS, and the row invariance
 * that ragged batches rely on (a row's result does not depend on M or on
 * where the row sits, bit for bit). */
#include <cblas.h>
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "gemm.h"
#include "kernels.h"
#include "check_run.h"
#include "engine_error.h"
#ifdef COMROPE_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

static const char *kernels[] = {"scalar", "avx2", "avx512"};
static const char *part; /* argv[1]: the level (or bf16) under test, NULL: all (main) */

/* The kernel table of level `name`; 0 when this CPU cannot run it. */
static int table(const char *name, kernel_table *kt) {
    char err[200];
    int isa;
    return cpu_isa_parse(name, &isa) == 0 && kernel_table_init(kt, isa, err, sizeof(err)) == 0;
}

static void fill(float *x, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        x[i] = ((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
}

/* out vs OpenBLAS for shapes with every kind of tail. */
START_TEST(test_kernels_match_openblas) {
    int shapes[][3] = {
        {1, 1, 1},       {5, 7, 3},   {6, 32, 16},    {13, 33, 17},   {197, 96, 64},
        {40, 100, 300},  {7, 130, 5}, {131, 50, 400}, {400, 40, 200}, /* past one pass of rows (gemm.c MC_ONE_PASS) */
        {29, 130, 1000},  /* several K blocks of every kernel, and a tail */
        {300, 100, 800}}; /* several passes and K blocks; (N >= 100: more
                                             than one AVX2 chunk of tiles for each thread) */
    int tested = 0;
    thread_pool *two = thread_pool_new(2);
    for (size_t ki = 0; ki < 3; ki++) {
        kernel_table kt;
        if (!check_part_selected(part, kernels[ki]) || !table(kernels[ki], &kt)) continue; /* CPU lacks it */
        tested++;
        /* two threads: A packed in parts, columns split */
        for (size_t s = 0; s < 2 * sizeof(shapes) / sizeof(shapes[0]); s++) {
            thread_pool *pool = s % 2 ? two : NULL;
            int M = shapes[s / 2][0], N = shapes[s / 2][1], K = shapes[s / 2][2];
            float *A = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K);
            float *b = malloc(sizeof(float) * N), *out = malloc(sizeof(float) * M * N);
            float *ref = malloc(sizeof(float) * M * N);
            /* exactly the size asked for: ASan sees a write past it */
            float *scratch = malloc(sizeof(float) * gemm_scratch_floats(&kt, M, K, GEMM_FP32));
            fill(A, (size_t)M * K, 1 + (unsigned)s);
            fill(W, (size_t)N * K, 100 + (unsigned)s);
            fill(b, (size_t)N, 7);
            packed_weight p;
            ck_assert(gemm_pack(W, N, K, GEMM_FP32, &p) == 0);
            gemm_forward(&kt, pool, out, A, &p, b, M, scratch);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, W, K, 0.0f, ref, N);
            for (int i = 0; i < M * N; i++) {
                float want = ref[i] + b[i % N];
                ck_assert_msg(fabsf(out[i] - want) <= 1e-5f * (1 + (float)K / 16),
                              "%s %dx%dx%d: element %d: %g vs %g", kernels[ki], M, N, K, i, out[i], want);
            }
            gemm_pack_free(&p);
            free(A);
            free(W);
            free(b);
            free(out);
            free(ref);
            free(scratch);
        }
    }
    ck_assert_int_ge(tested, 1);
    thread_pool_free(two);
}
END_TEST

/* Row r of a product is the same, bit for bit, computed alone or inside
 * any larger M, with one thread or two, with one K block or several. */
START_TEST(test_rows_independent_of_batch) {
    /* 401 and Mbig: rows in several passes (gemm.c, MC_ONE_PASS) */
    int N = 110, K = _i % 2 ? 800 : 150, Mmax = 61, Mbig = 600;
    kernel_table kt;
    ck_assert(table(kernels[_i / 2], &kt));
    thread_pool *two = thread_pool_new(2);
    float *A = malloc(sizeof(float) * Mbig * K), *W = malloc(sizeof(float) * N * K);
    float *one = malloc(sizeof(float) * N), *all = malloc(sizeof(float) * Mbig * N);
    float *scratch = malloc(sizeof(float) * gemm_scratch_floats(&kt, Mbig, K, GEMM_FP32));
    fill(A, (size_t)Mbig * K, 3);
    fill(W, (size_t)N * K, 4);
    packed_weight p;
    ck_assert(gemm_pack(W, N, K, GEMM_FP32, &p) == 0);
    int Ms[32], nM = 0;
    for (int M = 1; M <= Mmax; M += 3) Ms[nM++] = M;
    Ms[nM++] = 401;
    Ms[nM++] = Mbig;
    for (int threads = 1; threads <= 2; threads++) {
        thread_pool *pool = threads == 2 ? two : NULL;
        for (int mi = 0; mi < nM; mi++) {
            int M = Ms[mi];
            gemm_forward(&kt, pool, all, A, &p, NULL, M, scratch);
            for (int r = 0; r < M; r += 5) {
                gemm_forward(&kt, pool, one, A + (size_t)r * K, &p, NULL, 1, scratch);
                ck_assert_msg(memcmp(one, all + (size_t)r * N, sizeof(float) * N) == 0,
                              "row %d differs inside M=%d (threads %d)", r, M, threads);
            }
        }
    }
    thread_pool_free(two);
    gemm_pack_free(&p);
    free(A);
    free(W);
    free(one);
    free(all);
    free(scratch);
}
END_TEST

/* bf16 packing: products of bf16-rounded values summed in fp32. Compared
 * with an fp64 sum of the same rounded values (tight), and with the fp32
 * product (loose: bf16 keeps 8 significant bits). Rows stay batch-invariant. */
static float round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* The kernel table whose bf16 kernel is `which`: "bf16" (vdpbf16ps), "amx"
 * (our AMX kernel on the tiles, its 1 x 3 block), "amx-emulated" (its tile
 * instructions in C, A converted in C) or "amx-emulated-vector" (A
 * converted with AVX512-BF16, as the hardware kernel does); "amx-2x2..."
 * the same for the 2 x 2 block. 0 where this CPU lacks it. */
static int bf16_table(const char *which, kernel_table *kt) {
    if (strcmp(which, "bf16") == 0) return table("avx512", kt) && kt->gemm_bf16;
    if (!table("auto", kt)) return 0;
    int shape = strstr(which, "2x2") ? GEMM_AMX_2X2 : GEMM_AMX_1X3;
    kt->gemm_bf16 = strstr(which, "emulated") ? gemm_amx_emulated(shape, strstr(which, "vector") != NULL)
                                              : gemm_amx_kernel(shape);
    return kt->gemm_bf16 != NULL;
}

/* The 1 x 3 twin of a 2 x 2 AMX kernel's name ("amx-2x2-emulated" ->
 * "amx-emulated"), or NULL for any other. */
static const char *amx_1x3_twin(const char *which, char *buf, size_t len) {
    const char *p = strstr(which, "-2x2");
    if (!p) return NULL;
    snprintf(buf, len, "%.*s%s", (int)(p - which), which, p + 4);
    return buf;
}

static void check_bf16_kernel(const char *which) {
    kernel_table kt, emu, twin;
    ck_assert_msg(bf16_table(which, &kt), "%s: main() adds it only where it runs", which);
    /* the hardware, also against its emulation */
    int amx = strncmp(which, "amx", 3) == 0 && !strstr(which, "emulated");
    ck_assert(!amx || bf16_table(strstr(which, "2x2") ? "amx-2x2-emulated" : "amx-emulated", &emu));
    /* the 2 x 2 block, bit for bit against the 1 x 3 (the same sums in the same order) */
    char twin_name[64];
    const char *twin_of = amx_1x3_twin(which, twin_name, sizeof(twin_name));
    ck_assert(!twin_of || bf16_table(twin_of, &twin));
    double hw_vs_emulated = 0;
    thread_pool *three = thread_pool_new(3);
    /* M past 264 runs in passes of 64 rows; K past 32 packs full groups
     * of 8 rows through the vector conversion, 257 leaves an odd last block */
    /* and K past 768 runs several K blocks (partial sums reloaded from C),
     * 1601 = 768 + 768 + 65 an odd last block after full ones. AMX: 16 rows
     * per group (33: two and a row), K = 32 one whole tile step, 257 and
     * 770 a last K block (AMX: 256) of one pair padded to a whole step */
    int shapes[][3] = {{1, 1, 1},      {5, 7, 3},      {13, 50, 129}, {197, 96, 257}, {9, 130, 768},
                       {300, 50, 200}, {70, 50, 1601}, {33, 48, 32},  {16, 49, 770},  {300, 50, 1000}};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *A = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K);
        float *out = malloc(sizeof(float) * M * N), *out3 = malloc(sizeof(float) * M * N);
        float *one = malloc(sizeof(float) * N), *b = malloc(sizeof(float) * N);
        float *scratch = malloc(sizeof(float) * gemm_scratch_floats(&kt, M, K, GEMM_BF16));
        fill(A, (size_t)M * K, 11 + (unsigned)s);
        fill(W, (size_t)N * K, 12 + (unsigned)s);
        fill(b, (size_t)N, 13 + (unsigned)s);
        const float *bias = s % 2 ? b : NULL; /* half the shapes with a bias, added in fp32 */
        /* denormal activations: the vector conversion (full groups of 8 rows)
         * flushes them to zero, the scalar one (the short last group) keeps
         * a bf16 denormal that vdpbf16ps reads as zero: a row alone must
         * still give what it gives in the batch */
        for (int i = 0; i < M * K; i += 37) A[i] = (i & 1) ? 3e-39f : -5e-40f;
        packed_weight p;
        ck_assert(gemm_pack(W, N, K, GEMM_BF16, &p) == 0);
        gemm_forward(&kt, NULL, out, A, &p, bias, M, scratch);
        gemm_forward(&kt, three, out3, A, &p, bias, M, scratch);
        ck_assert_msg(memcmp(out, out3, sizeof(float) * M * N) == 0, "%s %dx%dx%d: 1 vs 3 threads", which, M,
                      N, K);
        if (amx) { /* out3 is free again: the emulation's result */
            gemm_forward(&emu, NULL, out3, A, &p, bias, M, scratch);
            for (int i = 0; i < M * N; i++) hw_vs_emulated = fmax(hw_vs_emulated, fabs(out[i] - out3[i]));
        }
        if (twin_of) {
            gemm_forward(&twin, NULL, out3, A, &p, bias, M, scratch);
            for (int i = 0; i < M * N; i++)
                ck_assert_msg(memcmp(&out[i], &out3[i], 4) == 0, "%s %dx%dx%d: element %d %g, %s gives %g",
                              which, M, N, K, i, out[i], twin_of, out3[i]);
        }
        for (int i = 0; i < M; i++)
            for (int n = 0; n < N; n++) {
                double exact = bias ? bias[n] : 0, rounded = exact;
                for (int k = 0; k < K; k++) {
                    exact += (double)A[i * K + k] * W[n * K + k];
                    rounded += (double)round_bf16(A[i * K + k]) * round_bf16(W[n * K + k]);
                }
                float got = out[(size_t)i * N + n];
                ck_assert_msg(fabs(got - rounded) <= 1e-5 * (1 + K / 16.0), "%s %dx%dx%d (%d,%d): %g vs %g",
                              which, M, N, K, i, n, got, rounded);
                ck_assert(fabs(got - exact) <= 2e-2 * sqrt((double)K));
            }
        for (int r = 0; r < M; r += 4) {
            gemm_forward(&kt, NULL, one, A + (size_t)r * K, &p, bias, 1, scratch);
            ck_assert_msg(memcmp(one, out + (size_t)r * N, sizeof(float) * N) == 0,
                          "%s %dx%dx%d: row %d alone differs from the batch", which, M, N, K, r);
        }
        gemm_pack_free(&p);
        free(A);
        free(W);
        free(out);
        free(out3);
        free(one);
        free(b);
        free(scratch);
    }
    thread_pool_free(three);
    /* the tiles against the ISA's definition of them: both within the
     * tolerance above; the figure tells whether they agree bit for bit */
    if (amx)
        fprintf(stderr, "%s: hardware vs emulated tdpbf16ps: max |difference| %g\n", which, hw_vs_emulated);
}

START_TEST(test_bf16_kernel) { check_bf16_kernel("bf16"); }
END_TEST

/* emulated with A converted in C [0, 2), with AVX512-BF16 [2, 4); on the tiles [4, 6) */
static const char *const amx_kernels[] = {
    "amx-emulated", "amx-2x2-emulated", "amx-emulated-vector", "amx-2x2-emulated-vector", "amx", "amx-2x2"};

START_TEST(test_amx_kernel) { check_bf16_kernel(amx_kernels[_i]); }
END_TEST

/* An activation as the bf16 kernels convert it, written independently of
 * gemm.c: a denormal is a zero (vcvtne2ps2bf16 flushes it), the rest rounds
 * to nearest even. */
static float act_bf16_ref(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0) return 0.0f;
    return round_bf16(f);
}

/* The AMX packing's conversion of A, exactly: with W the identity (exact
 * in bf16) each output is A's value as the tiles read it, so every bit of
 * the conversion shows, in the vector runs of 32 (AVX512-BF16) and in the
 * scalar tail: ties to even, the largest denormal as zero (plain rounding
 * would make it 0x0080, the smallest normal bf16, which the tiles would
 * not flush), the smallest normal kept, signs. */
START_TEST(test_amx_conversion_exact) {
    const char *which = amx_kernels[_i];
    kernel_table kt;
    ck_assert(bf16_table(which, &kt));
    int M = 19, N = 70, K = 70; /* K: two runs of 32, a tail of 6; M: a second, short group */
    float *A = malloc(sizeof(float) * M * K), *W = calloc((size_t)N * K, sizeof(float));
    float *out = malloc(sizeof(float) * M * N);
    float *scratch = malloc(sizeof(float) * gemm_scratch_floats(&kt, M, K, GEMM_BF16));
    fill(A, (size_t)M * K, 41);
    static const uint32_t special[] = {0x007fffffu, 0x807fffffu, 0x00800000u, 0x3f808000u,
                                       0x3f818000u, 0xbf808000u, 0x3f80ffffu, 0x00000001u};
    /* every 11th: 70 is no multiple of 11, so they land in runs and tails alike */
    for (int i = 0, j = 0; i < M * K; i += 11, j++) memcpy(&A[i], &special[j % 8], 4);
    for (int n = 0; n < N; n++) W[(size_t)n * K + n] = 1.0f;
    packed_weight p;
    ck_assert(gemm_pack(W, N, K, GEMM_BF16, &p) == 0);
    gemm_forward(&kt, NULL, out, A, &p, NULL, M, scratch);
    for (int i = 0; i < M; i++)
        for (int n = 0; n < N; n++) {
            float a = A[i * K + n], want = act_bf16_ref(a), got = out[(size_t)i * N + n];
            uint32_t bits;
            memcpy(&bits, &a, 4);
            ck_assert_msg(got == want, "%s: A[%d][%d] = %g (0x%08x) read as %g, not %g", which, i, n, a, bits,
                          got, want);
        }
    gemm_pack_free(&p);
    free(A);
    free(W);
    free(out);
    free(scratch);
}
END_TEST

/* The bf16 conversion of an activation is the same in a full group of 8
 * rows (vector) and in the short last one (scalar), also at the edges of
 * the float range: the largest denormal (which vcvtne2ps2bf16 reads as 0,
 * and plain rounding would turn into the smallest normal bf16), times 2. */
static void check_bf16_edge_values(const char *which) {
    kernel_table kt;
    ck_assert(bf16_table(which, &kt)); /* "bf16": its groups of 8 rows (AMX: test_amx_conversion_exact) */
    int M = 9, N = 3, K = 64;
    float *A = calloc((size_t)M * K, sizeof(float)), *W = malloc(sizeof(float) * N * K);
    float *out = malloc(sizeof(float) * M * N), *one = malloc(sizeof(float) * N);
    float *scratch = malloc(sizeof(float) * gemm_scratch_floats(&kt, M, K, GEMM_BF16));
    uint32_t big_denormal = 0x007fffffu;
    for (int i = 0; i < N * K; i++) W[i] = 2.0f;
    for (int r = 0; r < M; r++) memcpy(&A[r * K + 5], &big_denormal, 4); /* the rest of each row: 0 */
    packed_weight p;
    ck_assert(gemm_pack(W, N, K, GEMM_BF16, &p) == 0);
    gemm_forward(&kt, NULL, out, A, &p, NULL, M, scratch); /* rows 0-7: one full group; row 8 alone */
    gemm_forward(&kt, NULL, one, A, &p, NULL, 1, scratch); /* row 0 alone: the short group */
    for (int n = 0; n < N; n++) {
        ck_assert_msg(memcmp(&one[n], &out[n], 4) == 0, "%s: row 0 alone %g vs in a group %g", which, one[n],
                      out[n]);
        ck_assert_msg(memcmp(&out[8 * N + n], &out[n], 4) == 0, "%s: row 8 %g vs row 0 %g", which,
                      out[8 * N + n], out[n]);
    }
    gemm_pack_free(&p);
    free(A);
    free(W);
    free(out);
    free(one);
    free(scratch);
}

START_TEST(test_bf16_edge_values) { check_bf16_edge_values("bf16"); }
END_TEST

/* Activations packed as bf16 weights (attention's keys, and its values
 * transposed), read back exactly through a GEMM with the identity as A:
 * out (K, N) = I . W^T, so out[k][n] is W[n][k] as packed, which must be
 * X[n][k] (or X[k][n] transposed) rounded as activations are; the panels'
 * padding (N past 48s, K past 32s) is zero. Edge sizes: N and K odd, a
 * short last panel, a pair split by K. _i: the kernel that reads them
 * ("bf16", "amx-emulated", "amx-2x2-emulated"). */
START_TEST(test_pack_bf16_activations) {
    static const char *const which[] = {"bf16", "amx-emulated", "amx-2x2-emulated"};
    kernel_table kt;
    ck_assert(bf16_table(which[_i], &kt));
    int sizes[][2] = {{1, 1}, {17, 33}, {64, 197}, {197, 64}, {50, 70}};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
        for (int transposed = 0; transposed <= 1; transposed++) {
            int N = sizes[s][0], K = sizes[s][1], ld = (transposed ? N : K) + 3;
            int rows = transposed ? K : N;
            float *X = malloc(sizeof(float) * (size_t)rows * ld),
                  *ident = calloc((size_t)K * K, sizeof(float));
            float *out = malloc(sizeof(float) * (size_t)K * N);
            /* 64-byte aligned, as the kernels read the panels */
            uint32_t *words =
                aligned_alloc(64, (sizeof(uint32_t) * gemm_bf16_act_words(N, K) + 63) / 64 * 64);
            float *scratch = malloc(sizeof(float) * gemm_bf16_scratch_floats(K, K));
            fill(X, (size_t)rows * ld, 50 + (unsigned)s);
            for (int i = 0; i < rows * ld; i += 29) X[i] = (i & 1) ? 3e-39f : -0.5f; /* a denormal, a tie */
            for (int k = 0; k < K; k++) ident[(size_t)k * K + k] = 1.0f;
            packed_weight p;
            memset(words, 0xff, sizeof(uint32_t) * gemm_bf16_act_words(N, K)); /* reused scratch: anything */
            gemm_pack_bf16_act(X, ld, transposed, N, K, words, &p);
            ck_assert_int_eq(p.N, N);
            ck_assert_ptr_eq(p.bf16, words);
            /* the padding, read from the layout (gemm.h): columns past N,
             * pair rows past K, the odd half of a last pair */
            for (int j = 0; j < p.panels; j++)
                for (int k2 = 0; k2 < p.prows; k2++)
                    for (int c = 0; c < GEMM_PANEL; c++) {
                        uint32_t w = words[((size_t)j * p.prows + k2) * GEMM_PANEL + c];
                        if (j * GEMM_PANEL + c >= N || 2 * k2 >= K)
                            ck_assert_msg(w == 0, "%dx%d transposed %d: padding (%d, %d, %d) is 0x%08x", N, K,
                                          transposed, j, k2, c, w);
                        else if (2 * k2 + 1 >= K)
                            ck_assert_msg(w >> 16 == 0, "%dx%d transposed %d: half pair (%d, %d) is 0x%08x",
                                          N, K, transposed, k2, c, w);
                    }
            gemm_forward(&kt, NULL, out, ident, &p, NULL, K, scratch);
            for (int k = 0; k < K; k++)
                for (int n = 0; n < N; n++) {
                    float x = transposed ? X[(size_t)k * ld + n] : X[(size_t)n * ld + k];
                    ck_assert_msg(out[(size_t)k * N + n] == act_bf16_ref(x),
                                  "%s %dx%d transposed %d: W[%d][%d] = %g read back as %g, not %g", which[_i],
                                  N, K, transposed, n, k, x, out[(size_t)k * N + n], act_bf16_ref(x));
                }
            free(X);
            free(ident);
            free(out);
            free(words);
            free(scratch);
        }
}
END_TEST

/* gemm_forward_act is gemm_forward then activation_forward, bit for bit, on
 * every kernel (and bf16), 1 and 3 threads, with tails, several passes of
 * rows and several K blocks: the forward fuses the activation only for
 * large outputs, so both ways must give the same logits. */
START_TEST(test_fused_activation) {
    int shapes[][3] = {{1, 1, 1}, {13, 50, 129}, {197, 100, 64}, {300, 150, 800}};
    static const activation acts[] = {ACT_GELU, ACT_QUICK_GELU, ACT_GELU_TANH, ACT_RELU};
    thread_pool *three = thread_pool_new(3);
    /* the bf16 kernels and the test part that runs each */
    static const char *const bf16_kernels[][2] = {{"bf16", "bf16"},
                                                  {"amx-emulated", "amx-emulated"},
                                                  {"amx-2x2-emulated", "amx-emulated"},
                                                  {"amx", "amx"},
                                                  {"amx-2x2", "amx"}};
    for (int ki = 0; ki < 8; ki++) {
        int bf16 = ki >= 3;
        const char *name = bf16 ? bf16_kernels[ki - 3][0] : kernels[ki];
        kernel_table kt;
        if (!check_part_selected(part, bf16 ? bf16_kernels[ki - 3][1] : name)) continue;
        if (bf16 ? !bf16_table(name, &kt) : !table(name, &kt)) continue;
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
            for (int threads = 1; threads <= 3; threads += 2) {
                int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                activation act = acts[s % 4];
                thread_pool *pool = threads == 3 ? three : NULL;
                float *A = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K);
                float *b = malloc(sizeof(float) * N), *out = malloc(sizeof(float) * M * N);
                float *ref = malloc(sizeof(float) * M * N);
                float *scratch =
                    malloc(sizeof(float) * gemm_scratch_floats(&kt, M, K, bf16 ? GEMM_BF16 : GEMM_FP32));
                fill(A, (size_t)M * K, 21 + (unsigned)s);
                fill(W, (size_t)N * K, 22 + (unsigned)s);
                fill(b, (size_t)N, 23);
                packed_weight p;
                ck_assert(gemm_pack(W, N, K, bf16 ? GEMM_BF16 : GEMM_FP32, &p) == 0);
                gemm_forward(&kt, pool, ref, A, &p, b, M, scratch);
                kt.activation(ref, (size_t)M * N, act);
                gemm_forward_act(&kt, pool, out, A, &p, b, M, scratch, (int)act);
                ck_assert_msg(memcmp(out, ref, sizeof(float) * M * N) == 0,
                              "%s %dx%dx%d, %d threads: fused differs", name, M, N, K, threads);
                gemm_pack_free(&p);
                free(A);
                free(W);
                free(b);
                free(out);
                free(ref);
                free(scratch);
            }
    }
    thread_pool_free(three);
}
END_TEST

#ifdef COMROPE_HAVE_DNNL
/* oneDNN's execute, failing while fail_execute is set (test_gemm links with
 * -Wl,--wrap=dnnl_primitive_execute: tests/CMakeLists.txt). A failing call
 * returns once fail_execute calls have arrived (at most 10 s): the pieces
 * of the pool fail together, as they do on a shape oneDNN refuses (every
 * piece has it), and what they do next overlaps. fail_execute is set by
 * the test before dnnl_gemm_run (which publishes it to the pieces). */
static int fail_execute, arrived;
/* A calloc of this many floats fails (0: none; -Wl,--wrap=calloc): set
 * only around one call, with the pool's pieces idle */
static size_t fail_calloc_floats;
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size) {
    if (fail_calloc_floats && n == fail_calloc_floats && size == sizeof(float)) return NULL;
    return __real_calloc(n, size);
}
dnnl_status_t __real_dnnl_primitive_execute(const_dnnl_primitive_t p, dnnl_stream_t s, int n,
                                            const dnnl_exec_arg_t *args);
dnnl_status_t __wrap_dnnl_primitive_execute(const_dnnl_primitive_t p, dnnl_stream_t s, int n,
                                            const dnnl_exec_arg_t *args) {
    if (!fail_execute) return __real_dnnl_primitive_execute(p, s, n, args);
    __atomic_add_fetch(&arrived, 1, __ATOMIC_ACQ_REL);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do clock_gettime(CLOCK_MONOTONIC, &t);
    while (__atomic_load_n(&arrived, __ATOMIC_ACQUIRE) < fail_execute && t.tv_sec - t0.tv_sec < 10);
    return dnnl_runtime_error;
}

/* oneDNN failing in every piece of a two-thread pool at once: dnnl_gemm_run
 * says so, and gemm_forward computes the GEMM with our bf16 kernel instead
 * (its panels are kept beside oneDNN's weights for that), bit for bit what
 * that kernel gives alone; once oneDNN runs again, it answers. Each piece
 * records its failure in the job: under ThreadSanitizer (scripts/test.sh)
 * two pieces failing together were a data race on a plain int. */
START_TEST(test_onednn_failure_falls_back) {
    int M = 64, N = 48, K = 96; /* 4 blocks of 16 rows: 2 per piece */
    kernel_table kt;
    ck_assert(bf16_table("bf16", &kt));
    thread_pool *two = thread_pool_new(2);
    ck_assert_int_eq(thread_pool_threads(two), 2);
    char err[256] = "";
    float *A = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K),
          *b = malloc(sizeof(float) * N);
    float *out = malloc(sizeof(float) * M * N), *own = malloc(sizeof(float) * M * N);
    float *scratch = malloc(sizeof(float) * gemm_scratch_floats(&kt, M, K, GEMM_BF16));
    fill(A, (size_t)M * K, 5);
    fill(W, (size_t)N * K, 6);
    fill(b, (size_t)N, 7);
    packed_weight p;
    ck_assert(gemm_pack(W, N, K, GEMM_BF16, &p) == 0);
    gemm_forward(&kt, two, own, A, &p, b, M, scratch); /* our kernel: no oneDNN in kt or p yet */
    ck_assert_msg(dnnl_weight_new(W, N, K, &p.dnnl, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(dnnl_runner_new(2, &kt.dnnl, err, sizeof(err)) == 0, "%s", err);

    /* primitives made first (oneDNN's cache lock would order the pieces) */
    ck_assert_msg(dnnl_gemm_run(kt.dnnl, two, out, A, p.dnnl, b, M, (uint16_t *)scratch, err, sizeof(err)) ==
                      0,
                  "%s", err);
    fail_execute = 2; /* both pieces */
    err[0] = '\0';
    ck_assert_int_eq(dnnl_gemm_run(kt.dnnl, two, out, A, p.dnnl, b, M, (uint16_t *)scratch, err, sizeof(err)),
                     -1);
    ck_assert_msg(strstr(err, "oneDNN: no bf16 matmul of 64 rows by a 48x96 weight"), "%s", err);
    ck_assert_int_eq(arrived, 2);
    arrived = 0;
    memset(out, 0, sizeof(float) * M * N);
    gemm_forward(&kt, two, out, A, &p, b, M, scratch);
    ck_assert_mem_eq(out, own, sizeof(float) * M * N);

    fail_execute = 0;
    ck_assert_msg(dnnl_gemm_run(kt.dnnl, two, out, A, p.dnnl, b, M, (uint16_t *)scratch, err, sizeof(err)) ==
                      0,
                  "%s", err);
    for (int i = 0; i < M * N; i++) /* oneDNN's blocking sums in its own order: close, not equal */
        ck_assert_msg(fabsf(out[i] - own[i]) <= 1e-3f * (1 + fabsf(own[i])), "[%d] %g vs %g", i, out[i],
                      own[i]);

    /* no bias, and its zeros refused memory: ENGINE_ERR_MEMORY, not -1 */
    fail_calloc_floats = (size_t)N;
    ck_assert_int_eq(
        dnnl_gemm_run(kt.dnnl, two, out, A, p.dnnl, NULL, M, (uint16_t *)scratch, err, sizeof(err)),
        ENGINE_ERR_MEMORY);
    fail_calloc_floats = 0;
    ck_assert_msg(strstr(err, "out of memory"), "%s", err);
    dnnl_runner_free(kt.dnnl);
    gemm_pack_free(&p);
    thread_pool_free(two);
    free(A);
    free(W);
    free(b);
    free(out);
    free(own);
    free(scratch);
}
END_TEST
#endif

/* argv[1]: avx512, avx2, scalar (that level's kernel), bf16 (the
 * vdpbf16ps kernel), amx-emulated (our AMX kernel, its tiles in C: any
 * CPU), amx (on the tiles) or onednn (oneDNN's bf16 matmul failing, and
 * the fallback to our kernel); none: every part this CPU runs. */
int main(int argc, char **argv) {
    part = argc > 1 ? argv[1] : NULL;
    if (check_part_missing(part)) return check_skip(part);
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("gemm");
    tcase_set_timeout(tc, 120);
    if (check_part_selected(part, "scalar") || check_part_selected(part, "avx2") ||
        check_part_selected(part, "avx512"))
        tcase_add_test(tc, test_kernels_match_openblas);
    /* the row invariance of the named level; with none, of the best (as
     * the engine runs it: the full set under valgrind would be slow) */
    for (int i = 0; i < 3; i++)
        if (part ? strcmp(part, kernels[i]) == 0 : i == (int)cpu_best_isa())
            tcase_add_loop_test(tc, test_rows_independent_of_batch, 2 * i,
                                2 * i + (i == CPU_ISA_SCALAR ? 1 : 2)); /* scalar: one K block (time) */
    if (check_part_selected(part, "bf16") && !check_part_missing("bf16")) {
        tcase_add_test(tc, test_bf16_kernel);
        tcase_add_test(tc, test_bf16_edge_values);
        /* the packing needs AVX512-BF16; read back by each bf16 kernel */
        tcase_add_loop_test(tc, test_pack_bf16_activations, 0, 3);
    }
    /* our AMX kernel: emulated everywhere (A converted in C; with
     * AVX512-BF16 also as the hardware kernel converts it), on the tiles
     * where they exist */
    if (check_part_selected(part, "amx-emulated")) {
        int vector = gemm_amx_emulated(GEMM_AMX_1X3, 1) != NULL;
        tcase_add_loop_test(tc, test_amx_kernel, 0, 2 + 2 * vector);
        tcase_add_loop_test(tc, test_amx_conversion_exact, 0, 2 + 2 * vector);
        if (!vector) printf("amx-emulated: no AVX512-BF16 here: the vector conversion of A is not checked\n");
    }
    if (check_part_selected(part, "amx") && !check_part_missing("amx")) {
        tcase_add_loop_test(tc, test_amx_kernel, 4, 6);
        tcase_add_loop_test(tc, test_amx_conversion_exact, 4, 6);
    }
#ifdef COMROPE_HAVE_DNNL
    if (check_part_selected(part, "onednn") && !check_part_missing("onednn"))
        tcase_add_test(tc, test_onednn_failure_falls_back);
#endif
    tcase_add_test(tc, test_fused_activation);
    suite_add_tcase(s, tc);
    return check_run(s);
}
