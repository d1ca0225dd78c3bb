#include <vector>

#include "bad_index.h"
#include "check.h"
#include "ops_cpu.h"

namespace sepfl {

int64_t select_pairs_cpu(const int64_t* nbrs, const float* density, int64_t n, int64_t k,
                         int64_t max_per_node, int64_t* dst_padded) {
  SEPFL_CHECK(max_per_node >= 1, "max_per_node must be >= 1, got " << max_per_node);
  BadIndex bad;
  int64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* row = nbrs + i * k;
    int64_t* out = dst_padded + i * max_per_node;
    const float own = density[i];
    int64_t taken = 0;
    for (int64_t j = 0; j < k && taken < max_per_node; ++j) {
      const int64_t v = row[j];
      if (v < -1 || v >= n) {
        bad.record(i, v);
        break;
      }
      if (v < 0 || !(density[v] > own)) continue;
      bool seen = false;
      for (int64_t t = 0; t < taken; ++t) seen |= (out[t] == v);
      if (!seen) out[taken++] = v;
    }
    for (int64_t t = taken; t < max_per_node; ++t) out[t] = -1;
    total += taken;
  }
  bad.raise_if_any("nbrs", n);
  return total;
}

void compact_pairs_cpu(const int64_t* dst_padded, int64_t n, int64_t max_per_node, int64_t* src,
                       int64_t* dst) {
  int64_t p = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* row = dst_padded + i * max_per_node;
    for (int64_t t = 0; t < max_per_node && row[t] >= 0; ++t, ++p) {
      src[p] = i;
      dst[p] = row[t];
    }
  }
}

int64_t count_train_pairs_cpu(const int64_t* nbrs, int64_t n, int64_t k, int64_t ranks) {
  SEPFL_CHECK(ranks >= 1 && ranks < k, "ranks must be in [1, k), got " << ranks << " with k=" << k);
  BadIndex bad;
  int64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t r = 1; r <= ranks; ++r) {
      const int64_t v = nbrs[i * k + r];
      if (v < -1 || v >= n) bad.record(i, v);
      total += (v >= 0 && v < n && v != i);
    }
  }
  bad.raise_if_any("nbrs", n);
  return total;
}

void train_pairs_cpu(const int64_t* nbrs, const int64_t* labels, int64_t n, int64_t k,
                     int64_t ranks, int64_t* src, int64_t* dst, int64_t* target) {
  // Sequential: the output position of a row depends on every earlier row, and
  // this runs once per training job.
  int64_t p = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t r = 1; r <= ranks; ++r) {
      const int64_t v = nbrs[i * k + r];
      if (v < 0 || v >= n || v == i) continue;
      src[p] = i;
      dst[p] = v;
      target[p] = labels[i] == labels[v];
      ++p;
    }
  }
}

}  // namespace sepfl
