#include <initializer_list>

#include "common_cuda.cuh"
#include "ops_cuda.h"

namespace sepfl {

namespace {

using cuda_detail::kThreads;

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
  return {dim3(x, y), cuda_detail::grid_size(rows, y)};
}

// Grid-stride loop over rows: each block handles blockDim.y rows per pass.
__device__ int64_t first_row() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
}
__device__ int64_t row_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.y; }

__device__ bool in_range(int64_t v, int64_t n) { return v >= 0 && v < n; }

// out[i, j] = features[nbrs[node_ids[i], j]], zeros for an empty slot. Rows are (i, j).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const T* __restrict__ features, const int64_t* __restrict__ nbrs,
                  const int64_t* __restrict__ node_ids, int64_t n, int64_t k, int64_t width,
                  int64_t rows, T* __restrict__ out) {
  for (int64_t row = first_row(); row < rows; row += row_stride()) {
    const int64_t u = node_ids[row / k];
    const int64_t v = in_range(u, n) ? nbrs[u * k + row % k] : -1;
    const T* src = in_range(v, n) ? features + v * width : nullptr;
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
                      int64_t width, int64_t rows, T* __restrict__ out) {
  for (int64_t row = first_row(); row < rows; row += row_stride()) {
    const int64_t u = node_ids[row / k];
    T* dst = out + row * width;
    if (!in_range(u, n)) {
      for (int64_t c = threadIdx.x; c < width; c += blockDim.x) dst[c] = zero(T{});
      continue;
    }
    const int64_t v = nbrs[u * k + row % k];
    const T* arow = a + u * width;
    const T* brow = in_range(v, n) ? bproj + v * width : nullptr;
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
                     int64_t n, int64_t k, int64_t width, int64_t rows, T* __restrict__ out) {
  for (int64_t i = first_row(); i < rows; i += row_stride()) {
    const int64_t u = node_ids[i];
    const bool has_row = in_range(u, n);
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
      T acc = zero(T{});
#pragma unroll 4
      for (int64_t j = 0; has_row && j < k; ++j) {
        const int64_t v = nbrs[u * k + j];
        if (in_range(v, n)) acc = mul_add(acc, weights[i * k + j], features[v * width + c]);
      }
      out[i * width + c] = acc;
    }
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
                 int64_t k, int64_t d, int64_t b, float* out, std::uintptr_t stream) {
  using namespace cuda_detail;
  if (b == 0 || k == 0 || d == 0) return;
  const cudaStream_t s = as_stream(stream);
  const int64_t rows = b * k;
  if (vectorisable(d, {features, out})) {
    const RowBlocks l = row_blocks(rows, d / 4);
    gather_kernel<<<l.grid, l.block, 0, s>>>(reinterpret_cast<const float4*>(features), nbrs,
                                             node_ids, n, k, d / 4, rows,
                                             reinterpret_cast<float4*>(out));
  } else {
    const RowBlocks l = row_blocks(rows, d);
    gather_kernel<<<l.grid, l.block, 0, s>>>(features, nbrs, node_ids, n, k, d, rows, out);
  }
  check("gather");
  finish("gather", s);
}

void gather_add_cuda(const float* a, const float* bproj, const int64_t* nbrs,
                     const int64_t* node_ids, const float* bias, bool gelu, int64_t n, int64_t k,
                     int64_t h, int64_t b, float* out, std::uintptr_t stream) {
  using namespace cuda_detail;
  if (b == 0 || k == 0 || h == 0) return;
  const cudaStream_t s = as_stream(stream);
  const int64_t rows = b * k;
  // A null bias is trivially aligned.
  if (vectorisable(h, {a, bproj, bias, out})) {
    const RowBlocks l = row_blocks(rows, h / 4);
    gather_add_kernel<<<l.grid, l.block, 0, s>>>(
        reinterpret_cast<const float4*>(a), reinterpret_cast<const float4*>(bproj), nbrs,
        node_ids, reinterpret_cast<const float4*>(bias), gelu, n, k, h / 4, rows,
        reinterpret_cast<float4*>(out));
  } else {
    const RowBlocks l = row_blocks(rows, h);
    gather_add_kernel<<<l.grid, l.block, 0, s>>>(a, bproj, nbrs, node_ids, bias, gelu, n, k, h,
                                                 rows, out);
  }
  check("gather_add");
  finish("gather_add", s);
}

void aggregate_cuda(const float* weights, const float* features, const int64_t* nbrs,
                    const int64_t* node_ids, int64_t n, int64_t k, int64_t d, int64_t b,
                    float* out, std::uintptr_t stream) {
  using namespace cuda_detail;
  if (b == 0 || d == 0) return;
  const cudaStream_t s = as_stream(stream);
  if (vectorisable(d, {features, out})) {
    const RowBlocks l = row_blocks(b, d / 4);
    aggregate_kernel<<<l.grid, l.block, 0, s>>>(weights, reinterpret_cast<const float4*>(features),
                                                nbrs, node_ids, n, k, d / 4, b,
                                                reinterpret_cast<float4*>(out));
  } else {
    const RowBlocks l = row_blocks(b, d);
    aggregate_kernel<<<l.grid, l.block, 0, s>>>(weights, features, nbrs, node_ids, n, k, d, b, out);
  }
  check("aggregate");
  finish("aggregate", s);
}

}  // namespace sepfl
