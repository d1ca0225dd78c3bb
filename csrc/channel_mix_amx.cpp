// The channel-mixing step of the node embeddings on AMX tiles (channel_mix_cpu in ops_cpu.h).
//
// This file is compiled with -mamx-tile -mamx-bf16 and AVX-512 (CMakeLists.txt):
// nothing in it may run before amx_ready() (bf16_dispatch_cpu.cpp) has found AMX-BF16
// and the OS's leave to use its tiles.
//
// Each thread takes a contiguous range of blocks of 32 rows; per block:
//   1. the rows' hidden activations GELU(hidden[a] + hidden[b]) (float32 sum, exact-form
//      GELU, rounded to bfloat16 once) are written into a per-thread A operand [32, depth]
//      that stays in cache (rows past the last zero), and the rows' table lines are
//      prefetched; this is AVX-512 work, done a few vectors at a time between the AMX
//      products of the previous block, so that the two units overlap;
//   2. for every 32 output columns, four float32 result tiles (2 row tiles x 2 column
//      tiles) accumulate A @ W over the whole depth, W read from the packed weights;
//   3. out[r, c] = tokens[a, c] + tokens[b, c] + result[r, c], summed in float32 and
//      rounded to bfloat16 once, a few rows at a time between the next 32 columns'
//      products.
// So the [rows, depth] hidden activations never leave the core's cache.
#include <immintrin.h>

#include <cstdint>

#include "amx_tiles.h"
#include "bf16_avx512.h"
#include "ops_cpu.h"

namespace sepfl {

namespace {

// The hidden activations of one block of rows, written into an A buffer a few vectors at a
// time, so that the AVX-512 work of the next block interleaves with the AMX products of the
// current one. Row i's chunk kc (32 values) lands at a[(kc * kBlock + i) * kDepth]: each A
// tile is 1 KB in one piece (rows 2 KB apart would crowd a few L1 sets). Rows past the
// block's last and depth past `depth` are written as zeros.
class HiddenRows {
 public:
  HiddenRows(const uint16_t* hidden, int64_t depth, const uint16_t* tokens, int64_t width,
             const int64_t* pairs)
      : table_(hidden), depth_(depth), depth_p_(channel_mix_depth(depth)), tokens_(tokens),
        width_(width), pairs_(pairs) {}

  // Start on rows [first, first + count) into a.
  void start(int64_t first, int64_t count, uint16_t* a) {
    first_ = first;
    count_ = count;
    a_ = a;
    row_ = 0;
    col_ = 0;
    select_row();
  }

  // Up to `vectors` more 16-value pieces.
  void step(int64_t vectors) {
    for (; vectors > 0 && row_ < kBlock; --vectors) {
      uint16_t* out = a_ + ((col_ / kDepth) * kBlock + row_) * kDepth + col_ % kDepth;
      if (col_ % kDepth == 0 && next_p_ != nullptr && col_ < depth_) {
        // the next row's cache lines, a row ahead of their use
        _mm_prefetch(reinterpret_cast<const char*>(next_p_ + col_), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(next_q_ + col_), _MM_HINT_T0);
      }
      // the row's two token rows, which the block's results are added to, a line a vector
      const int64_t line = col_ / 16 * 32;
      if (p_ != nullptr && line < 2 * width_) {
        const int64_t pair = 2 * (first_ + row_) + (line >= width_);
        _mm_prefetch(reinterpret_cast<const char*>(tokens_ + pairs_[pair] * width_ + line % width_),
                     _MM_HINT_T1);
      }
      const __m256i bits = p_ != nullptr ? gelu_of_sum_bf16(p_ + col_, q_ + col_,
                                                             first_lanes(depth_ - col_))
                                         : _mm256_setzero_si256();
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bits);
      col_ += 16;
      if (col_ == depth_p_) {
        col_ = 0;
        ++row_;
        select_row();
      }
    }
  }

 private:
  void select_row() {
    p_ = q_ = next_p_ = next_q_ = nullptr;
    if (row_ < count_) {
      p_ = table_ + pairs_[2 * (first_ + row_)] * depth_;
      q_ = table_ + pairs_[2 * (first_ + row_) + 1] * depth_;
    }
    if (row_ + 1 < count_) {
      next_p_ = table_ + pairs_[2 * (first_ + row_ + 1)] * depth_;
      next_q_ = table_ + pairs_[2 * (first_ + row_ + 1) + 1] * depth_;
    }
  }

