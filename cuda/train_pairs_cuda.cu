#include "common_cuda.cuh"
#include "ops_cuda.h"
#include "pairs_row.h"

namespace sepfl {

namespace {

using namespace cuda_detail;

// One thread per output slot (node i, rank r = slot % ranks + 1), each as train_pairs_cpu.
__global__ void __launch_bounds__(kThreads)
    train_pairs_kernel(const int64_t* __restrict__ nbrs, const int64_t* __restrict__ labels,
                       int64_t n, int64_t k, int64_t ranks, int64_t* __restrict__ dst_padded,
                       int64_t* __restrict__ target_padded, int64_t* bad) {
  for (int64_t p = first_item(); p < n * ranks; p += item_stride()) {
    const int64_t i = p / ranks, r = p % ranks + 1;
    if (!train_pairs_slot(nbrs, labels, i, r, n, k, dst_padded + p, target_padded + p)) {
      flag_bad(bad, i * k + r);
    }
  }
}

}  // namespace

void train_pairs_cuda(const int64_t* nbrs, const int64_t* labels, int64_t n, int64_t k,
                      int64_t ranks, int64_t* dst_padded, int64_t* target_padded, int64_t* bad,
                      std::uintptr_t stream) {
  if (n == 0) return;
  const cudaStream_t s = as_stream(stream);
  train_pairs_kernel<<<grid_size(n * ranks, kThreads), kThreads, 0, s>>>(
      nbrs, labels, n, k, ranks, dst_padded, target_padded, bad);
  check("train_pairs");
  finish("train_pairs", s);
}

}  // namespace sepfl
