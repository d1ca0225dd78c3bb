#include <limits>
#include <numeric>
#include <vector>

#include "bad_index.h"
#include "check.h"
#include "ops_cpu.h"

namespace sepfl {

namespace {

// Union-find with path halving and union by size. Node ids are stored as
// `Index` (int32 whenever they fit) to halve the memory the random accesses touch.
template <typename Index>
class DisjointSets {
 public:
  explicit DisjointSets(int64_t n) : parent_(n), size_(n, 1) {
    std::iota(parent_.begin(), parent_.end(), Index{0});
  }

  Index find(Index x) {
    while (parent_[x] != x) {
      parent_[x] = parent_[parent_[x]];
      x = parent_[x];
    }
    return x;
  }

  void unite(Index x, Index y) {
    x = find(x);
    y = find(y);
    if (x == y) return;
    if (size_[x] < size_[y]) std::swap(x, y);
    parent_[y] = x;
    size_[x] += size_[y];
  }

 private:
  std::vector<Index> parent_;
  std::vector<Index> size_;
};

template <typename Index>
int64_t link_impl(const int64_t* src, const int64_t* dst, const float* scores, float threshold,
                  int64_t num_edges, int64_t num_nodes, int64_t* labels) {
  DisjointSets<Index> sets(num_nodes);
  BadIndex bad;
  for (int64_t e = 0; e < num_edges; ++e) {
    const int64_t u = src[e], v = dst[e];
    const bool u_in = u >= 0 && u < num_nodes, v_in = v >= 0 && v < num_nodes;
    if (!(u_in && v_in)) {
      bad.record(e, u_in ? v : u);
      break;
    }
    if (scores && !(scores[e] > threshold)) continue;
    sets.unite(static_cast<Index>(u), static_cast<Index>(v));
  }
  bad.raise_if_edge(num_nodes);
  // Number components by their smallest member: scanning nodes in order meets
  // each component first at that member, so the labels do not depend on the
  // edge order or on which node became the root.
  std::vector<Index> label_of_root(num_nodes, Index{-1});
  Index next = 0;
  for (int64_t i = 0; i < num_nodes; ++i) {
    Index& label = label_of_root[sets.find(static_cast<Index>(i))];
    if (label < 0) label = next++;
    labels[i] = label;
  }
  return next;
}

}  // namespace

int64_t link_cpu(const int64_t* src, const int64_t* dst, const float* scores, float threshold,
                 int64_t num_edges, int64_t num_nodes, int64_t* labels) {
  SEPFL_CHECK(num_nodes >= 0 && num_edges >= 0, "num_nodes and num_edges must be >= 0");
  if (num_nodes <= std::numeric_limits<int32_t>::max()) {
    return link_impl<int32_t>(src, dst, scores, threshold, num_edges, num_nodes, labels);
  }
  return link_impl<int64_t>(src, dst, scores, threshold, num_edges, num_nodes, labels);
}

}  // namespace sepfl
