#include <cuda/atomic>

#include "common_cuda.cuh"
#include "ops_cuda.h"

namespace sepfl {

namespace {

using cuda_detail::kThreads;

// Concurrent union-find over a parent array of node ids (the roots buffer).
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

__device__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ int64_t thread_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

__global__ void __launch_bounds__(kThreads) init_kernel(int64_t num_nodes, int64_t* parent) {
  for (int64_t v = thread_index(); v < num_nodes; v += thread_stride()) parent[v] = v;
}

__global__ void __launch_bounds__(kThreads)
    hook_kernel(const int64_t* __restrict__ src, const int64_t* __restrict__ dst,
                const float* __restrict__ scores, float threshold, int64_t num_edges,
                int64_t num_nodes, int64_t* parent) {
  for (int64_t e = thread_index(); e < num_edges; e += thread_stride()) {
    int64_t u = src[e], v = dst[e];
    if (u < 0 || u >= num_nodes || v < 0 || v >= num_nodes) continue;
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
  for (int64_t v = thread_index(); v < num_nodes; v += thread_stride()) {
    Parent(parent[v]).fetch_min(find_root(parent, v), kRelaxed);
  }
}

}  // namespace

void link_cuda(const int64_t* src, const int64_t* dst, const float* scores, float threshold,
               int64_t num_edges, int64_t num_nodes, int64_t* roots, std::uintptr_t stream) {
  using namespace cuda_detail;
  if (num_nodes == 0) return;
  const cudaStream_t s = as_stream(stream);
  const int node_blocks = grid_size(num_nodes, kThreads);
  init_kernel<<<node_blocks, kThreads, 0, s>>>(num_nodes, roots);
  check("link");
  if (num_edges > 0) {
    hook_kernel<<<grid_size(num_edges, kThreads), kThreads, 0, s>>>(
        src, dst, scores, threshold, num_edges, num_nodes, roots);
    check("link");
    compress_kernel<<<node_blocks, kThreads, 0, s>>>(num_nodes, roots);
    check("link");
  }
  finish("link", s);
}

}  // namespace sepfl
