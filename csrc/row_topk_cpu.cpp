#include <algorithm>
#include <cstring>
#include <limits>

#include "check.h"
#include "ops_cpu.h"
#include "simd.h"

namespace sepfl {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

inline float value_of(float v) { return v; }

// bfloat16 bits -> float: the bf16 is the upper half of the float32.
inline float value_of(uint16_t v) {
  const uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// A run of entries is one cache line of scores.
template <typename T>
constexpr int64_t kRun = 64 / int64_t(sizeof(T));

// The runs of `row` [runs * kRun] holding an entry above `floor`, written to `hits`;
// returns how many. This scan is the whole cost of the selection (every score is read
// once, here), so it is compiled per vector width.
template <typename T>
inline int64_t runs_above(const T* row, int64_t runs, float floor, int64_t* hits) {
  int64_t found = 0;
  for (int64_t g = 0; g < runs; ++g) {
    int any = 0;
    for (int64_t l = 0; l < kRun<T>; ++l) any |= value_of(row[g * kRun<T> + l]) > floor;
    hits[found] = g;
    found += any;
  }
  return found;
}

SEPFL_VECTOR_CLONES
int64_t runs_above_any(const float* row, int64_t runs, float floor, int64_t* hits) {
  return runs_above(row, runs, floor, hits);
}

SEPFL_VECTOR_CLONES
int64_t runs_above_any(const uint16_t* row, int64_t runs, float floor, int64_t* hits) {
  return runs_above(row, runs, floor, hits);
}

}  // namespace

// Larger value first; among equal values the smaller column.
bool RowTopk::Entry::operator<(const Entry& other) const {
  return val > other.val || (val == other.val && col < other.col);
}

// width - 1, once width is checked: the members' sizes follow from it.
static int64_t checked_keep(int64_t width) {
  SEPFL_CHECK(width >= 1, "width must be >= 1, got " << width);
  return width - 1;
}

RowTopk::RowTopk(int64_t rows, int64_t width, const int64_t* own)
    : rows_(rows),
      keep_(checked_keep(width)),
      own_(own, own + rows),
      floors_(rows, -kInf),
      count_(rows, 0),
      entries_(rows * 2 * keep_) {}

void RowTopk::cut(int64_t i, bool sorted) {
  Entry* entries = entries_.data() + i * 2 * keep_;
  const int64_t held = count_[i], kept = std::min(held, keep_);
  if (sorted) {
    std::partial_sort(entries, entries + kept, entries + held);
  } else if (kept < held) {
    std::nth_element(entries, entries + kept, entries + held);
  }
  count_[i] = kept;
  if (kept == keep_ && kept > 0) {
    floors_[i] = std::min_element(entries, entries + kept, [](const Entry& a, const Entry& b) {
                   return a.val < b.val;
                 })->val;
  }
}

template <typename T>
void RowTopk::offer_tile(const T* tile, int64_t cols, int64_t first_col) {
  if (keep_ == 0) return;
  const int64_t runs = cols / kRun<T>;
#pragma omp parallel
  {
    std::vector<int64_t> hits(runs);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows_; ++i) {
      const T* row = tile + i * cols;
      // Offer entry c of the row to row i's best; the floor can rise on the way.
      const auto offer = [&](int64_t c) {
        const float v = value_of(row[c]);
        const int64_t col = first_col + c;
        if (!(v > floors_[i]) || col == own_[i]) return;
        entries_[i * 2 * keep_ + count_[i]] = {v, col};
        if (++count_[i] == 2 * keep_) cut(i, false);
      };
      const int64_t found = runs_above_any(row, runs, floors_[i], hits.data());
      for (int64_t h = 0; h < found; ++h) {
        // The run's entries above the floor as a bit mask, then only those.
        const int64_t start = hits[h] * kRun<T>;
        const float floor = floors_[i];
        uint64_t above = 0;
        for (int64_t l = 0; l < kRun<T>; ++l) {
          above |= uint64_t(value_of(row[start + l]) > floor) << l;
        }
        for (; above != 0; above &= above - 1) offer(start + __builtin_ctzll(above));
      }
      for (int64_t c = runs * kRun<T>; c < cols; ++c) offer(c);
    }
  }
}

void RowTopk::offer(const float* tile, int64_t cols, int64_t first_col) {
  offer_tile(tile, cols, first_col);
}

void RowTopk::offer(const uint16_t* tile, int64_t cols, int64_t first_col) {
  offer_tile(tile, cols, first_col);
}

void RowTopk::result(int64_t* idx, float* vals) {
  const int64_t width = keep_ + 1;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows_; ++i) {
    cut(i, true);
    idx[i * width] = own_[i];
    vals[i * width] = kInf;
    for (int64_t e = 0; e < keep_; ++e) {
      const bool held = e < count_[i];
      const Entry& entry = entries_[i * 2 * keep_ + e];
      idx[i * width + 1 + e] = held ? entry.col : -1;
      vals[i * width + 1 + e] = held ? entry.val : -kInf;
    }
  }
}

}  // namespace sepfl
