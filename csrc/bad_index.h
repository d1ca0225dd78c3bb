// The first out-of-range index a parallel kernel met, reported after its loop.
//
// Kernels check each index where they read it (a separate scan would cost as
// much as the work). An exception cannot leave an OpenMP region, so a bad
// entry is recorded here and raised once the loop is done; the smallest row
// is kept, so the message does not depend on thread scheduling.
#pragma once

#include <cstdint>

#include "check.h"

namespace sepfl {

struct BadIndex {
  int64_t row = -1, value = 0;

  void record(int64_t r, int64_t v) {
#pragma omp critical(sepfl_bad_index)
    if (row < 0 || r < row) row = r, value = v;
  }

  // IndexError "<name> row <row> holds index <value> outside [-1, <n>)" when one was recorded.
  void raise_if_any(const char* name, int64_t n) const {
    SEPFL_CHECK_INDEX(row < 0, name << " row " << row << " holds index " << value
                                    << " outside [-1, " << n << ")");
  }
};

}  // namespace sepfl
