#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common_cuda.cuh"
#include "ops_cuda.h"
#include "rows_cuda.cuh"

namespace sepfl {

namespace cuda_detail {

int grid_size(int64_t items, int64_t per_block) {
  constexpr int64_t kMaxBlocks = int64_t{1} << 16;
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

void check(const char* op, cudaError_t status) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("sepfl CUDA ") + op + ": " + cudaGetErrorString(status));
  }
}

void finish(const char* op, cudaStream_t stream) {
  const char* sync = std::getenv("SEPFL_CUDA_SYNC");
  if (sync && std::strcmp(sync, "1") == 0) {
    check(op, cudaStreamSynchronize(stream));
    check(op);
  }
}

namespace {

__global__ void __launch_bounds__(kThreads)
    check_node_ids_kernel(const int64_t* __restrict__ node_ids, int64_t b, int64_t n,
                          int64_t* bad) {
  for (int64_t i = first_item(); i < b; i += item_stride()) node_at(node_ids, i, n, bad);
}

}  // namespace

void check_node_ids(const int64_t* node_ids, int64_t b, int64_t n, int64_t* bad,
                    cudaStream_t stream) {
  check_node_ids_kernel<<<grid_size(b, kThreads), kThreads, 0, stream>>>(node_ids, b, n, bad);
}

}  // namespace cuda_detail

int device_count_cuda() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    // No driver or no GPU: report none, and clear the error so that it does
    // not surface from the next unrelated CUDA call.
    cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace sepfl
