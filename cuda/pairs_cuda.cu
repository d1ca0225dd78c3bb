#include "common_cuda.cuh"
#include "ops_cuda.h"

namespace sepfl {

namespace {

using cuda_detail::kThreads;

// One thread per node, walking its kNN row in order like select_pairs_cpu:
// most nodes find their denser neighbour within the first few ranks, so a
// thread reads little, and only local density peaks walk the whole row.
__global__ void __launch_bounds__(kThreads)
    select_pairs_kernel(const int64_t* __restrict__ nbrs, const float* __restrict__ density,
                        int64_t n, int64_t k, int64_t max_per_node, int64_t* __restrict__ dst) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t* row = nbrs + i * k;
    int64_t* out = dst + i * max_per_node;
    const float own = density[i];
    int64_t taken = 0;
    for (int64_t j = 0; j < k && taken < max_per_node; ++j) {
      const int64_t v = row[j];
      if (v < 0 || v >= n || !(density[v] > own)) continue;
      bool seen = false;
      for (int64_t t = 0; t < taken; ++t) seen |= out[t] == v;
      if (!seen) out[taken++] = v;
    }
    for (int64_t t = taken; t < max_per_node; ++t) out[t] = -1;
  }
}

// One thread per output slot (node i, rank r = slot + 1).
__global__ void __launch_bounds__(kThreads)
    train_pairs_kernel(const int64_t* __restrict__ nbrs, const int64_t* __restrict__ labels,
                       int64_t n, int64_t k, int64_t ranks, int64_t* __restrict__ dst,
                       int64_t* __restrict__ target) {
  const int64_t slots = n * ranks;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < slots;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p / ranks, r = p % ranks + 1;
    const int64_t v = nbrs[i * k + r];
    const bool pair = v >= 0 && v < n && v != i;
    dst[p] = pair ? v : -1;
    target[p] = pair && labels[i] == labels[v];
  }
}

}  // namespace

void select_pairs_cuda(const int64_t* nbrs, const float* density, int64_t n, int64_t k,
                       int64_t max_per_node, int64_t* dst_padded, std::uintptr_t stream) {
  using namespace cuda_detail;
  if (n == 0) return;
  const cudaStream_t s = as_stream(stream);
  select_pairs_kernel<<<grid_size(n, kThreads), kThreads, 0, s>>>(nbrs, density, n, k,
                                                                  max_per_node, dst_padded);
  check("select_pairs");
  finish("select_pairs", s);
}

void train_pairs_cuda(const int64_t* nbrs, const int64_t* labels, int64_t n, int64_t k,
                      int64_t ranks, int64_t* dst_padded, int64_t* target_padded,
                      std::uintptr_t stream) {
  using namespace cuda_detail;
  if (n == 0 || ranks == 0) return;
  const cudaStream_t s = as_stream(stream);
  train_pairs_kernel<<<grid_size(n * ranks, kThreads), kThreads, 0, s>>>(
      nbrs, labels, n, k, ranks, dst_padded, target_padded);
  check("train_pairs");
  finish("train_pairs", s);
}

}  // namespace sepfl
