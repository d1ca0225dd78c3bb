#include <algorithm>
#include <vector>

#include "check.h"
#include "ops_cpu.h"

namespace sepfl {

void density_cpu(const float* sims, int64_t n, int64_t k, float rho, float* density) {
  std::vector<float> counts(static_cast<size_t>(n));
  float max_sum = 0.f, max_count = 0.f;
  bool saw_nan = false;
  // One pass computes the row sums and counts, their maxima, and (for free)
  // the NaN check: a separate scan in Python would cost as much as the kernel.
#pragma omp parallel for schedule(static) reduction(max : max_sum, max_count) reduction(|| : saw_nan)
  for (int64_t i = 0; i < n; ++i) {
    const float* row = sims + i * k;
    float sum = 0.f;
    int count = 0;
    bool row_nan = false;
    for (int64_t j = 0; j < k; ++j) {
      const float s = row[j];
      row_nan |= (s != s);
      const float c = std::min(std::max(s, 0.f), 1.f);
      sum += c;
      count += (c >= rho);
    }
    density[i] = sum;
    counts[i] = static_cast<float>(count);
    max_sum = std::max(max_sum, sum);
    max_count = std::max(max_count, counts[i]);
    saw_nan = saw_nan || row_nan;
  }
  SEPFL_CHECK(!saw_nan, "sims holds NaN");
  // An all-zero column (every similarity clipped to 0, or none >= rho) stays 0.
  const float sum_scale = max_sum > 0.f ? max_sum : 1.f;
  const float count_scale = max_count > 0.f ? max_count : 1.f;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    density[i] = 0.5f * (density[i] / sum_scale + counts[i] / count_scale);
  }
}

}  // namespace sepfl
