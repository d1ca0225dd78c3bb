#include "bad_index.h"
#include "ops_cpu.h"
#include "pairs_row.h"

namespace sepfl {

void train_pairs_cpu(const int64_t* nbrs, const int64_t* labels, int64_t n, int64_t k,
                     int64_t ranks, int64_t* dst_padded, int64_t* target_padded) {
  BadIndex bad;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t r = 1; r <= ranks; ++r) {
      const int64_t slot = i * ranks + r - 1;
      if (!train_pairs_slot(nbrs, labels, i, r, n, k, dst_padded + slot, target_padded + slot)) {
        bad.record(i * k + r, nbrs[i * k + r]);
      }
    }
  }
  bad.raise_if_nbrs(k, n);
}

}  // namespace sepfl
