#include "common_cuda.cuh"
#include "ops_cuda.h"
#include "pairs_row.h"

namespace sepfl {

namespace {

using namespace cuda_detail;

// One thread per node, walking its kNN row as select_pairs_cpu does (the same
// function): most nodes find their denser neighbour within the first few
// ranks, so a thread reads little, and only local density peaks walk the whole row.
__global__ void __launch_bounds__(kThreads)
    select_pairs_kernel(const int64_t* __restrict__ nbrs, const float* __restrict__ density,
                        int64_t n, int64_t k, int64_t width, int64_t* __restrict__ dst_padded,
                        int64_t* bad) {
  for (int64_t i = first_item(); i < n; i += item_stride()) {
    const int64_t j = select_pairs_row(nbrs, density, i, n, k, width, dst_padded + i * width);
    if (j >= 0) flag_bad(bad, i * k + j);
  }
}

}  // namespace

void select_pairs_cuda(const int64_t* nbrs, const float* density, int64_t n, int64_t k,
                       int64_t width, int64_t* dst_padded, int64_t* bad, std::uintptr_t stream) {
  if (n == 0) return;
  const cudaStream_t s = as_stream(stream);
  select_pairs_kernel<<<grid_size(n, kThreads), kThreads, 0, s>>>(nbrs, density, n, k, width,
                                                                  dst_padded, bad);
  check("select_pairs");
  finish("select_pairs", s);
}

}  // namespace sepfl
