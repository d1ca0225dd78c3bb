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
