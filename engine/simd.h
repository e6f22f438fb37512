/* simd.h: the vector helpers the kernels share (kernels.c, attention.c, gemm.c).
 *
 * Owns: masks for the tails of AVX-512 (16 lanes) and AVX2 (8 lanes)
 * loops, AVX2 loads and stores of a partial chunk, exp() on 16 and 8 floats
 * (Cephes' expf polynomial, relative error about 1e-7) and the horizontal
 * reductions. Each function carries its own target attribute: only code
 * that a kernel table of that level calls may use it. Internal to the
 * engine. */
#ifndef COMROPE_SIMD_H
#define COMROPE_SIMD_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

/* exp(x) for 16 floats: x = n*ln2 + r, |r| <= ln2/2, exp(r) by a degree-7
 * polynomial, then scaled by 2^n (scalef handles overflow to inf and
 * underflow to 0). */
__attribute__((target("avx512f"))) static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(x, _mm512_set1_ps(88.72283905206835f));
    x = _mm512_max_ps(x, _mm512_set1_ps(-103.97207708f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static inline __mmask16 tail_mask(size_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

/* The same for a count that may be 0 or negative (lanes past the end): none. */
static inline __mmask16 tail_mask_int(int left) { return left <= 0 ? 0 : tail_mask((size_t)left); }

/* 16 floats from x (the first `left` of them; the rest 0) as bf16, one per
 * 32-bit lane's low half: vcvtneps2bf16 rounds to nearest even, denormals
 * to zero (gemm.c's act_to_bf16). Two of them, the second shifted up,
 * make bf16 pairs. */
__attribute__((target("avx512f,avx512bf16"))) static inline __m512i bf16_lanes(const float *x, int left) {
    return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(tail_mask_int(left), x)));
}

static const int32_t lane_mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* all ones in the first min(left, 8) lanes */
__attribute__((target("avx2"))) static inline __m256i mask8(size_t left) {
    return _mm256_loadu_si256((const __m256i *)(lane_mask_table + 8 - (left >= 8 ? 8 : left)));
}

/* 8 floats from p, of which the first min(left, 8) are real (the others
 * read as 0), and the store back. Full chunks take plain loads and stores:
 * on AMD cores vmaskmovps is microcoded (a store costs a dozen cycles or
 * more), and masking every chunk made the softmax, GELU and LayerNorm
 * several times slower than their arithmetic. The values are the same. */
__attribute__((target("avx2"))) static inline __m256 load8(const float *p, size_t left) {
    return left >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask8(left));
}

__attribute__((target("avx2"))) static inline void store8(float *p, size_t left, __m256 v) {
    if (left >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, mask8(left), v);
}

/* exp256: as exp512; 2^n is built in the exponent bits, so x is clamped to
 * [-87, 88] where n stays a normal exponent (exp(-87) = 1.6e-38 stands in
 * for anything smaller: an absolute error below 2e-38). */
__attribute__((target("avx2,fma"))) static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2"))) static inline float hmax256(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

__attribute__((target("avx2"))) static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2"))) static inline double hsum256d(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

#endif
