#include "ops_cuda.h"
#include "rows_cuda.cuh"

namespace sepfl {

namespace {

using namespace cuda_detail;

__device__ float add(float x, float y) { return x + y; }
__device__ float4 add(float4 x, float4 y) {
  return make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
}

// Exact (erf) GELU, as torch.nn.GELU().
__device__ float gelu(float x) { return 0.5f * x * (1.f + erff(x * 0.707106781f)); }
__device__ float4 gelu(float4 x) { return make_float4(gelu(x.x), gelu(x.y), gelu(x.z), gelu(x.w)); }

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

}  // namespace

void gather_add_cuda(const float* a, const float* bproj, const int64_t* nbrs,
                     const int64_t* node_ids, const float* bias, bool gelu, int64_t n, int64_t k,
                     int64_t h, int64_t b, float* out, int64_t* bad, std::uintptr_t stream) {
  if (b == 0) return;
  const cudaStream_t s = as_stream(stream);
  const int64_t rows = b * k;
  // A null bias is trivially aligned.
  if (k == 0) {
    check_node_ids(node_ids, b, n, bad, s);
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

}  // namespace sepfl
