// Helpers of the row kernels gather_cuda, gather_add_cuda and aggregate_cuda
// (not part of the API). Each kernel runs on rows of `width` elements of type
// T: float4 when every row pointer is 16-byte aligned (width % 4 == 0 and
// aligned bases), so that each thread moves 16 bytes per access, float
// otherwise. Element-wise helpers make one kernel body serve both.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "common_cuda.cuh"

namespace sepfl {
namespace cuda_detail {

__device__ inline float zero(float) { return 0.f; }
__device__ inline float4 zero(float4) { return make_float4(0.f, 0.f, 0.f, 0.f); }

// Block shape for kernels that handle one row of `width` elements per
// threadIdx.y: threadIdx.x spans the row (the smallest power of two covering
// it, at most kThreads, looping beyond), so narrow rows still fill the block.
struct RowBlocks {
  dim3 block;
  int grid;
};

inline RowBlocks row_blocks(int64_t rows, int64_t width) {
  int x = 1;
  while (x < width && x < kThreads) x *= 2;
  const int y = kThreads / x;
  return {dim3(x, y), grid_size(rows, y)};
}

__device__ inline bool in_range(int64_t v, int64_t n) { return v >= 0 && v < n; }

// The checks of gather_cpu and friends: node_ids[i], or -1 after flagging it in
// bad[0] when it is outside [0, n); the entry of nbrs at `position`, or -1 after
// flagging it in bad[1] when it is outside [-1, n).
__device__ inline int64_t node_at(const int64_t* node_ids, int64_t i, int64_t n, int64_t* bad) {
  const int64_t u = node_ids[i];
  if (in_range(u, n)) return u;
  flag_bad(bad, i);
  return -1;
}

__device__ inline int64_t entry_at(const int64_t* nbrs, int64_t position, int64_t n, int64_t* bad) {
  const int64_t v = nbrs[position];
  if (v >= -1 && v < n) return v;
  flag_bad(bad + 1, position);
  return -1;
}

// Flags node_ids [b] as node_at does, on `stream`: with k = 0 the gathers read
// no entry, but node_ids are still checked, as on the CPU.
void check_node_ids(const int64_t* node_ids, int64_t b, int64_t n, int64_t* bad,
                    cudaStream_t stream);

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Whether rows of `width` floats starting at these pointers can be read as float4.
inline bool vectorisable(int64_t width, std::initializer_list<const void*> pointers) {
  if (width % 4 != 0) return false;
  for (const void* p : pointers) {
    if (!aligned16(p)) return false;
  }
  return true;
}

}  // namespace cuda_detail
}  // namespace sepfl
