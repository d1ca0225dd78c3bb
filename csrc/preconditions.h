// Scalar preconditions both native modules re-check (sepfl.ops checks them
// first, with its own messages), written once so the modules cannot differ.
#pragma once

#include <algorithm>
#include <cstdint>

#include "check.h"

namespace sepfl {

// Columns of select_pairs' padded output: max_per_node (>= 1) capped at k, as a
// node has at most k distinct partners; the cap changes no result and keeps
// n * width from overflowing.
inline int64_t select_pairs_width(int64_t max_per_node, int64_t k) {
  SEPFL_CHECK(max_per_node >= 1, "max_per_node must be >= 1, got " << max_per_node);
  return std::min(max_per_node, std::max<int64_t>(k, 1));
}

// train_pairs pairs ranks 1..ranks, so rank 0 (the node itself) and k bound it.
inline void check_train_ranks(int64_t ranks, int64_t k) {
  SEPFL_CHECK(ranks >= 1 && ranks < k, "ranks must be in [1, k), got " << ranks << " with k=" << k);
}

}  // namespace sepfl
