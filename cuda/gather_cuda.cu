#include <initializer_list>

#include "common_cuda.cuh"
#include "ops_cuda.h"

namespace sepfl {

namespace {

using namespace cuda_detail;

// The three kernels below run on rows of `width` elements of type T: float4
// when every row pointer is 16-byte aligned (d % 4 == 0 and aligned bases),
// so that each thread moves 16 bytes per access, float otherwise. Element-wise
// helpers make one kernel body serve both.
__device__ float zero(float) { return 0.f; }
__device__ float4 zero(float4) { return make_float4(0.f, 0.f, 0.f, 0.f); }

__device__ float add(float x, float y) { return x + y; }
__device__ float4 add(float4 x, float4 y) {
  return make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
}

// acc + w * x as one fused multiply-add, the rounding of aggregate_cpu's
// vectorised (AVX2 / AVX-512) loop body; only its scalar remainder rounds
// the product separately.
__device__ float mul_add(float acc, float w, float x) { return fmaf(w, x, acc); }
__device__ float4 mul_add(float4 acc, float w, float4 x) {
  return make_float4(mul_add(acc.x, w, x.x), mul_add(acc.y, w, x.y), mul_add(acc.z, w, x.z),
                     mul_add(acc.w, w, x.w));
}

// Exact (erf) GELU, as torch.nn.GELU().
__device__ float gelu(float x) { return 0.5f * x * (1.f + erff(x * 0.707106781f)); }
__device__ float4 gelu(float4 x) { return make_float4(gelu(x.x), gelu(x.y), gelu(x.z), gelu(x.w)); }

// Block shape for kernels that handle one row of `width` elements per
// threadIdx.y: threadIdx.x spans the row (the smallest power of two covering
// it, at most kThreads, looping beyond), so narrow rows still fill the block.
struct RowBlocks {
  dim3 block;
  int grid;
};

RowBlocks row_blocks(int64_t rows, int64_t width) {
  int x = 1;
  while (x < width && x < kThreads) x *= 2;
  const int y = kThreads / x;
  return {dim3(x, y), grid_size(rows, y)};
}

__device__ bool in_range(int64_t v, int64_t n) { return v >= 0 && v < n; }

// The checks of gather_cpu and friends: node_ids[i], or -1 after flagging it in
// bad[0] when it is outside [0, n); the entry of nbrs at `position`, or -1 after
// flagging it in bad[1] when it is outside [-1, n).
__device__ int64_t node_at(const int64_t* node_ids, int64_t i, int64_t n, int64_t* bad) {
  const int64_t u = node_ids[i];
  if (in_range(u, n)) return u;
  flag_bad(bad, i);
  return -1;
}

__device__ int64_t entry_at(const int64_t* nbrs, int64_t position, int64_t n, int64_t* bad) {
  const int64_t v = nbrs[position];
  if (v >= -1 && v < n) return v;
  flag_bad(bad + 1, position);
  return -1;
}

// With k = 0 the gathers read no entry, but node_ids are still checked, as on the CPU.
__global__ void __launch_bounds__(kThreads)
    check_nodes_kernel(const int64_t* __restrict__ node_ids, int64_t b, int64_t n, int64_t* bad) {
  for (int64_t i = first_item(); i < b; i += item_stride()) node_at(node_ids, i, n, bad);
}

// out[i, j] = features[nbrs[node_ids[i], j]], zeros for an empty slot. Rows are (i, j).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const T* __restrict__ features, const int64_t* __restrict__ nbrs,
                  const int64_t* __restrict__ node_ids, int64_t n, int64_t k, int64_t width,
                  int64_t rows, T* __restrict__ out, int64_t* bad) {
  for (int64_t row = first_row(); row < rows; row += row_stride()) {
    const int64_t u = node_at(node_ids, row / k, n, bad);
    const int64_t v = u < 0 ? -1 : entry_at(nbrs, u * k + row % k, n, bad);
    const T* src = v < 0 ? nullptr : features + v * width;
    T* dst = out + row * width;
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) dst[c] = src ? src[c] : zero(T{});
  }
}

// out[i, j] = act(a[u] + bproj[nbrs[u, j]] + bias), u = node_ids[i], summed in
// the order of gather_add_cpu. Rows are (i, j).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    gather_add_kernel(const T* __restrict__ a, const T* __restrict__ bproj,
                      const int64_t* __restrict__ nbrs, const int64_t* __restrict__ node_ids,
                      const T* __restrict__ bias, bool use_gelu, int64_t n, int64_t k,
                      int64_t width, int64_t rows, T* __restrict__ out, int64_t* bad) {
  for (int64_t row = first_row(); row < rows; row += row_stride()) {
    const int64_t u = node_at(node_ids, row / k, n, bad);
    T* dst = out + row * width;
    if (u < 0) {
      for (int64_t c = threadIdx.x; c < width; c += blockDim.x) dst[c] = zero(T{});
      continue;
    }
    const int64_t v = entry_at(nbrs, u * k + row % k, n, bad);
    const T* arow = a + u * width;
    const T* brow = v < 0 ? nullptr : bproj + v * width;
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
      T x = arow[c];
      if (brow) x = add(x, brow[c]);
      if (bias) x = add(x, bias[c]);
      dst[c] = use_gelu ? gelu(x) : x;
    }
  }
}

