#include <algorithm>
#include <cstring>
#include <limits>

#include "check.h"
#include "ops_cpu.h"
#include "simd.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

// An unsigned integer of a score's width that orders as the score does: a greater
// float has a greater key (-0 keys below +0, so equal zeros may pass as greater; the
// exact comparison after the scan drops them). Integer compares of the stored bits are
// what the vectoriser turns into one instruction per run.
inline uint32_t key_of(uint32_t bits) {
  return bits ^ (uint32_t(int32_t(bits) >> 31) | 0x80000000u);
}

inline uint16_t key_of(uint16_t bits) {
  return bits ^ (uint16_t(int16_t(bits) >> 15) | 0x8000u);
}

inline uint32_t bits_of(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

// The key of `floor` for scores stored as T: for bf16, of the largest bfloat16 at or
// below it (the upper half of its bits, one step down for a negative float that had
// lower bits), so that no bf16 score above the floor keys at or below it.
inline uint32_t floor_key(float floor, const float*) { return key_of(bits_of(floor)); }

inline uint16_t floor_key(float floor, const uint16_t*) {
  const uint32_t bits = bits_of(floor);
  const uint16_t key = key_of(uint16_t(bits >> 16));
  return (bits >> 31) && (bits & 0xFFFFu) ? uint16_t(key - 1) : key;
}

// The runs of `row` [runs * kRun] holding a key above `floor`: their numbers written to
// `hits` and their entries above it as bit masks to `masks`; returns how many. The first
// loop is the whole cost of the selection (every score is read once, there), so it is
// compiled per vector width; the second reads the few runs it found.
template <typename Key>
inline int64_t runs_above(const Key* row, int64_t runs, Key floor, int64_t* hits,
                          uint64_t* masks) {
  constexpr int64_t run = kRun<Key>;
  int64_t found = 0;
  for (int64_t g = 0; g < runs; ++g) {
    Key any = 0;
    for (int64_t l = 0; l < run; ++l) any |= key_of(row[g * run + l]) > floor;
    hits[found] = g;
    found += any != 0;
  }
  for (int64_t h = 0; h < found; ++h) {
    uint64_t above = 0;
    for (int64_t l = 0; l < run; ++l) {
      above |= uint64_t(key_of(row[hits[h] * run + l]) > floor) << l;
    }
    masks[h] = above;
  }
  return found;
}

SEPFL_VECTOR_CLONES
int64_t runs_above_any(const uint32_t* row, int64_t runs, uint32_t floor, int64_t* hits,
                       uint64_t* masks) {
  return runs_above(row, runs, floor, hits, masks);
}

SEPFL_VECTOR_CLONES
int64_t runs_above_any(const uint16_t* row, int64_t runs, uint16_t floor, int64_t* hits,
                       uint64_t* masks) {
  return runs_above(row, runs, floor, hits, masks);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(__SANITIZE_ADDRESS__)
#define SEPFL_BF16_SCAN_AVX512BW 1
// The bf16 scan written out for AVX-512 BW, whose 16-bit lanes the avx512f clone above
// lacks: one compare into a mask register per run, which is also the run's mask.
__attribute__((target("avx512bw"))) int64_t runs_above_avx512bw(const uint16_t* row,
                                                                  int64_t runs, uint16_t floor,
                                                                  int64_t* hits,
                                                                  uint64_t* masks) {
  const __m512i floors = _mm512_set1_epi16(int16_t(floor));
  const __m512i high = _mm512_set1_epi16(int16_t(0x8000));
  int64_t found = 0;
  for (int64_t g = 0; g < runs; ++g) {
    const __m512i bits = _mm512_loadu_si512(row + g * kRun<uint16_t>);
    const __m512i keys =
        _mm512_xor_si512(bits, _mm512_or_si512(_mm512_srai_epi16(bits, 15), high));
    const uint64_t above = _mm512_cmpgt_epu16_mask(keys, floors);
    hits[found] = g;
    masks[found] = above;
    found += above != 0;
  }
  return found;
}

// Read once at load; the CPU model is initialised first, as this may run before libgcc's
// own constructor does.
bool cpu_has_avx512bw() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bw");
}

const bool kHasAvx512bw = cpu_has_avx512bw();
#endif

inline int64_t scan(const float* row, int64_t runs, float floor, int64_t* hits,
                    uint64_t* masks) {
  return runs_above_any(reinterpret_cast<const uint32_t*>(row), runs, floor_key(floor, row),
                        hits, masks);
}

inline int64_t scan(const uint16_t* row, int64_t runs, float floor, int64_t* hits,
                    uint64_t* masks) {
#ifdef SEPFL_BF16_SCAN_AVX512BW
  if (kHasAvx512bw) return runs_above_avx512bw(row, runs, floor_key(floor, row), hits, masks);
#endif
  return runs_above_any(row, runs, floor_key(floor, row), hits, masks);
}

}  // namespace

// width - 1, once width is checked: the members' sizes follow from it.
static int64_t checked_keep(int64_t width) {
  SEPFL_CHECK(width >= 1, "width must be >= 1, got " << width);
  return width - 1;
}

RowTopk::RowTopk(int64_t rows, int64_t width, const int64_t* own, const float* above)
    : rows_(rows),
      keep_(checked_keep(width)),
      own_(own, own + rows),
      floors_(above ? std::vector<float>(above, above + rows)
                    : std::vector<float>(rows, -kInf)),
      count_(rows, 0),
      entries_(rows * 2 * keep_) {}

void RowTopk::cut(int64_t i, bool sorted) {
  Entry* entries = entries_.data() + i * 2 * keep_;
  const int64_t held = count_[i], kept = std::min(held, keep_);
  if (sorted) {
    std::partial_sort(entries, entries + kept, entries + held);
  } else if (kept < held) {
    // The kept-th best in its place, every better one before it: it is the new floor.
    std::nth_element(entries, entries + kept - 1, entries + held);
  }
  count_[i] = kept;
  if (kept == keep_ && kept > 0) floors_[i] = entries[kept - 1].val;
}

template <typename T>
void RowTopk::offer_tile(const T* tile, int64_t cols, int64_t first_col) {
  if (keep_ == 0) return;
  const int64_t runs = cols / kRun<T>;
#pragma omp parallel
  {
    std::vector<int64_t> hits(runs);
    std::vector<uint64_t> masks(runs);
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
      const int64_t found = scan(row, runs, floors_[i], hits.data(), masks.data());
      for (int64_t h = 0; h < found; ++h) {
        const int64_t start = hits[h] * kRun<T>;
        for (uint64_t above = masks[h]; above != 0; above &= above - 1) {
          offer(start + __builtin_ctzll(above));
        }
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
