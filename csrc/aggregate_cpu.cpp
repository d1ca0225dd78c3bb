#include <algorithm>

#include "bad_index.h"
#include "ops_cpu.h"
#include "simd.h"

namespace sepfl {

namespace {

// dst += w * src over d channels, compiled for AVX-512, AVX2 and baseline x86-64
// and picked at load time (the wheel cannot assume the user's CPU).
SEPFL_VECTOR_CLONES
void axpy_row(float w, const float* __restrict src, int64_t d, float* __restrict dst) {
  for (int64_t c = 0; c < d; ++c) dst[c] += w * src[c];
}

}  // namespace

void aggregate_cpu(const float* weights, const float* features, const int64_t* nbrs,
                   const int64_t* node_ids, int64_t n, int64_t k, int64_t d, int64_t b,
                   float* out) {
  check_node_ids(node_ids, b, n);
  BadIndex bad;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < b; ++i) {
    const int64_t u = node_ids[i];
    float* dst = out + i * d;
    std::fill(dst, dst + d, 0.f);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t v = nbrs[u * k + j];
      if (v < 0 || v >= n) {
        if (v != -1) bad.record(u * k + j, v);
        continue;
      }
      axpy_row(weights[i * k + j], features + v * d, d, dst);
    }
  }
  bad.raise_if_nbrs(k, n);
}

}  // namespace sepfl
