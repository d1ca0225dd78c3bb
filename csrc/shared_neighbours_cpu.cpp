#include <vector>

#include "bad_index.h"
#include "ops_cpu.h"

namespace sepfl {

void shared_neighbours_cpu(const int64_t* nbrs, const int64_t* src, const int64_t* dst,
                           int64_t n, int64_t k, int64_t num_edges, int64_t* shared,
                           int64_t* reverse) {
  BadIndex bad_edge, bad_nbr;
#pragma omp parallel
  {
    // stamp[x] == a: x is in a's list. Edges come grouped by source, so a's
    // list is stamped once per run of its edges; a stale stamp of a is still
    // true, since a's list never changes.
    std::vector<int64_t> stamp(static_cast<size_t>(n), -1);
    int64_t stamped = -1;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < num_edges; ++i) {
      const int64_t a = src[i], b = dst[i];
      if (a < 0 || a >= n || b < 0 || b >= n) {
        bad_edge.record(i, a < 0 || a >= n ? a : b);
        shared[i] = 0;
        reverse[i] = k;
        continue;
      }
      if (a != stamped) {
        for (int64_t j = 0; j < k; ++j) {
          const int64_t x = nbrs[a * k + j];
          if (x < -1 || x >= n) {
            bad_nbr.record(a * k + j, x);
          } else if (x >= 0) {
            stamp[x] = a;
          }
        }
        stamped = a;
      }
      int64_t count = 0, rank = k;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t x = nbrs[b * k + j];
        if (x < -1 || x >= n) {
          bad_nbr.record(b * k + j, x);
          continue;
        }
        if (x < 0) continue;
        count += stamp[x] == a;
        if (x == a && rank == k) rank = j;
      }
      shared[i] = count;
      reverse[i] = rank;
    }
  }
  bad_edge.raise_if_edge(n);
  bad_nbr.raise_if_nbrs(k, n);
}

}  // namespace sepfl
