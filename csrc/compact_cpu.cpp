#include "ops_cpu.h"

namespace sepfl {

int64_t count_entries_cpu(const int64_t* padded, int64_t size) {
  int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count)
  for (int64_t p = 0; p < size; ++p) count += padded[p] >= 0;
  return count;
}

void compact_cpu(const int64_t* padded, const int64_t* alongside, int64_t n, int64_t m,
                 int64_t* rows, int64_t* entries, int64_t* alongside_out) {
  // Sequential: where a row's entries land depends on every earlier row, and
  // the pass is a small part of the op that produced the table.
  int64_t out = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < m; ++t) {
      const int64_t p = i * m + t;
      if (padded[p] < 0) continue;
      rows[out] = i;
      entries[out] = padded[p];
      if (alongside) alongside_out[out] = alongside[p];
      ++out;
    }
  }
}

}  // namespace sepfl
