#include "ops_cuda.h"
#include "rows_cuda.cuh"

namespace sepfl {

namespace {

using namespace cuda_detail;

// acc + w * x as one fused multiply-add, the rounding of aggregate_cpu's
// vectorised (AVX2 / AVX-512) loop body; only its scalar remainder rounds
// the product separately.
__device__ float mul_add(float acc, float w, float x) { return fmaf(w, x, acc); }
__device__ float4 mul_add(float4 acc, float w, float4 x) {
  return make_float4(mul_add(acc.x, w, x.x), mul_add(acc.y, w, x.y), mul_add(acc.z, w, x.z),
                     mul_add(acc.w, w, x.w));
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

}  // namespace

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
