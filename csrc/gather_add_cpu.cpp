#include <cmath>
#include <cstdint>
#include <cstring>

#include "bad_index.h"
#include "ops_cpu.h"
#include "simd.h"

namespace sepfl {

namespace {

// exp(x) for x <= 0, built from float arithmetic alone so the compiler can
// vectorise the loops that call it (libm's expf/erff stop vectorisation).
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6 Taylor
// polynomial: relative error below 2e-7 on [-87, 0]. (gelu_erf multiplies the
// result by x, so a NaN input still gives NaN.)
inline float exp_nonpositive(float x) {
  x = x > -87.f ? x : -87.f;  // also maps NaN to -87: the float->int cast below must stay defined
  const float round_magic = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504f + round_magic) - round_magic;
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Exact-form GELU, x * Phi(x), with erf from the rational approximation of
// Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, so the result agrees
// with torch.nn.GELU() to float32 rounding scale).
inline float gelu_erf(float x) {
  const float z = std::fabs(x) * 0.70710678f;
  const float t = 1.f / (1.f + 0.3275911f * z);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const float erf_abs = 1.f - poly * t * exp_nonpositive(-z * z);
  return 0.5f * x * (1.f + std::copysign(erf_abs, x));
}

// One output row of gather_add, compiled for AVX-512, AVX2 and baseline x86-64
// and picked at load time (the wheel cannot assume the user's CPU).
// `brow` and `bias` may be null.
SEPFL_VECTOR_CLONES
void gather_add_row(const float* __restrict arow, const float* __restrict brow,
                    const float* __restrict bias, bool gelu, int64_t h, float* __restrict dst) {
  for (int64_t c = 0; c < h; ++c) {
    dst[c] = arow[c] + (brow ? brow[c] : 0.f) + (bias ? bias[c] : 0.f);
  }
  if (gelu) {
    for (int64_t c = 0; c < h; ++c) dst[c] = gelu_erf(dst[c]);
  }
}

}  // namespace

void gather_add_cpu(const float* a, const float* bproj, const int64_t* nbrs,
                    const int64_t* node_ids, const float* bias, bool gelu, int64_t n, int64_t k,
                    int64_t h, int64_t b, float* out) {
  check_node_ids(node_ids, b, n);
  BadIndex bad;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < b * k; ++row) {
    const int64_t u = node_ids[row / k];
    const int64_t entry = u * k + row % k;
    const int64_t v = nbrs[entry];
    const bool has_nbr = v >= 0 && v < n;
    if (!has_nbr && v != -1) bad.record(entry, v);
    gather_add_row(a + u * h, has_nbr ? bproj + v * h : nullptr, bias, gelu, h, out + row * h);
  }
  bad.raise_if_nbrs(k, n);
}

}  // namespace sepfl
