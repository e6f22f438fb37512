/* attention.c: one head of attention per kernel level, and attention over
 * a range of heads with q and k rotated first (see kernels.h). Each level's
 * softmax lives here, fused into its head kernel: the scores of a group of
 * query rows never leave L1/L2. */
#include "kernels.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dispatch.h"
#include "gemm.h"
#include "simd.h"

/* Softmax of one row of n values, in place (lanes past n untouched). */
__attribute__((target("avx512f"), noinline)) static void softmax_row_avx512(float *row, int n) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < n; j += 16)
        mx = _mm512_max_ps(
            mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask((size_t)(n - j)), row + j));
    __m512 maxv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask((size_t)(n - j));
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), maxv));
        e = _mm512_maskz_mov_ps(m, e);
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(row + j, m, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask((size_t)(n - j));
        _mm512_mask_storeu_ps(row + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), inv));
    }
}

/* Softmax of one row of n values, in place. noinline: one call per row is
 * nothing, and the profile (bench/profile.py) then tells the softmax apart
 * from the attention around it. */
__attribute__((target("avx2,fma"), noinline)) static void softmax_row_avx2(float *row, int n) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 mx = ninf;
    for (int j = 0; j < n; j += 8) {
        __m256 v = load8(row + j, (size_t)(n - j));
        if (n - j < 8)
            v = _mm256_blendv_ps(ninf, v,
                                 _mm256_castsi256_ps(mask8((size_t)(n - j)))); /* lanes past n: -inf */
        mx = _mm256_max_ps(mx, v);
    }
    __m256 maxv = _mm256_set1_ps(hmax256(mx));
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) {
        __m256i m = mask8((size_t)(n - j));
        __m256 e = exp256(_mm256_sub_ps(load8(row + j, (size_t)(n - j)), maxv));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(m)); /* lanes past n add 0 */
        sum = _mm256_add_ps(sum, e);
        store8(row + j, (size_t)(n - j), e);
    }
    __m256 inv = _mm256_set1_ps(1.0f / hsum256(sum));
    for (int j = 0; j < n; j += 8)
        store8(row + j, (size_t)(n - j), _mm256_mul_ps(load8(row + j, (size_t)(n - j)), inv));
}

/* Columns padded to a multiple of 16 in the AVX2 attention's scratch. */
static int attn_pad(int T) { return (T + 15) & ~15; }

/* One head of attention with AVX2, six query rows at a time, all in L1/L2:
 *   Kt (hd, Tp) = k^T and Vc (T, hdp) = v, both contiguous and zero-padded
 *     (k and v sit in the qkv rows 3*D floats apart: read in place, their
 *     lines pile onto a few L1 sets and every pass refetched them);
 *   S (6, Tp): S[r] = q[i+r] Kt (16 columns per step: 12 accumulators share
 *     each load of Kt, as in the GEMM kernel), then each row's softmax over
 *     its first T values;
 *   out[i+r] = sum_j S[r][j] Vc[j], 16 output columns per step.
 * OpenBLAS pays more in packing and dispatch than these small products
 * cost (a tiny model's heads are 50 x 24). Every row's arithmetic is the
 * same whichever rows share its group (a missing row repeats row i and is
 * not stored), so rows stay independent of the batch. */
enum { ATTN_MR = 6 };

/* The two inner products of attention_head_avx2, each a 6 x 16 block with
 * 12 accumulators. Separate functions so that GCC keeps the accumulators
 * in registers (inlined into the big loop, it wrote them back to the stack
 * after every multiply-add). */