// out[i] = sum_j weights[i, j] * features[nbrs[node_ids[i], j]], each element
// summed in rank order by one thread (deterministic, no atomics). Rows are i.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    aggregate_kernel(const float* __restrict__ weights, const T* __restrict__ features,
                     const int64_t* __restrict__ nbrs, const int64_t* __restrict__ node_ids,
                     int64_t n, int64_t k, int64_t width, int64_t rows, T* __restrict__ out,
                     int64_t* bad) {
  for (int64_t i = first_row(); i < rows; i += row_stride()) {
    const int64_t u = node_at(node_ids, i, n, bad);
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
      T acc = zero(T{});
#pragma unroll 4
      for (int64_t j = 0; u >= 0 && j < k; ++j) {
        const int64_t v = nbrs[u * k + j];
        if (in_range(v, n)) acc = mul_add(acc, weights[i * k + j], features[v * width + c]);
      }
      out[i * width + c] = acc;
    }
    // The sums above skip bad entries unflagged; one thread per row flags them
    // (also when width is 0, as aggregate_cpu still checks then).
    for (int64_t j = 0; u >= 0 && threadIdx.x == 0 && j < k; ++j) entry_at(nbrs, u * k + j, n, bad);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Whether rows of `width` floats starting at these pointers can be read as float4.
bool vectorisable(int64_t width, std::initializer_list<const void*> pointers) {
  if (width % 4 != 0) return false;
  for (const void* p : pointers) {
    if (!aligned16(p)) return false;
  }
  return true;
}

}  // namespace

void gather_cuda(const float* features, const int64_t* nbrs, const int64_t* node_ids, int64_t n,
                 int64_t k, int64_t d, int64_t b, float* out, int64_t* bad,
                 std::uintptr_t stream) {
  if (b == 0) return;
  const cudaStream_t s = as_stream(stream);
  const int64_t rows = b * k;
  if (k == 0) {
    check_nodes_kernel<<<grid_size(b, kThreads), kThreads, 0, s>>>(node_ids, b, n, bad);
  } else if (vectorisable(d, {features, out})) {
    const RowBlocks l = row_blocks(rows, d / 4);
    gather_kernel<<<l.grid, l.block, 0, s>>>(reinterpret_cast<const float4*>(features), nbrs,
                                             node_ids, n, k, d / 4, rows,
                                             reinterpret_cast<float4*>(out), bad);
  } else {
    const RowBlocks l = row_blocks(rows, d);
    gather_kernel<<<l.grid, l.block, 0, s>>>(features, nbrs, node_ids, n, k, d, rows, out, bad);
  }
  check("gather");
  finish("gather", s);
}

void gather_add_cuda(const float* a, const float* bproj, const int64_t* nbrs,
                     const int64_t* node_ids, const float* bias, bool gelu, int64_t n, int64_t k,
                     int64_t h, int64_t b, float* out, int64_t* bad, std::uintptr_t stream) {
  if (b == 0) return;
  const cudaStream_t s = as_stream(stream);
  const int64_t rows = b * k;
  // A null bias is trivially aligned.
  if (k == 0) {
    check_nodes_kernel<<<grid_size(b, kThreads), kThreads, 0, s>>>(node_ids, b, n, bad);
  } else if (vectorisable(h, {a, bproj, bias, out})) {
    const RowBlocks l = row_blocks(rows, h / 4);
    gather_add_kernel<<<l.grid, l.block, 0, s>>>(
        reinterpret_cast<const float4*>(a), reinterpret_cast<const float4*>(bproj), nbrs,
        node_ids, reinterpret_cast<const float4*>(bias), gelu, n, k, h / 4, rows,
        reinterpret_cast<float4*>(out), bad);
  } else {
    const RowBlocks l = row_blocks(rows, h);
    gather_add_kernel<<<l.grid, l.block, 0, s>>>(a, bproj, nbrs, node_ids, bias, gelu, n, k, h,
                                                 rows, out, bad);
  }
  check("gather_add");
  finish("gather_add", s);
}

void aggregate_cuda(const float* weights, const float* features, const int64_t* nbrs,
                    const int64_t* node_ids, int64_t n, int64_t k, int64_t d, int64_t b,
                    float* out, int64_t* bad, std::uintptr_t stream) {
  if (b == 0) return;
  const cudaStream_t s = as_stream(stream);
  if (vectorisable(d, {features, out})) {
    const RowBlocks l = row_blocks(b, d / 4);
    aggregate_kernel<<<l.grid, l.block, 0, s>>>(weights, reinterpret_cast<const float4*>(features),
                                                nbrs, node_ids, n, k, d / 4, b,
                                                reinterpret_cast<float4*>(out), bad);
  } else {
    const RowBlocks l = row_blocks(b, d);
    aggregate_kernel<<<l.grid, l.block, 0, s>>>(weights, features, nbrs, node_ids, n, k, d, b, out,
                                                bad);
  }
  check("aggregate");
  finish("aggregate", s);
}

}  // namespace sepfl
