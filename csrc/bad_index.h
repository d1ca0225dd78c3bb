// The bad index a parallel kernel met first, in input order, reported after its loop.
//
// Kernels check each index where they read it (a separate scan would cost as
// much as the work). An exception cannot leave an OpenMP region, so a bad
// entry is recorded here and raised once the loop is done. The smallest
// position is kept, so the message does not depend on thread scheduling; the
// CUDA kernels flag the same smallest position and sepfl.ops words it alike.
#pragma once

#include <cstdint>

#include "check.h"

namespace sepfl {

struct BadIndex {
  int64_t position = -1, value = 0;

  void record(int64_t p, int64_t v) {
#pragma omp critical(sepfl_bad_index)
    if (position < 0 || p < position) position = p, value = v;
  }

  // For positions into an [n, k] kNN table: IndexError
  // "nbrs row <row> holds index <value> outside [-1, <n>)".
  void raise_if_nbrs(int64_t k, int64_t n) const {
    SEPFL_CHECK_INDEX(position < 0, "nbrs row " << position / k << " holds index " << value
                                                << " outside [-1, " << n << ")");
  }

  // For positions into [m, w] lists: IndexError
  // "lists row <row> holds index <value> outside [-1, <n>)".
  void raise_if_lists(int64_t w, int64_t n) const {
    SEPFL_CHECK_INDEX(position < 0, "lists row " << position / w << " holds index " << value
                                                 << " outside [-1, " << n << ")");
  }

  // For positions into an edge list: IndexError "edge <e> has endpoint <value> outside [0, <n>)".
  void raise_if_edge(int64_t n) const {
    SEPFL_CHECK_INDEX(position < 0, "edge " << position << " has endpoint " << value
                                            << " outside [0, " << n << ")");
  }
};

// Checks node_ids [b] against [0, n) before the parallel loops of the gathers
// (it is short), so the loops only check neighbour entries: IndexError
// "node_ids[<i>] = <value> is outside [0, <n>)" for the first bad one.
inline void check_node_ids(const int64_t* node_ids, int64_t b, int64_t n) {
  for (int64_t i = 0; i < b; ++i) {
    SEPFL_CHECK_INDEX(node_ids[i] >= 0 && node_ids[i] < n,
                      "node_ids[" << i << "] = " << node_ids[i] << " is outside [0, " << n << ")");
  }
}

}  // namespace sepfl
