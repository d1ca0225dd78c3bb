// Launch helpers shared by the CUDA kernels of sepfl (not part of the API).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sepfl {
namespace cuda_detail {

// Threads per block of every kernel: enough warps to hide memory latency,
// few enough that small problems still spread over many SMs.
constexpr int kThreads = 256;

inline cudaStream_t as_stream(std::uintptr_t stream) {
  return reinterpret_cast<cudaStream_t>(stream);
}

// Grid-stride loop over items, one per thread and pass:
//   for (int64_t i = first_item(); i < count; i += item_stride())
__device__ inline int64_t first_item() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline int64_t item_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Grid-stride loop over rows, one per threadIdx.y and pass (threadIdx.x spans the row):
//   for (int64_t r = first_row(); r < rows; r += row_stride())
__device__ inline int64_t first_row() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
}
__device__ inline int64_t row_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.y; }

// Flags bad input at `position` in a flag of the caller's (ops_cuda.h): the flag
// holds -1 or the smallest position flagged so far. Compared as unsigned, -1
// is the largest value, so atomicMin keeps the smallest position, the one
// the CPU kernels report (csrc/bad_index.h).
__device__ inline void flag_bad(int64_t* flag, int64_t position) {
  atomicMin(reinterpret_cast<unsigned long long*>(flag), static_cast<unsigned long long>(position));
}

// Blocks for a grid-stride loop over `items` work items, `per_block` per block
// and pass. Capped: beyond a few hundred blocks per SM more blocks only add
// scheduling, and the grid-stride loops cover the rest.
int grid_size(int64_t items, int64_t per_block);

// Throws std::runtime_error naming `op` if `status` (or, for the default
// argument, the last launch) failed.
void check(const char* op, cudaError_t status = cudaGetLastError());

// End of an operation: with SEPFL_CUDA_SYNC=1 waits for `stream` so that an
// asynchronous fault is reported by the operation that caused it.
void finish(const char* op, cudaStream_t stream);

}  // namespace cuda_detail
}  // namespace sepfl
