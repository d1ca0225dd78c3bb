// The attention scores of the node embeddings on AMX tiles (attention_scores_cpu in
// ops_cpu.h).
//
// This file is compiled with -mamx-tile -mamx-bf16 and AVX-512 (CMakeLists.txt): nothing in
// it may run before amx_ready() (bf16_dispatch_cpu.cpp) has found AMX-BF16 and the
// OS's leave to use its tiles.
//
// Each thread takes a contiguous range of blocks of 32 rows; per block the rows are copied
// into an A operand in tile order (zero past the last row and past the width), then for
// every 32 output columns four float32 result tiles accumulate A @ W over the width. Each
// result's epilogue (bias, exact-form GELU, times the output weights, summed per row into 16
// lanes) is AVX-512 work, done a few rows at a time between the AMX products of the next 32
// columns, so that the two units overlap. The [rows, out] hidden activations never leave
// the core's cache and are never rounded.
#include <immintrin.h>

#include <cstdint>

#include "amx_tiles.h"
#include "bf16_avx512.h"
#include "ops_cpu.h"

namespace sepfl {

namespace {

// The epilogue of one 32 x 32 result: rows' lanes += out_w * GELU(c + bias), a few rows at a
// time. c holds the result as [32 rows][32 columns].
class Epilogue {
 public:
  Epilogue(const float* bias, const float* out_w, int64_t out, float* lanes)
      : bias_(bias), out_w_(out_w), out_(out), lanes_(lanes) {}

  // Start on the result c of columns [n, n + 32).
  void start(const float* c, int64_t n) {
    c_ = c;
    row_ = 0;
    for (int64_t j = 0; j < kBlock; j += kTile) {
      const __mmask16 mask = first_lanes(out_ - n - j);
      bias_v_[j / kTile] = _mm512_maskz_loadu_ps(mask, bias_ + n + j);
      out_w_v_[j / kTile] = _mm512_maskz_loadu_ps(mask, out_w_ + n + j);
    }
  }

  // Up to `count` more rows.
  void step(int64_t count) {
    for (; count > 0 && row_ < kBlock; --count, ++row_) {
      const float* c = c_ + row_ * kBlock;
      __m512 sum = _mm512_loadu_ps(lanes_ + row_ * kTile);
      sum = _mm512_fmadd_ps(out_w_v_[0], gelu_avx512(_mm512_add_ps(_mm512_loadu_ps(c), bias_v_[0])),
                            sum);
      sum = _mm512_fmadd_ps(out_w_v_[1],
                            gelu_avx512(_mm512_add_ps(_mm512_loadu_ps(c + kTile), bias_v_[1])), sum);
      _mm512_storeu_ps(lanes_ + row_ * kTile, sum);
    }
  }

  void finish() { step(kBlock); }

 private:
  const float *bias_, *out_w_;
  int64_t out_;
  float* lanes_;
  const float* c_ = nullptr;
  int64_t row_ = kBlock;
  __m512 bias_v_[2], out_w_v_[2];
};

// Rows [first, first + count) of x [*, width] into `a` in tile order: chunk kc of row i at
// a[(kc * kBlock + i) * kDepth]; zero past the last row and past the width.
void copy_rows(const uint16_t* x, int64_t width, int64_t first, int64_t count, uint16_t* a) {
  const int64_t width_p = channel_mix_depth(width);
  for (int64_t i = 0; i < kBlock; ++i) {
    const uint16_t* row = x + (first + i) * width;
    for (int64_t c = 0; c < width_p; c += kDepth) {
      const int64_t left = i < count ? width - c : 0;
      const __mmask32 mask = left >= kDepth ? 0xFFFFFFFFu : left > 0 ? (__mmask32)((1u << left) - 1) : 0;
      _mm512_store_si512(a + ((c / kDepth) * kBlock + i) * kDepth,
                         _mm512_maskz_loadu_epi16(mask, row + c));
    }
  }
}

}  // namespace

void attention_scores_amx(const uint16_t* x, int64_t rows, int64_t width,
                          const uint16_t* weights, int64_t out, const float* bias,
                          const float* out_w, float* scores) {
  const int64_t chunks = channel_mix_depth(width) / kDepth;
  const int64_t out_p = channel_mix_width(out), blocks = (rows + kBlock - 1) / kBlock;
  // epilogue rows per product step: all 32 over the next 32 columns' steps
  const int64_t per_step = (kBlock + chunks - 1) / chunks;
#pragma omp parallel
  {
    load_tile_config();
    AlignedBuffer<uint16_t> a(chunks * kBlock * kDepth);
    // two results (the one the products fill, the one the epilogue reads) and the lanes
    AlignedBuffer<float> c(2 * kBlock * kBlock), lanes(kBlock * kTile);
    Epilogue epilogue(bias, out_w, out, lanes.data());
    const auto [lo, hi] = thread_blocks(blocks);
    for (int64_t block = lo; block < hi; ++block) {
      const int64_t first = block * kBlock;
      const int64_t count = rows - first < kBlock ? rows - first : kBlock;
      copy_rows(x, width, first, count, a.data());
      for (int64_t i = 0; i < kBlock * kTile; i += kTile) {
        _mm512_storeu_ps(lanes.data() + i, _mm512_setzero_ps());
      }
      for (int64_t n = 0, step = 0; n < out_p; n += kBlock, ++step) {
        const uint16_t* w0 = weights + (n / kTile) * chunks * kTileSize;
        float* result = c.data() + step % 2 * kBlock * kBlock;
        // the previous 32 columns' epilogue between these products
        products_2x2(a.data(), w0, w0 + chunks * kTileSize, chunks,
                     [&](int64_t) { epilogue.step(per_step); });
        epilogue.finish();
        store_results(result);
        epilogue.start(result, n);
      }
      epilogue.finish();
      for (int64_t i = 0; i < count; ++i) {
        scores[first + i] = _mm512_reduce_add_ps(_mm512_loadu_ps(lanes.data() + i * kTile));
      }
    }
    _tile_release();
  }
}

}  // namespace sepfl
