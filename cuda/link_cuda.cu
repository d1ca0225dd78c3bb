#include <cub/device/device_scan.cuh>
#include <cuda/atomic>

#include <stdexcept>

#include "common_cuda.cuh"
#include "ops_cuda.h"

namespace sepfl {

namespace {

using namespace cuda_detail;

// Concurrent union-find over a parent array of node ids (in the workspace).
// Invariant: parent[x] <= x, equality exactly at roots. Hooking links the
// larger root below the smaller one, and path halving only moves a pointer to
// an ancestor, i.e. to a smaller id. So each tree's root is its smallest
// member, whatever order the edges are processed in.
//
// Only roots are ever written by compare-and-swap, and a node that stopped
// being a root never becomes one again, so the CAS and the halving writes
// (which touch non-roots only) never conflict. Halving writes with atomic
// min: racing writers may carry ancestors from stale reads, and min keeps the
// one closest to the root, so a pointer never moves away from the root.
// Accesses are atomic (relaxed: the ids are the only data exchanged) so that
// no thread reads a stale parent from its SM's cache.
using Parent = cuda::atomic_ref<int64_t, cuda::thread_scope_device>;
constexpr auto kRelaxed = cuda::std::memory_order_relaxed;

__device__ int64_t parent_of(int64_t* parent, int64_t x) {
  return Parent(parent[x]).load(kRelaxed);
}

__device__ int64_t find_root(int64_t* parent, int64_t x) {
  while (true) {
    const int64_t p = parent_of(parent, x);
    if (p == x) return x;
    const int64_t grandparent = parent_of(parent, p);
    if (grandparent == p) return p;
    Parent(parent[x]).fetch_min(grandparent, kRelaxed);
    x = grandparent;
  }
}

__global__ void __launch_bounds__(kThreads) init_kernel(int64_t num_nodes, int64_t* parent) {
  for (int64_t v = first_item(); v < num_nodes; v += item_stride()) parent[v] = v;
}

__global__ void __launch_bounds__(kThreads)
    hook_kernel(const int64_t* __restrict__ src, const int64_t* __restrict__ dst,
                const float* __restrict__ scores, float threshold, int64_t num_edges,
                int64_t num_nodes, int64_t* parent, int64_t* bad) {
  for (int64_t e = first_item(); e < num_edges; e += item_stride()) {
    int64_t u = src[e], v = dst[e];
    if (u < 0 || u >= num_nodes || v < 0 || v >= num_nodes) {
      flag_bad(bad, e);
      continue;
    }
    if (scores && !(scores[e] > threshold)) continue;
    while (true) {
      u = find_root(parent, u);
      v = find_root(parent, v);
      if (u == v) break;
      const int64_t lo = u < v ? u : v;
      int64_t hi = u < v ? v : u;
      // Fails only if another thread hooked `hi` first; then search again from
      // the two (former) roots.
      if (Parent(parent[hi]).compare_exchange_strong(hi, lo, kRelaxed)) break;
    }
  }
}

// After hooking every node's root is final; point every node straight at it.
// Racing halving writes cannot undo this: they use min, and the root is the
// smallest id of the tree.
__global__ void __launch_bounds__(kThreads) compress_kernel(int64_t num_nodes, int64_t* parent) {
  for (int64_t v = first_item(); v < num_nodes; v += item_stride()) {
    Parent(parent[v]).fetch_min(find_root(parent, v), kRelaxed);
  }
}

// labels[v] = 1 where v is a root (the smallest member of its component), else 0.
__global__ void __launch_bounds__(kThreads)
    mark_roots_kernel(const int64_t* __restrict__ parent, int64_t num_nodes,
                      int64_t* __restrict__ labels) {
  for (int64_t v = first_item(); v < num_nodes; v += item_stride()) labels[v] = parent[v] == v;
}

// After the exclusive scan labels[r] is root r's label (how many roots are
// smaller): the order of smallest members, as link_cpu numbers components.
// Every node copies its root's entry in place; roots copy their own, so the
// entries read never change.
__global__ void __launch_bounds__(kThreads)
    label_kernel(const int64_t* __restrict__ parent, int64_t num_nodes, int64_t* labels) {
  for (int64_t v = first_item(); v < num_nodes; v += item_stride()) labels[v] = labels[parent[v]];
}

// The parent array, rounded up so that the scan's storage after it stays aligned.
size_t parent_bytes(int64_t num_nodes) {
  constexpr size_t kAlign = 256;
  return (static_cast<size_t>(num_nodes) * sizeof(int64_t) + kAlign - 1) / kAlign * kAlign;
}

size_t scan_bytes(int64_t num_nodes) {
  size_t bytes = 0;
  check("link", cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<int64_t*>(nullptr),
                                              static_cast<int64_t*>(nullptr), num_nodes));
  return bytes;
}

}  // namespace

size_t link_workspace_bytes_cuda(int64_t num_nodes) {
  return num_nodes == 0 ? 0 : parent_bytes(num_nodes) + scan_bytes(num_nodes);
}

void link_cuda(const int64_t* src, const int64_t* dst, const float* scores, float threshold,
               int64_t num_edges, int64_t num_nodes, int64_t* labels, void* workspace,
               size_t workspace_bytes, int64_t* bad, std::uintptr_t stream) {
  if (num_nodes == 0) return;
  if (workspace_bytes < link_workspace_bytes_cuda(num_nodes)) {
    throw std::invalid_argument("sepfl CUDA link: the workspace is smaller than "
                                "link_workspace_bytes_cuda(num_nodes)");
  }
  const cudaStream_t s = as_stream(stream);
  int64_t* parent = static_cast<int64_t*>(workspace);
  void* scan_storage = static_cast<char*>(workspace) + parent_bytes(num_nodes);
  size_t scan_storage_bytes = workspace_bytes - parent_bytes(num_nodes);
  const int node_blocks = grid_size(num_nodes, kThreads);
  init_kernel<<<node_blocks, kThreads, 0, s>>>(num_nodes, parent);
  check("link");
  if (num_edges > 0) {
    hook_kernel<<<grid_size(num_edges, kThreads), kThreads, 0, s>>>(
        src, dst, scores, threshold, num_edges, num_nodes, parent, bad);
    check("link");
    compress_kernel<<<node_blocks, kThreads, 0, s>>>(num_nodes, parent);
    check("link");
  }
  mark_roots_kernel<<<node_blocks, kThreads, 0, s>>>(parent, num_nodes, labels);
  check("link");
  check("link", cub::DeviceScan::ExclusiveSum(scan_storage, scan_storage_bytes, labels, labels,
                                              num_nodes, s));
  label_kernel<<<node_blocks, kThreads, 0, s>>>(parent, num_nodes, labels);
  check("link");
  finish("link", s);
}

}  // namespace sepfl
