#include "common_cuda.cuh"
#include "ops_cuda.h"

namespace sepfl {

namespace {

using namespace cuda_detail;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;

// atomicMax on floats through their bit patterns, which order like the
// values for the non-negative floats stored here.
__device__ void atomic_max_nonnegative(float* address, float value) {
  atomicMax(reinterpret_cast<int*>(address), __float_as_int(value));
}

// Each warp takes 32 rows at a time: it reads them 32 columns at a time with
// coalesced loads into a shared tile, then each lane sums its own row in rank
// order, the same sequence of float additions as density_cpu, so the results
// match it bit for bit. Row sums go to `sums`, counts to `counts`, the
// block's maxima to maxima[0] (sums) and maxima[1] (counts), and a row holding
// NaN is flagged in `bad`.
__global__ void __launch_bounds__(kThreads)
    row_sums_kernel(const float* __restrict__ sims, int64_t n, int64_t k, float rho,
                    float* __restrict__ sums, float* __restrict__ counts,
                    float* __restrict__ maxima, int64_t* bad) {
  // Row length 33: lane l reading tile[l][j] hits bank (l + j) % 32, no conflicts.
  __shared__ float tile[kWarps][kWarp][kWarp + 1];
  __shared__ float block_max[2][kWarps];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  float (*rows)[kWarp + 1] = tile[warp];
  float max_sum = 0.f, max_count = 0.f;
  for (int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kWarp; row0 < n;
       row0 += static_cast<int64_t>(gridDim.x) * kWarps * kWarp) {
    float sum = 0.f;
    int count = 0;
    bool has_nan = false;
    for (int64_t col0 = 0; col0 < k; col0 += kWarp) {
      const int64_t col = col0 + lane;
      for (int r = 0; r < kWarp; ++r) {
        const int64_t row = row0 + r;
        rows[r][lane] = row < n && col < k ? sims[row * k + col] : 0.f;
      }
      __syncwarp();
      const int width = static_cast<int>(k - col0 < kWarp ? k - col0 : kWarp);
      for (int j = 0; j < width; ++j) {
        has_nan |= rows[lane][j] != rows[lane][j];  // before the clip, which maps NaN to 0
        const float s = fminf(fmaxf(rows[lane][j], 0.f), 1.f);
        sum += s;
        count += s >= rho;
      }
      __syncwarp();  // the tile is rewritten by the next column block
    }
    if (row0 + lane < n) {
      if (has_nan) flag_bad(bad, row0 + lane);
      sums[row0 + lane] = sum;
      counts[row0 + lane] = static_cast<float>(count);
      max_sum = fmaxf(max_sum, sum);
      max_count = fmaxf(max_count, static_cast<float>(count));
    }
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    max_sum = fmaxf(max_sum, __shfl_xor_sync(0xffffffffu, max_sum, offset));
    max_count = fmaxf(max_count, __shfl_xor_sync(0xffffffffu, max_count, offset));
  }
  if (lane == 0) {
    block_max[0][warp] = max_sum;
    block_max[1][warp] = max_count;
  }
  __syncthreads();
  if (threadIdx.x < 2) {
    float m = 0.f;
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, block_max[threadIdx.x][w]);
    atomic_max_nonnegative(&maxima[threadIdx.x], m);
  }
}

// density = (sum / max sum + count / max count) / 2, written as in density_cpu;
// a zero maximum (all similarities clipped to 0, or none >= rho) leaves that term 0.
__global__ void __launch_bounds__(kThreads)
    normalise_kernel(const float* __restrict__ counts, const float* __restrict__ maxima,
                     int64_t n, float* __restrict__ density) {
  const float sum_scale = maxima[0] > 0.f ? maxima[0] : 1.f;
  const float count_scale = maxima[1] > 0.f ? maxima[1] : 1.f;
  for (int64_t i = first_item(); i < n; i += item_stride()) {
    density[i] = 0.5f * (density[i] / sum_scale + counts[i] / count_scale);
  }
}

}  // namespace

void density_cuda(const float* sims, int64_t n, int64_t k, float rho, float* density,
                  float* workspace, int64_t* bad, std::uintptr_t stream) {
  if (n == 0) return;
  const cudaStream_t s = as_stream(stream);
  float* counts = workspace;
  float* maxima = workspace + n;
  // +0.0f is all-zero bits, and the maxima start at 0 as in density_cpu.
  check("density", cudaMemsetAsync(maxima, 0, 2 * sizeof(float), s));
  row_sums_kernel<<<grid_size(n, kWarps * kWarp), kThreads, 0, s>>>(sims, n, k, rho, density,
                                                                    counts, maxima, bad);
  check("density");
  normalise_kernel<<<grid_size(n, kThreads), kThreads, 0, s>>>(counts, maxima, n, density);
  check("density");
  finish("density", s);
}

}  // namespace sepfl