__attribute__((target("avx2,fma"), noinline)) static void
attn_qk_avx2(const float *const *qr, const float *Kt, int Tp, int hd, float *S) {
    __m256 a[ATTN_MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < ATTN_MR; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
    for (int c = 0; c < hd; c++) {
        __m256 k0 = _mm256_load_ps(Kt + (size_t)c * Tp);
        __m256 k1 = _mm256_load_ps(Kt + (size_t)c * Tp + 8);
#pragma GCC unroll 6
        for (int r = 0; r < ATTN_MR; r++) {
            __m256 qv = _mm256_broadcast_ss(qr[r] + c);
            a[r][0] = _mm256_fmadd_ps(qv, k0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(qv, k1, a[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < ATTN_MR; r++) {
        _mm256_store_ps(S + (size_t)r * Tp, a[r][0]);
        _mm256_store_ps(S + (size_t)r * Tp + 8, a[r][1]);
    }
}

__attribute__((target("avx2,fma"), noinline)) static void attn_pv_avx2(const float *S, int Tp, const float *V,
                                                                       int ldv, int T, __m256 o[][2]) {
    __m256 acc[ATTN_MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < ATTN_MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int j = 0; j < T; j++) {
        __m256 v0 = _mm256_load_ps(V + (size_t)j * ldv), v1 = _mm256_load_ps(V + (size_t)j * ldv + 8);
#pragma GCC unroll 6
        for (int r = 0; r < ATTN_MR; r++) {
            __m256 p = _mm256_broadcast_ss(S + (size_t)r * Tp + j);
            acc[r][0] = _mm256_fmadd_ps(p, v0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(p, v1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < ATTN_MR; r++) {
        o[r][0] = acc[r][0];
        o[r][1] = acc[r][1];
    }
}

/* The 8 x 8 floats in r transposed in place. */
__attribute__((target("avx2"))) static inline void transpose8(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] =
            _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]); /* rows 2i, 2i+1 interleaved: columns 0 1 4 5 */
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]); /* columns 2 3 6 7 */
    }
    for (int i = 0; i < 2; i++) /* four rows' column c in each 128-bit half */
        for (int h = 0; h < 2; h++) {
            s[4 * i + 2 * h] = _mm256_shuffle_ps(t[4 * i + h], t[4 * i + h + 2], 0x44);
            s[4 * i + 2 * h + 1] = _mm256_shuffle_ps(t[4 * i + h], t[4 * i + h + 2], 0xee);
        }
    for (int c = 0; c < 4; c++) { /* rows 0-3 then 4-7 of columns c and c + 4 */
        r[c] = _mm256_permute2f128_ps(s[c], s[c + 4], 0x20);
        r[c + 4] = _mm256_permute2f128_ps(s[c], s[c + 4], 0x31);
    }
}

/* One head's k as Kt (hd, Tp) = k^T and v as Vc (T, hdp), contiguous, the
 * columns past T and hd zero: the scratch of both attention kernels (Tp a
 * multiple of 8). k is transposed by 8 x 8 blocks in registers: copied
 * element by element it cost as much as the QK product on a small head
 * (7-9% of the daemon's CPU on the bundled model: hd 24, T 50). */
__attribute__((target("avx2"))) static void attention_copy_kv(const float *k, int ldk, const float *v,
                                                              int ldv, int T, int hd, int Tp, int hdp,
                                                              float *Kt, float *Vc) {
    for (int c0 = 0; c0 < hd; c0 += 8) {
        int nc = hd - c0 < 8 ? hd - c0 : 8;
        __m256i cols = mask8((size_t)nc);
        for (int j0 = 0; j0 < Tp; j0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) /* rows past T: the zero padding */
                r[i] = j0 + i < T ? _mm256_maskload_ps(k + (size_t)(j0 + i) * ldk + c0, cols)
                                  : _mm256_setzero_ps();
            transpose8(r);
            for (int c = 0; c < nc; c++) _mm256_storeu_ps(Kt + (size_t)(c0 + c) * Tp + j0, r[c]);
        }
    }
    for (int j = 0; j < T; j++) {
        memcpy(Vc + (size_t)j * hdp, v + (size_t)j * ldv, sizeof(float) * (size_t)hd);
        for (int c = hd; c < hdp; c++) Vc[(size_t)j * hdp + c] = 0.0f;
    }
}

__attribute__((target("avx2,fma"))) static void attention_head_avx2(float *out, int ld_out, const float *q,
                                                                    int ldq, const float *k, int ldk,
                                                                    const float *v, int ldv, float *scratch,
                                                                    int T, int hd) {
    int Tp = attn_pad(T), hdp = attn_pad(hd);
    float *Kt = scratch, *Vc = Kt + (size_t)hd * Tp, *S = Vc + (size_t)T * hdp;
    attention_copy_kv(k, ldk, v, ldv, T, hd, Tp, hdp, Kt, Vc);
    for (int i0 = 0; i0 < T; i0 += ATTN_MR) {
        int nr = T - i0 < ATTN_MR ? T - i0 : ATTN_MR;
        const float *qr[ATTN_MR];
        for (int r = 0; r < ATTN_MR; r++) qr[r] = q + (size_t)(i0 + (r < nr ? r : 0)) * ldq;
        for (int j = 0; j < Tp; j += 16) attn_qk_avx2(qr, Kt + j, Tp, hd, S + j);
        for (int r = 0; r < nr; r++) softmax_row_avx2(S + (size_t)r * Tp, T);
        for (int c0 = 0; c0 < hd; c0 += 16) {
            int left = hd - c0;
            __m256 o[ATTN_MR][2];
            attn_pv_avx2(S, Tp, Vc + c0, hdp, T, o);
            for (int r = 0; r < nr; r++) {
                float *dst = out + (size_t)(i0 + r) * ld_out + c0;
                store8(dst, (size_t)left, o[r][0]);
                if (left > 8) store8(dst + 8, (size_t)(left - 8), o[r][1]);
            }
        }
    }
}

/* The same attention with AVX-512: eight query rows at a time, 32 columns
 * per step (16 accumulators of 16 floats; Kt and Vc padded to 32). The two
 * products run at 75-85% of the FMA peak where OpenBLAS, called per head,
 * reached 34% (Zen 5 with OPENBLAS_CORETYPE=Haswell, ViT-B at 224): 7% of a
 * forward there, more at 384 where attention is a larger part. */
enum { ATTN_MR512 = 8 };
static int attn_pad32(int n) { return (n + 31) & ~31; }

__attribute__((target("avx512f"), noinline)) static void
attn_qk_avx512(const float *const *qr, const float *Kt, int Tp, int hd, float *S) {
    __m512 a[ATTN_MR512][2];
#pragma GCC unroll 8
    for (int r = 0; r < ATTN_MR512; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();
    for (int c = 0; c < hd; c++) {
        __m512 k0 = _mm512_load_ps(Kt + (size_t)c * Tp);
        __m512 k1 = _mm512_load_ps(Kt + (size_t)c * Tp + 16);
#pragma GCC unroll 8
        for (int r = 0; r < ATTN_MR512; r++) {
            __m512 qv = _mm512_set1_ps(qr[r][c]);
            a[r][0] = _mm512_fmadd_ps(qv, k0, a[r][0]);
            a[r][1] = _mm512_fmadd_ps(qv, k1, a[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ATTN_MR512; r++) {
        _mm512_store_ps(S + (size_t)r * Tp, a[r][0]);
        _mm512_store_ps(S + (size_t)r * Tp + 16, a[r][1]);
    }
}

/* out rows [0, nr) (row stride ld_out), 32 columns from c0 (left of them
 * real) = S (8, Tp) . V (T, 32 columns from V). */
__attribute__((target("avx512f"), noinline)) static void attn_pv_avx512(const float *S, int Tp,
                                                                        const float *V, int ldv, int T,
                                                                        float *out, int ld_out, int nr,
                                                                        int left) {
    __m512 acc[ATTN_MR512][2];
#pragma GCC unroll 8
    for (int r = 0; r < ATTN_MR512; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int j = 0; j < T; j++) {
        __m512 v0 = _mm512_load_ps(V + (size_t)j * ldv), v1 = _mm512_load_ps(V + (size_t)j * ldv + 16);
#pragma GCC unroll 8
        for (int r = 0; r < ATTN_MR512; r++) {
            __m512 p = _mm512_set1_ps(S[(size_t)r * Tp + j]);
            acc[r][0] = _mm512_fmadd_ps(p, v0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(p, v1, acc[r][1]);
        }
    }
    __mmask16 m0 = tail_mask((size_t)left), m1 = left > 16 ? tail_mask((size_t)(left - 16)) : 0;
    for (int r = 0; r < nr; r++) {
        _mm512_mask_storeu_ps(out + (size_t)r * ld_out, m0, acc[r][0]);
        _mm512_mask_storeu_ps(out + (size_t)r * ld_out + 16, m1, acc[r][1]);
    }
}

__attribute__((target("avx512f"))) static void attention_head_avx512(float *out, int ld_out, const float *q,
                                                                     int ldq, const float *k, int ldk,
                                                                     const float *v, int ldv, float *scratch,
                                                                     int T, int hd) {
    int Tp = attn_pad32(T), hdp = attn_pad32(hd);
    float *Kt = scratch, *Vc = Kt + (size_t)hd * Tp, *S = Vc + (size_t)T * hdp;
    attention_copy_kv(k, ldk, v, ldv, T, hd, Tp, hdp, Kt, Vc);
    for (int i0 = 0; i0 < T; i0 += ATTN_MR512) {
        int nr = T - i0 < ATTN_MR512 ? T - i0 : ATTN_MR512;
        const float *qr[ATTN_MR512];
        for (int r = 0; r < ATTN_MR512; r++) qr[r] = q + (size_t)(i0 + (r < nr ? r : 0)) * ldq;
        for (int j = 0; j < Tp; j += 32) attn_qk_avx512(qr, Kt + j, Tp, hd, S + j);
        for (int r = 0; r < nr; r++) softmax_row_avx512(S + (size_t)r * Tp, T);
        for (int c0 = 0; c0 < hd; c0 += 32)
            attn_pv_avx512(S, Tp, Vc + c0, hdp, T, out + (size_t)i0 * ld_out + c0, ld_out, nr, hd - c0);
    }
}

/* The same attention in bf16, for models loaded with bf16 compute (the
 * opt-in of gemm.h): q, k, v and the softmax's probabilities are rounded to
 * bf16 (vcvtne2ps2bf16: nearest even) and every product goes through
 * vdpbf16ps, two products into each fp32 accumulator, so the two products
 * take half the instructions of the fp32 kernels; the scores, the softmax
 * and the sums stay fp32. Layouts (pairs are 32-bit: two bf16 side by side):
 *   Kp (hd2, Tp): Kp[c2][j] = (k[j][2c2], k[j][2c2+1])   (k^T, pairs along c)
 *   Vp (T2, hdp): Vp[j2][c] = (v[2j2][c], v[2j2+1][c])   (pairs along j)
 *   Qp (8, hd2p): the group's q rows, pairs along c
 *   Sp (8, T2p):  the probabilities, pairs along j
 * Everything past T, hd is zero, so padded pairs add nothing. */

/* n (>= 0) floats of x as n/2 bf16 pairs (an odd last value paired with 0)
 * into dst, 16 pairs per step: it writes n/2 rounded up to 16 pairs (the
 * rest of the last step zero). */
__attribute__((target("avx512f,avx512bf16"))) static void pairs_bf16(const float *x, int n, uint32_t *dst) {
    for (int c = 0; c < n; c += 32) {
        __m512 lo = _mm512_maskz_loadu_ps(tail_mask_int(n - c), x + c);
        __m512 hi = _mm512_maskz_loadu_ps(tail_mask_int(n - c - 16), x + c + 16);
        _mm512_storeu_si512(dst + c / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
}

__attribute__((target("avx512f,avx512bf16"), noinline)) static void
attn_qk_bf16(const uint32_t *Qp, int hd2p, int hd2, const uint32_t *Kp, int Tp, float *S) {
    __m512 a[ATTN_MR512][2];
#pragma GCC unroll 8
    for (int r = 0; r < ATTN_MR512; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();
    for (int c = 0; c < hd2; c++) {
        __m512bh k0 = (__m512bh)_mm512_load_si512(Kp + (size_t)c * Tp);
        __m512bh k1 = (__m512bh)_mm512_load_si512(Kp + (size_t)c * Tp + 16);
#pragma GCC unroll 8
        for (int r = 0; r < ATTN_MR512; r++) {
            __m512bh qv = (__m512bh)_mm512_set1_epi32((int)Qp[r * hd2p + c]);
            a[r][0] = _mm512_dpbf16_ps(a[r][0], qv, k0);
            a[r][1] = _mm512_dpbf16_ps(a[r][1], qv, k1);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ATTN_MR512; r++) {
        _mm512_store_ps(S + (size_t)r * Tp, a[r][0]);
        _mm512_store_ps(S + (size_t)r * Tp + 16, a[r][1]);
    }
}

__attribute__((target("avx512f,avx512bf16"), noinline)) static void
attn_pv_bf16(const uint32_t *Sp, int T2p, const uint32_t *V, int ldv, int T2, float *out, int ld_out, int nr,
             int left) {
    __m512 acc[ATTN_MR512][2];
#pragma GCC unroll 8
    for (int r = 0; r < ATTN_MR512; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int j = 0; j < T2; j++) {
        __m512bh v0 = (__m512bh)_mm512_load_si512(V + (size_t)j * ldv);
        __m512bh v1 = (__m512bh)_mm512_load_si512(V + (size_t)j * ldv + 16);
#pragma GCC unroll 8
        for (int r = 0; r < ATTN_MR512; r++) {
            __m512bh p = (__m512bh)_mm512_set1_epi32((int)Sp[(size_t)r * T2p + j]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], p, v0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], p, v1);
        }
    }
    __mmask16 m0 = tail_mask((size_t)left), m1 = tail_mask_int(left - 16);
    for (int r = 0; r < nr; r++) {
        _mm512_mask_storeu_ps(out + (size_t)r * ld_out, m0, acc[r][0]);
        _mm512_mask_storeu_ps(out + (size_t)r * ld_out + 16, m1, acc[r][1]);
    }
}

/* n rounded up to a multiple of 16 (floats: 64 bytes). */
static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

/* Floats of attention_head_bf16's scratch (its parts are 32-bit either way). */
static size_t attn_bf16_floats(int T, int hd) {
    size_t Tp = (size_t)attn_pad32(T), hd2 = (size_t)(hd + 1) / 2, hdp = (size_t)attn_pad32(hd);
    size_t T2 = ((size_t)T + 1) / 2, hd2p = (hd2 + 15) & ~(size_t)15;
    return hd2 * Tp + T2 * hdp + ATTN_MR512 * Tp + ATTN_MR512 * (Tp / 2) + ATTN_MR512 * (hd2p + 16);
}

__attribute__((target("avx512f,avx512bf16"))) static void
attention_head_bf16(float *out, int ld_out, const float *q, int ldq, const float *k, int ldk, const float *v,
                    int ldv, float *scratch, int T, int hd) {
    int Tp = attn_pad32(T), hdp = attn_pad32(hd), hd2 = (hd + 1) / 2, T2 = (T + 1) / 2;
    int hd2p = (hd2 + 15) & ~15, T2p = Tp / 2;
    uint32_t *Kp = (uint32_t *)scratch, *Vp = Kp + (size_t)hd2 * Tp;
    float *S = (float *)(Vp + (size_t)T2 * hdp);
    uint32_t *Sp = (uint32_t *)(S + (size_t)ATTN_MR512 * Tp), *Qp = Sp + (size_t)ATTN_MR512 * T2p;
    /* Kp: each row of k as pairs (into Qp's space, free until the first
     * group), then scattered into its column; the columns past T are 0 */
    for (int j = 0; j < Tp; j++) {
        if (j < T) pairs_bf16(k + (size_t)j * ldk, hd, Qp);
        for (int c = 0; c < hd2; c++) Kp[(size_t)c * Tp + j] = j < T ? Qp[c] : 0;
    }
    /* Vp: rows 2j2 and 2j2+1 of v interleaved (a missing last row is 0) */
    for (int j2 = 0; j2 < T2; j2++) {
        const float *a = v + (size_t)(2 * j2) * ldv, *b = v + (size_t)(2 * j2 + 1) * ldv;
        int has_b = 2 * j2 + 1 < T;
        for (int c0 = 0; c0 < hdp; c0 += 16) {
            __m512i lo = bf16_lanes(a + c0, hd - c0), hi = bf16_lanes(b + c0, has_b ? hd - c0 : 0);
            _mm512_store_si512(Vp + (size_t)j2 * hdp + c0, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
    for (int i0 = 0; i0 < T; i0 += ATTN_MR512) {
        int nr = T - i0 < ATTN_MR512 ? T - i0 : ATTN_MR512;
        for (int r = 0; r < ATTN_MR512; r++) /* a missing row repeats row i0, not stored */
            pairs_bf16(q + (size_t)(i0 + (r < nr ? r : 0)) * ldq, hd, Qp + (size_t)r * hd2p);
        for (int j = 0; j < Tp; j += 32) attn_qk_bf16(Qp, hd2p, hd2, Kp + j, Tp, S + j);
        for (int r = 0; r < nr; r++) softmax_row_avx512(S + (size_t)r * Tp, T);
        /* the columns past T hold q.0 = 0: their pairs add 0 x 0 */
        for (int r = 0; r < ATTN_MR512; r++) pairs_bf16(S + (size_t)r * Tp, Tp, Sp + (size_t)r * T2p);
        for (int c0 = 0; c0 < hd; c0 += 32)
            attn_pv_bf16(Sp, T2p, Vp + c0, hdp, T2, out + (size_t)i0 * ld_out + c0, ld_out, nr, hd - c0);
    }
}

/* The same bf16 attention as two GEMMs on the context's bf16 GEMM kernel
 * (kt->attention_gemm; with gemm-backend amx, the AMX tiles: scores and
 * output each a tdpbf16ps GEMM): k packed as bf16 weights (N = T keys,
 * K = hd), v transposed (N = hd, K = T); then for each block of
 * ATTN_GEMM_ROWS query rows, S = q k^T (rows, T), softmax in fp32, out =
 * P v. The roundings are attention_head_bf16's (q, k, v, P to bf16,
 * products summed in fp32), the order of the sums the GEMM kernel's: a
 * row's result does not depend on its block. Scratch, 64-byte aligned
 * parts: the packed k and v, the block's q (contiguous: the GEMM reads A
 * with row stride K), S, the block's output, the GEMM's own scratch. */
enum { ATTN_GEMM_ROWS = 64 };

static size_t attn_gemm_parts(int T, int hd, size_t part[6]) {
    part[0] = round16(gemm_bf16_act_words(T, hd));  /* k as weights */
    part[1] = round16(gemm_bf16_act_words(hd, T));  /* v^T as weights */
    part[2] = round16((size_t)ATTN_GEMM_ROWS * hd); /* the block's q */
    part[3] = round16((size_t)ATTN_GEMM_ROWS * T);  /* S, then P */
    part[4] = round16((size_t)ATTN_GEMM_ROWS * hd); /* the block's output */
    part[5] = round16(gemm_bf16_scratch_floats(ATTN_GEMM_ROWS, T > hd ? T : hd));
    return part[0] + part[1] + part[2] + part[3] + part[4] + part[5];
}

__attribute__((target("avx512f"))) static void attention_head_gemm(const kernel_table *kt, float *out,
                                                                   int ld_out, const float *q, int ldq,
                                                                   const float *k, int ldk, const float *v,
                                                                   int ldv, float *scratch, int T, int hd) {
    size_t part[6];
    attn_gemm_parts(T, hd, part);
    uint32_t *kw = (uint32_t *)scratch, *vw = kw + part[0];
    float *Q = (float *)(vw + part[1]), *S = Q + part[2], *O = S + part[3], *gs = O + part[4];
    packed_weight Kw, Vw;
    gemm_pack_bf16_act(k, ldk, 0, T, hd, kw, &Kw);
    gemm_pack_bf16_act(v, ldv, 1, hd, T, vw, &Vw);
    for (int i0 = 0; i0 < T; i0 += ATTN_GEMM_ROWS) {
        int rows = T - i0 < ATTN_GEMM_ROWS ? T - i0 : ATTN_GEMM_ROWS;
        for (int r = 0; r < rows; r++)
            memcpy(Q + (size_t)r * hd, q + (size_t)(i0 + r) * ldq, sizeof(float) * hd);
        gemm_forward(kt, NULL, S, Q, &Kw, NULL, rows, gs);
        for (int r = 0; r < rows; r++) softmax_row_avx512(S + (size_t)r * T, T);
        gemm_forward(kt, NULL, O, S, &Vw, NULL, rows, gs);
        for (int r = 0; r < rows; r++)
            memcpy(out + (size_t)(i0 + r) * ld_out, O + (size_t)r * hd, sizeof(float) * hd);
    }
}

/* Row-wise softmax of a (T, T) matrix, in place: the OpenBLAS attention
 * path (plain C; the AVX2 and AVX-512 kernels fuse their softmax). */
static void softmax_rows(float *s, int T) {
    for (int i = 0; i < T; i++) {
        float *row = s + (size_t)i * T;
        float maxv = row[0];
        for (int j = 1; j < T; j++)
            if (row[j] > maxv) maxv = row[j];
        float sum = 0;
        for (int j = 0; j < T; j++) {
            row[j] = expf(row[j] - maxv);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < T; j++) row[j] *= inv;
    }
}

/* One head with OpenBLAS and the plain C softmax: the scalar table's
 * attention (scratch: the (T, T) scores). */
static void attention_head_blas(float *out, int ld_out, const float *q, int ldq, const float *k, int ldk,
                                const float *v, int ldv, float *scores, int T, int hd) {
    // scores (T,T) = q (T,hd) @ k^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, q, ldq, k, ldk, 0.0f, scores, T);
    softmax_rows(scores, T);
    // out (T,hd) = scores (T,T) @ v (T,hd)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, scores, T, v, ldv, 0.0f, out,
                ld_out);
}

/* Scratch of each level's head kernels, in floats, a multiple of 16 (the
 * 64-byte alignment of each part holds as Tp and hdp are multiples of 16). */

static size_t attn_scratch_scalar(int T, int hd) {
    (void)hd;
    return round16((size_t)T * T);
}

static size_t attn_scratch_avx2(int T, int hd) { /* Kt, Vc and S (attention_head_avx2) */
    return round16((size_t)(hd + ATTN_MR) * attn_pad(T) + (size_t)T * attn_pad(hd));
}

static size_t attn_scratch_avx512(int T, int hd) { /* the fp32 kernel's, or the bf16 one's */
    size_t n = (size_t)(hd + ATTN_MR512) * attn_pad32(T) + (size_t)T * attn_pad32(hd);
    if (attn_bf16_floats(T, hd) > n) n = attn_bf16_floats(T, hd);
    return round16(n);
}


/* The rotated copies of one head's q and k, (T, hdr) each, hdr = head_dim
 * rounded up to 16 (64-byte aligned rows), after the kernels' own scratch. */
static int rot_pad(int hd) { return (hd + 15) & ~15; }

/* The head kernels' scratch: the level's, or attention_head_gemm's where
 * the table runs bf16 attention on its GEMM (the larger of the two). */
static size_t head_scratch(const kernel_table *kt, int T, int head_dim) {
    size_t n = kt->attention_scratch(T, head_dim), part[6];
    size_t g = kt->attention_gemm ? attn_gemm_parts(T, head_dim, part) : 0;
    return g > n ? g : n;
}

size_t attention_scratch_floats(const kernel_table *kt, int T, int head_dim) {
    return head_scratch(kt, T, head_dim) + 2 * (size_t)T * rot_pad(head_dim);
}

void attention_forward(const kernel_table *kt, float *out, int ld_out, const float *qkv, float *scores, int T,
                       int heads, int head_dim, int h0, int h1, const float *rot, int npairs, int bf16) {
    int D = heads * head_dim, ld = 3 * D, hdr = rot_pad(head_dim);
    float *Qr = scores + head_scratch(kt, T, head_dim), *Kr = Qr + (size_t)T * hdr;
    attention_head_fn head = bf16 && kt->attention_head_bf16 ? kt->attention_head_bf16 : kt->attention_head;
    int on_gemm = bf16 && kt->attention_gemm;
    for (int h = h0; h < h1; h++) {
        const float *q = qkv + h * head_dim;
        const float *k = qkv + D + h * head_dim;
        const float *v = qkv + 2 * D + h * head_dim;
        int ldq = ld, ldk = ld;
        if (rot) {
            /* rotated copies, contiguous: the kernels then read q and k from
             * L1/L2 instead of rows 3*D floats apart, and the qkv rows are
             * neither written back nor read twice (rotating them in place
             * beforehand took 1.2-3.5% of a ViT-B forward on Zen 5) */
            const float *cs = rot + (size_t)(h - h0) * T * npairs * 2;
            for (int t = 0; t < T; t++) {
                const float *ct = cs + (size_t)t * npairs * 2;
                float *qd = Qr + (size_t)t * hdr, *kd = Kr + (size_t)t * hdr;
                const float *qs = q + (size_t)t * ld, *ks = k + (size_t)t * ld;
                kt->rotate_pairs(qd, qs, ct, 2 * npairs);
                kt->rotate_pairs(kd, ks, ct, 2 * npairs);
                for (int c = 2 * npairs; c < head_dim; c++) { /* channels that do not rotate */
                    qd[c] = qs[c];
                    kd[c] = ks[c];
                }
            }
            q = Qr;
            k = Kr;
            ldq = ldk = hdr;
        }
        if (on_gemm)
            attention_head_gemm(kt, out + h * head_dim, ld_out, q, ldq, k, ldk, v, ld, scores, T, head_dim);
        else head(out + h * head_dim, ld_out, q, ldq, k, ldk, v, ld, scores, T, head_dim);
    }
}

void attention_fill_table(kernel_table *kt, cpu_isa isa) {
    switch (isa) {
    case CPU_ISA_AVX512:
        kt->attention_head = attention_head_avx512;
        kt->attention_head_bf16 = cpu_has_avx512bf16() ? attention_head_bf16 : NULL;
        kt->attention_scratch = attn_scratch_avx512;
        break;
    case CPU_ISA_AVX2:
        kt->attention_head = attention_head_avx2;
        kt->attention_scratch = attn_scratch_avx2;
        break;
    case CPU_ISA_SCALAR:
        kt->attention_head = attention_head_blas;
        kt->attention_scratch = attn_scratch_scalar;
        break;
    }
}
