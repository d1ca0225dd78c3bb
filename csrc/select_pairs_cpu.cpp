#include "bad_index.h"
#include "ops_cpu.h"
#include "pairs_row.h"

namespace sepfl {

void select_pairs_cpu(const int64_t* nbrs, const float* density, int64_t n, int64_t k,
                      int64_t width, int64_t* dst_padded) {
  BadIndex bad;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = select_pairs_row(nbrs, density, i, n, k, width, dst_padded + i * width);
    if (j >= 0) bad.record(i * k + j, nbrs[i * k + j]);
  }
  bad.raise_if_nbrs(k, n);
}

}  // namespace sepfl
