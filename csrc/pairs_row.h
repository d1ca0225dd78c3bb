// The per-row work of select_pairs and train_pairs, compiled into both the CPU
// loops (select_pairs_cpu.cpp, train_pairs_cpu.cpp) and the CUDA kernels
// (select_pairs_cuda.cu, train_pairs_cuda.cu), so the two backends cannot disagree.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define SEPFL_HOST_DEVICE __host__ __device__
#else
#define SEPFL_HOST_DEVICE
#endif

namespace sepfl {

// Node i's first `width` distinct neighbours (kNN order) strictly denser than
// itself, written to out[0, width) and padded with -1. The walk stops at the
// first entry of nbrs [n, k] outside [-1, n) and returns its rank; -1 when none
// was read.
SEPFL_HOST_DEVICE inline int64_t select_pairs_row(const int64_t* nbrs, const float* density,
                                                  int64_t i, int64_t n, int64_t k, int64_t width,
                                                  int64_t* out) {
  const int64_t* row = nbrs + i * k;
  const float own = density[i];
  int64_t taken = 0, bad_rank = -1;
  for (int64_t j = 0; j < k && taken < width; ++j) {
    const int64_t v = row[j];
    if (v < -1 || v >= n) {
      bad_rank = j;
      break;
    }
    if (v < 0 || !(density[v] > own)) continue;
    bool seen = false;
    for (int64_t t = 0; t < taken; ++t) seen |= out[t] == v;
    if (!seen) out[taken++] = v;
  }
  for (int64_t t = taken; t < width; ++t) out[t] = -1;
  return bad_rank;
}

// Node i's neighbour at rank r as a training pair: *dst = nbrs[i, r] and
// *target = 1 when the labels match; *dst = -1 (target 0) for an empty slot,
// the node itself or an entry outside [-1, n). Returns false for the latter.
SEPFL_HOST_DEVICE inline bool train_pairs_slot(const int64_t* nbrs, const int64_t* labels,
                                               int64_t i, int64_t r, int64_t n, int64_t k,
                                               int64_t* dst, int64_t* target) {
  const int64_t v = nbrs[i * k + r];
  const bool pair = v >= 0 && v < n && v != i;
  *dst = pair ? v : -1;
  *target = pair && labels[i] == labels[v];
  return v >= -1 && v < n;
}

}  // namespace sepfl