  const uint16_t* table_;
  int64_t depth_, depth_p_;
  const uint16_t* tokens_;
  int64_t width_;
  const int64_t* pairs_;
  int64_t first_ = 0, count_ = 0, row_ = kBlock, col_ = 0;
  uint16_t* a_ = nullptr;
  const uint16_t *p_ = nullptr, *q_ = nullptr, *next_p_ = nullptr, *next_q_ = nullptr;
};

// Rows [first, first + count) of out from a 32 x 32 result c of columns [n, n + 32): the
// two token rows of each plus the result, rounded once, a few rows at a time.
class TokenRows {
 public:
  TokenRows(const uint16_t* tokens, int64_t width, const int64_t* pairs, uint16_t* out)
      : tokens_(tokens), width_(width), pairs_(pairs), out_(out) {}

  void start(const float* c, int64_t n, int64_t first, int64_t count) {
    c_ = c;
    n_ = n;
    first_ = first;
    count_ = count;
    row_ = 0;
    for (int t = 0; t < 2; ++t) lanes_[t] = first_lanes(width_ - n - t * kTile);
  }

  void step(int64_t rows) {
    for (; rows > 0 && row_ < count_; --rows, ++row_) {
      const int64_t i = first_ + row_;
      const uint16_t* a = tokens_ + pairs_[2 * i] * width_ + n_;
      const uint16_t* b = tokens_ + pairs_[2 * i + 1] * width_ + n_;
      uint16_t* row = out_ + i * width_ + n_;
      for (int t = 0; t < 2; ++t) {
        const __m512 sum = _mm512_add_ps(
            _mm512_load_ps(c_ + row_ * kBlock + t * kTile),
            _mm512_add_ps(load_bf16(a + t * kTile, lanes_[t]), load_bf16(b + t * kTile, lanes_[t])));
        _mm256_mask_storeu_epi16(row + t * kTile, lanes_[t], (__m256i)_mm512_cvtneps_pbh(sum));
      }
    }
  }

  void finish() { step(kBlock); }

 private:
  const uint16_t* tokens_;
  int64_t width_;
  const int64_t* pairs_;
  uint16_t* out_;
  const float* c_ = nullptr;
  int64_t n_ = 0, first_ = 0, count_ = 0, row_ = 0;
  __mmask16 lanes_[2] = {};
};

}  // namespace

void channel_mix_amx(const uint16_t* tokens, int64_t width, const uint16_t* hidden,
                     int64_t depth, const int64_t* pairs, int64_t rows, const uint16_t* weights,
                     uint16_t* out) {
  const int64_t depth_p = channel_mix_depth(depth), width_p = channel_mix_width(width);
  const int64_t chunks = depth_p / kDepth, blocks = (rows + kBlock - 1) / kBlock;
  // vectors of the next block's hidden rows per product step: all of them over this block's
  const int64_t steps = (width_p / kBlock) * chunks;
  const int64_t per_step = (kBlock * depth_p / 16 + steps - 1) / steps;
  const int64_t rows_per_step = (kBlock + chunks - 1) / chunks;
#pragma omp parallel
  {
    load_tile_config();
    // A operands of this block and the next
    AlignedBuffer<uint16_t> a(2 * kBlock * depth_p);
    // two results: the one the products fill, the one whose rows are written out
    AlignedBuffer<float> c(2 * kBlock * kBlock);
    TokenRows token_rows(tokens, width, pairs, out);
    int64_t results = 0;
    HiddenRows next(hidden, depth, tokens, width, pairs);
    // this thread's blocks, each next one prepared during the current
    const auto [lo, hi] = thread_blocks(blocks);
    auto count_of = [&](int64_t block) {
      return rows - block * kBlock < kBlock ? rows - block * kBlock : kBlock;
    };
    if (lo < hi) {
      next.start(lo * kBlock, count_of(lo), a.data());
      next.step(kBlock * depth_p);
    }
    for (int64_t block = lo; block < hi; ++block) {
      const int64_t first = block * kBlock, count = count_of(block);
      const uint16_t* current = a.data() + (block - lo) % 2 * kBlock * depth_p;
      if (block + 1 < hi) {
        next.start(first + kBlock, count_of(block + 1),
                   a.data() + (block + 1 - lo) % 2 * kBlock * depth_p);
      }
      for (int64_t n = 0; n < width_p; n += kBlock, ++results) {
        const uint16_t* w0 = weights + (n / kTile) * chunks * kTileSize;
        float* result = c.data() + results % 2 * kBlock * kBlock;
        // the previous result's rows between these products
        products_2x2(current, w0, w0 + chunks * kTileSize, chunks, [&](int64_t) {
          next.step(per_step);
          token_rows.step(rows_per_step);
        });
        token_rows.finish();
        store_results(result);
        token_rows.start(result, n, first, count);
      }
      next.step(kBlock * depth_p);  // whatever the steps left (none when per_step fits)
    }
    token_rows.finish();
    _tile_release();
  }
}

}  // namespace sepfl
