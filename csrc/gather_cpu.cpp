#include <cstring>

#include "bad_index.h"
#include "ops_cpu.h"

namespace sepfl {

void gather_cpu(const float* features, const int64_t* nbrs, const int64_t* node_ids, int64_t n,
                int64_t k, int64_t d, int64_t b, float* out) {
  check_node_ids(node_ids, b, n);
  BadIndex bad;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < b * k; ++row) {
    const int64_t entry = node_ids[row / k] * k + row % k;
    const int64_t v = nbrs[entry];
    float* dst = out + row * d;
    if (v >= 0 && v < n) {
      std::memcpy(dst, features + v * d, sizeof(float) * d);
    } else {
      if (v != -1) bad.record(entry, v);
      std::memset(dst, 0, sizeof(float) * d);
    }
  }
  bad.raise_if_nbrs(k, n);
}

}  // namespace sepfl
