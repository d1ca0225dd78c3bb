// The channel-mixing step of the node embeddings on AMX tiles (channel_mix_cpu in ops_cpu.h).
//
// This file is compiled with -mamx-tile -mamx-bf16 and AVX-512 (CMakeLists.txt):
// nothing in it may run before amx_ready() (bf16_dispatch_cpu.cpp) has found AMX-BF16
// and the OS's leave to use its tiles.
//
// Each thread takes a contiguous range of blocks of 32 rows; per block:
//   1. the rows' hidden activations GELU(hidden[a] + hidden[b]) (float32 sum, exact-form
//      GELU, rounded to bfloat16 once) are written into a per-thread A operand [32, depth]
//      that stays in cache (rows past the last zero); this is AVX-512 work, done a few
//      vectors at a time between the AMX products of the previous block, so that the two
//      units overlap;
//   2. for every 32 output columns, four float32 result tiles (2 row tiles x 2 column
//      tiles) accumulate A @ W over the whole depth, W read from the packed weights;
//   3. out[r, c] = tokens[a, c] + tokens[b, c] + result[r, c], summed in float32 and
//      rounded to bfloat16 once.
// So the [rows, depth] hidden activations never leave the core's cache.
#include <immintrin.h>

#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

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
  HiddenRows(const uint16_t* hidden, int64_t depth, const int64_t* pairs)
      : table_(hidden), depth_(depth), depth_p_(channel_mix_depth(depth)), pairs_(pairs),
        tail_(static_cast<__mmask16>((1u << (depth % 16)) - 1)) {}

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
      __m256i bits = _mm256_setzero_si256();
      if (p_ != nullptr && col_ < depth_) {
        const __mmask16 lanes = depth_ - col_ >= 16 ? 0xFFFF : tail_;
        const __m512 sum = _mm512_add_ps(load_bf16(p_ + col_, lanes), load_bf16(q_ + col_, lanes));
        bits = (__m256i)_mm512_cvtneps_pbh(gelu_avx512(sum));
      }
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
  const int64_t* pairs_;
  __mmask16 tail_;
  int64_t first_ = 0, count_ = 0, row_ = kBlock, col_ = 0;
  uint16_t* a_ = nullptr;
  const uint16_t *p_ = nullptr, *q_ = nullptr, *next_p_ = nullptr, *next_q_ = nullptr;
};

}  // namespace

void channel_mix_amx(const uint16_t* tokens, int64_t width, const uint16_t* hidden,
                     int64_t depth, const int64_t* pairs, int64_t rows, const uint16_t* weights,
                     uint16_t* out) {
  const int64_t depth_p = channel_mix_depth(depth), width_p = channel_mix_width(width);
  const int64_t chunks = depth_p / kDepth, blocks = (rows + kBlock - 1) / kBlock;
  const int64_t tile_size = kTile * kDepth;  // bfloat16 values of one tile
  // vectors of the next block's hidden rows per product step: all of them over this block's
  const int64_t steps = (width_p / kBlock) * chunks;
  const int64_t per_step = (kBlock * depth_p / 16 + steps - 1) / steps;
#pragma omp parallel
  {
    load_tile_config();
    // A operands of this block and the next
    AlignedBuffer<uint16_t> a(2 * kBlock * depth_p);
    AlignedBuffer<float> c(kBlock * kBlock);
    HiddenRows next(hidden, depth, pairs);
    int64_t threads = 1, thread = 0;
#if defined(_OPENMP)
    threads = omp_get_num_threads();
    thread = omp_get_thread_num();
#endif
    // this thread's blocks: a contiguous range, each next one prepared during the current
    const int64_t lo = blocks * thread / threads, hi = blocks * (thread + 1) / threads;
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
      for (int64_t n = 0; n < width_p; n += kBlock) {
        const uint16_t* w0 = weights + (n / kTile) * chunks * tile_size;
        products_2x2(current, w0, w0 + chunks * tile_size, chunks,
                     [&](int64_t) { next.step(per_step); });
        store_results(c.data());
        for (int64_t i = 0; i < count; ++i) {
          const uint16_t* token_a = tokens + pairs[2 * (first + i)] * width + n;
          const uint16_t* token_b = tokens + pairs[2 * (first + i) + 1] * width + n;
          uint16_t* row = out + (first + i) * width + n;
          for (int64_t j = 0; j < kBlock && n + j < width; j += kTile) {
            const int64_t left = width - n - j;
            const __mmask16 lanes = left >= kTile ? 0xFFFF : (__mmask16)((1u << left) - 1);
            const __m512 sum = _mm512_add_ps(
                _mm512_loadu_ps(c.data() + i * kBlock + j),
                _mm512_add_ps(load_bf16(token_a + j, lanes), load_bf16(token_b + j, lanes)));
            _mm256_mask_storeu_epi16(row + j, lanes, (__m256i)_mm512_cvtneps_pbh(sum));
          }
        }
      }
      next.step(kBlock * depth_p);  // whatever the steps left (none when per_step fits)
    }
    _tile_release();
  }
}

}  // namespace sepfl
