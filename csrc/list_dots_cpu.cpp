#include <limits>

#include "bad_index.h"
#include "ops_cpu.h"
#include "simd.h"

namespace sepfl {

namespace {

// Partial sums of a dot product: channel c goes to sum c % kLanes, and the sums are added
// in order at the end. The order is the code's, not the compiler's (no reassociation), so a
// dot product has the same bits whichever call, block or thread computes it.
constexpr int64_t kLanes = 16;

SEPFL_VECTOR_CLONES
float dot(const float* __restrict a, const float* __restrict b, int64_t d) {
  float sums[kLanes] = {};
  const int64_t whole = d - d % kLanes;
  for (int64_t c = 0; c < whole; c += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) sums[l] += a[c + l] * b[c + l];
  }
  for (int64_t c = whole; c < d; ++c) sums[c - whole] += a[c] * b[c];
  float total = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) total += sums[l];
  return total;
}

// Candidates ahead of the one being summed whose feature rows are fetched into cache: the
// rows are scattered over the whole feature table, so without it each dot product waits on
// main memory for its first lines.
constexpr int64_t kAhead = 4;

inline void prefetch_row(const float* row, int64_t d) {
  for (int64_t c = 0; c < d; c += 64 / int64_t(sizeof(float))) __builtin_prefetch(row + c);
}

}  // namespace

void list_dots_cpu(const float* features, const int64_t* rows, const int64_t* lists, int64_t n,
                   int64_t d, int64_t m, int64_t w, float* out) {
  for (int64_t i = 0; i < m; ++i) {
    SEPFL_CHECK_INDEX(rows[i] >= 0 && rows[i] < n,
                      "rows[" << i << "] = " << rows[i] << " is outside [0, " << n << ")");
  }
  BadIndex bad;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    const float* query = features + rows[i] * d;
    for (int64_t j = 0; j < w; ++j) {
      const int64_t ahead = i * w + j + kAhead;
      if (ahead < m * w && lists[ahead] >= 0 && lists[ahead] < n) {
        prefetch_row(features + lists[ahead] * d, d);
      }
      const int64_t v = lists[i * w + j];
      if (v >= 0 && v < n) {
        out[i * w + j] = dot(query, features + v * d, d);
      } else {
        if (v != -1) bad.record(i * w + j, v);
        out[i * w + j] = -std::numeric_limits<float>::infinity();
      }
    }
  }
  bad.raise_if_lists(w, n);
}

}  // namespace sepfl
