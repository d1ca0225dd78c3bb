// Helpers of the bfloat16 kernels compiled with AVX-512 (gather_gelu_avx512.cpp and the AMX
// kernels): an aligned buffer, lane masks, a masked bfloat16 load and the exact-form GELU.
// Include this only from files built with AVX-512 flags.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <new>

namespace sepfl {

// A buffer of n values of T on 64-byte boundaries: AMX tile rows and AVX-512 vectors that
// straddle two cache lines load at about a third of the speed.
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t n)
      : data_(static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64))) {
    if (data_ == nullptr) throw std::bad_alloc();
  }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* data() { return data_; }

 private:
  T* data_;
};

// The first min(count, 16) lanes (none for count <= 0): the mask of a row's last, partial
// vector.
inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? 0xFFFF : count > 0 ? static_cast<__mmask16>((1u << count) - 1) : 0;
}

// The `lanes` of 16 bfloat16 values at p as floats (the other lanes 0).
inline __m512 load_bf16(const uint16_t* p, __mmask16 lanes) {
  const __m256i bits = _mm256_maskz_loadu_epi16(lanes, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// Exact-form GELU x * Phi(x) of 16 floats, with Phi(|x|) = 1 - q and Phi(-|x|) = q,
// q = (1 - erf(|x| / sqrt 2)) / 2 = 1 / (2 (1 + a1 z + ... + a6 z^6)^16) for z = |x| / sqrt 2
// (Abramowitz & Stegun 7.1.28, absolute error of erf below 3e-7; the coefficients below are
// a_i / sqrt(2)^i, so the polynomial takes |x|). The reciprocal by rcp14 and one Newton step.
// Far below bfloat16's rounding.
inline __m512 gelu_avx512(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 a = _mm512_abs_ps(x);
  __m512 poly = _mm512_set1_ps(5.382975e-6f);
  poly = _mm512_fmadd_ps(poly, a, _mm512_set1_ps(4.8890636e-5f));
  poly = _mm512_fmadd_ps(poly, a, _mm512_set1_ps(3.8003575e-5f));
  poly = _mm512_fmadd_ps(poly, a, _mm512_set1_ps(3.2776263e-3f));
  poly = _mm512_fmadd_ps(poly, a, _mm512_set1_ps(2.1141006e-2f));
  poly = _mm512_fmadd_ps(poly, a, _mm512_set1_ps(4.9867347e-2f));
  poly = _mm512_fmadd_ps(poly, a, one);
  __m512 r = _mm512_rcp14_ps(poly);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(poly, r, _mm512_set1_ps(2.f)));
  r = _mm512_mul_ps(r, r);
  r = _mm512_mul_ps(r, r);
  r = _mm512_mul_ps(r, r);
  const __m512 q = _mm512_mul_ps(_mm512_mul_ps(r, r), _mm512_set1_ps(0.5f));
  const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mul_ps(x, _mm512_mask_blend_ps(negative, _mm512_sub_ps(one, q), q));
}

// GELU(a + b) of the `lanes` of 16 bfloat16 values at a and b (float32 sum, the GELU above),
// rounded to bfloat16 once: 16 bfloat16 values, 0 in the other lanes.
inline __m256i gelu_of_sum_bf16(const uint16_t* a, const uint16_t* b, __mmask16 lanes) {
  const __m512 sum = _mm512_add_ps(load_bf16(a, lanes), load_bf16(b, lanes));
  return (__m256i)_mm512_cvtneps_pbh(gelu_avx512(sum));
}

}  // namespace sepfl
