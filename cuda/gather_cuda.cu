#include "ops_cuda.h"
#include "rows_cuda.cuh"

namespace sepfl {

namespace {

using namespace cuda_detail;

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

}  // namespace

void gather_cuda(const float* features, const int64_t* nbrs, const int64_t* node_ids, int64_t n,
                 int64_t k, int64_t d, int64_t b, float* out, int64_t* bad,
                 std::uintptr_t stream) {
  if (b == 0) return;
  const cudaStream_t s = as_stream(stream);
  const int64_t rows = b * k;
  if (k == 0) {
    check_node_ids(node_ids, b, n, bad, s);
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

}  // namespace sepfl
