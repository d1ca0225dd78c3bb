#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>

#include "check.h"
#include "ops_cpu.h"
#include "simd.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace sepfl {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

#ifdef _OPENMP
int64_t max_threads() { return omp_get_max_threads(); }
int64_t thread_num() { return omp_get_thread_num(); }
int64_t team_size() { return omp_get_num_threads(); }
#else
int64_t max_threads() { return 1; }
int64_t thread_num() { return 0; }
int64_t team_size() { return 1; }
#endif

inline float value_of(float v) { return v; }

// bfloat16 bits -> float: the bf16 is the upper half of the float32.
inline float value_of(uint16_t v) {
  const uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The unsigned key type of a stored score type.
template <typename T>
using KeyOf = std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>;

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

// An entry's rank (RowTopk::entries_): -0 ranks as +0, so equal values tie on the column.
inline uint64_t rank_of(float val, int64_t col) {
  return uint64_t(key_of(bits_of(val + 0.0f))) << 32 | uint32_t(~uint32_t(col));
}

inline float value_of_rank(uint64_t rank) {
  const uint32_t key = uint32_t(rank >> 32);
  const uint32_t bits = key >> 31 ? key ^ 0x80000000u : ~key;
  float val;
  std::memcpy(&val, &bits, sizeof val);
  return val;
}

inline int64_t column_of_rank(uint64_t rank) { return ~uint32_t(rank); }

// Moves the `kept` greatest of ranks[0, n) to ranks[0, kept), the kept-th greatest at
// kept - 1 (0 < kept <= n). A quickselect whose partition has no data-dependent branch:
// the compares of a cut are as unpredictable as coin flips, and std::nth_element
// mispredicts about half of them.
void select_greatest(uint64_t* ranks, int64_t n, int64_t kept) {
  int64_t lo = 0, hi = n;
  while (hi - lo > 32) {
    const uint64_t a = ranks[lo], b = ranks[lo + (hi - lo) / 2], c = ranks[hi - 1];
    const uint64_t pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));
    // ranks[lo, above) > pivot after the loop: each rank is swapped to `above`, which
    // moves on only past a greater one.
    int64_t above = lo;
    for (int64_t r = lo; r < hi; ++r) {
      const uint64_t rank = ranks[r];
      ranks[r] = ranks[above];
      ranks[above] = rank;
      above += rank > pivot;
    }
    if (above - lo >= kept) {
      hi = above;
      continue;
    }
    // The pivot is the greatest of ranks[above, hi): it goes next, at `above`.
    std::swap(*std::find(ranks + above, ranks + hi, pivot), ranks[above]);
    kept -= above + 1 - lo;
    lo = above + 1;
    if (kept == 0) return;
  }
  std::nth_element(ranks + lo, ranks + lo + kept - 1, ranks + hi, std::greater<uint64_t>());
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
// key_of of 32 bf16 scores at once.
__attribute__((target("avx512bw"))) inline __m512i keys_avx512bw(const uint16_t* scores) {
  const __m512i bits = _mm512_loadu_si512(scores);
  return _mm512_xor_si512(bits, _mm512_or_si512(_mm512_srai_epi16(bits, 15),
                                                _mm512_set1_epi16(int16_t(0x8000))));
}

// The bf16 scan written out for AVX-512 BW, whose 16-bit lanes the avx512f clone above
// lacks: one compare into a mask register per run, which is also the run's mask.
__attribute__((target("avx512bw"))) int64_t runs_above_avx512bw(const uint16_t* row,
                                                                  int64_t runs, uint16_t floor,
                                                                  int64_t* hits,
                                                                  uint64_t* masks) {
  const __m512i floors = _mm512_set1_epi16(int16_t(floor));
  int64_t found = 0;
  for (int64_t g = 0; g < runs; ++g) {
    const uint64_t above =
        _mm512_cmpgt_epu16_mask(keys_avx512bw(row + g * kRun<uint16_t>), floors);
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

// The fused scan of a mirrored tile: each tile row read once for both sides. For tile
// row r and run g of `lanes` columns (whole runs of kRun<Key>, the last may be partial):
// col_masks[g * rows + r], the lanes above their own lists' floors `floors`, and
// row_masks[g * rows + r], the lanes above row r's floor `row_floors[r]`.
template <typename Key>
inline void both_above(const Key* tile, int64_t stride, int64_t rows, int64_t lanes,
                       const Key* floors, const Key* row_floors, uint64_t* col_masks,
                       uint64_t* row_masks) {
  constexpr int64_t run = kRun<Key>;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g * run < lanes; ++g) {
      uint64_t above = 0, beats = 0;
      for (int64_t l = g * run; l < std::min(lanes, (g + 1) * run); ++l) {
        const Key key = key_of(tile[r * stride + l]);
        above |= uint64_t(key > floors[l]) << (l - g * run);
        beats |= uint64_t(key > row_floors[r]) << (l - g * run);
      }
      col_masks[g * rows + r] = above;
      row_masks[g * rows + r] = beats;
    }
  }
}

SEPFL_VECTOR_CLONES
void both_above_any(const uint32_t* tile, int64_t stride, int64_t rows, int64_t lanes,
                    const uint32_t* floors, const uint32_t* row_floors, uint64_t* col_masks,
                    uint64_t* row_masks) {
  both_above(tile, stride, rows, lanes, floors, row_floors, col_masks, row_masks);
}

SEPFL_VECTOR_CLONES
void both_above_any(const uint16_t* tile, int64_t stride, int64_t rows, int64_t lanes,
                    const uint16_t* floors, const uint16_t* row_floors, uint64_t* col_masks,
                    uint64_t* row_masks) {
  both_above(tile, stride, rows, lanes, floors, row_floors, col_masks, row_masks);
}

#ifdef SEPFL_BF16_SCAN_AVX512BW
__attribute__((target("avx512bw"))) void both_above_avx512bw(
    const uint16_t* tile, int64_t stride, int64_t rows, int64_t lanes, const uint16_t* floors,
    const uint16_t* row_floors, uint64_t* col_masks, uint64_t* row_masks) {
  for (int64_t r = 0; r < rows; ++r) {
    const __m512i row_floor = _mm512_set1_epi16(int16_t(row_floors[r]));
    for (int64_t g = 0; g * kRun<uint16_t> < lanes; ++g) {
      const __m512i keys = keys_avx512bw(tile + r * stride + g * kRun<uint16_t>);
      const __m512i lane_floors = _mm512_loadu_si512(floors + g * kRun<uint16_t>);
      col_masks[g * rows + r] = _mm512_cmpgt_epu16_mask(keys, lane_floors);
      row_masks[g * rows + r] = _mm512_cmpgt_epu16_mask(keys, row_floor);
    }
  }
}
#endif

inline void both_scan(const float* tile, int64_t stride, int64_t rows, int64_t lanes,
                      const uint32_t* floors, const uint32_t* row_floors, uint64_t* col_masks,
                      uint64_t* row_masks) {
  both_above_any(reinterpret_cast<const uint32_t*>(tile), stride, rows, lanes, floors,
                 row_floors, col_masks, row_masks);
}

inline void both_scan(const uint16_t* tile, int64_t stride, int64_t rows, int64_t lanes,
                      const uint16_t* floors, const uint16_t* row_floors, uint64_t* col_masks,
                      uint64_t* row_masks) {
#ifdef SEPFL_BF16_SCAN_AVX512BW
  if (kHasAvx512bw && lanes % kRun<uint16_t> == 0) {
    both_above_avx512bw(tile, stride, rows, lanes, floors, row_floors, col_masks, row_masks);
    return;
  }
#endif
  both_above_any(tile, stride, rows, lanes, floors, row_floors, col_masks, row_masks);
}

// Tile rows per pass of the mirrored scan: the columns' floors are read again between
// passes, so a list whose floor rises early in a tile is not offered entries above its
// stale floor to the end of it.
constexpr int64_t kPass = 64;

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
  uint64_t* ranks = entries_.data() + i * 2 * keep_;
  const int64_t held = count_[i], kept = std::min(held, keep_);
  if (sorted) {
    std::partial_sort(ranks, ranks + kept, ranks + held, std::greater<uint64_t>());
  } else if (kept < held) {
    // The kept-th best in its place, every better one before it: it is the new floor.
    select_greatest(ranks, held, kept);
  }
  count_[i] = kept;
  if (kept == keep_ && kept > 0) floors_[i] = value_of_rank(ranks[kept - 1]);
}

void RowTopk::take(int64_t i, float val, int64_t col) {
  if (!(val > floors_[i]) || col == own_[i]) return;
  entries_[i * 2 * keep_ + count_[i]] = rank_of(val, col);
  if (++count_[i] == 2 * keep_) cut(i, false);
}

template <typename T>
void RowTopk::offer_rows(const T* tile, int64_t tile_rows, int64_t cols, int64_t first_row,
                         int64_t first_col) {
  const int64_t runs = cols / kRun<T>;
  std::vector<int64_t> hits(runs);
  std::vector<uint64_t> masks(runs);
#pragma omp for schedule(static) nowait
  for (int64_t r = 0; r < tile_rows; ++r) {
    const T* row = tile + r * cols;
    const int64_t i = first_row + r;
    const int64_t found = scan(row, runs, floors_[i], hits.data(), masks.data());
    for (int64_t h = 0; h < found; ++h) {
      const int64_t start = hits[h] * kRun<T>;
      for (uint64_t above = masks[h]; above != 0; above &= above - 1) {
        const int64_t c = start + __builtin_ctzll(above);
        take(i, value_of(row[c]), first_col + c);
      }
    }
    for (int64_t c = runs * kRun<T>; c < cols; ++c) take(i, value_of(row[c]), first_col + c);
  }
}

template <typename T>
void RowTopk::offer_mirrored(const T* tile, int64_t tile_rows, int64_t cols, int64_t first_row,
                             int64_t first_col) {
  using Key = KeyOf<T>;
  constexpr int64_t run = kRun<T>;
  const int64_t strips = (cols + run - 1) / run;
  if (int64_t(row_hits_.size()) < max_threads()) row_hits_.resize(max_threads());
#pragma omp parallel
  {
    const int64_t t = thread_num(), team = team_size();
    // This thread's columns: a contiguous range of whole runs, after the ranges of the
    // threads before it.
    const int64_t first_lane = strips * t / team * run;
    const int64_t lanes = std::min(strips * (t + 1) / team * run, cols) - first_lane;
    const int64_t runs = (lanes + run - 1) / run;
    std::vector<RowHit>& mine = row_hits_[t];
    mine.clear();
    std::vector<Key> lane_floors(lanes);
    Key row_floors[kPass];
    std::vector<uint64_t> col_masks(runs * kPass), row_masks(runs * kPass);
    for (int64_t pass = 0; lanes > 0 && pass < tile_rows; pass += kPass) {
      const int64_t rows = std::min(kPass, tile_rows - pass);
      for (int64_t l = 0; l < lanes; ++l) {
        lane_floors[l] = floor_key(floors_[first_col + first_lane + l], tile);
      }
      for (int64_t r = 0; r < rows; ++r) {
        row_floors[r] = floor_key(floors_[first_row + pass + r], tile);
      }
      const T* part = tile + pass * cols + first_lane;
      both_scan(part, cols, rows, lanes, lane_floors.data(), row_floors, col_masks.data(),
                row_masks.data());
      // The columns' own lists are this thread's alone: taken now.
      for (int64_t g = 0; g < runs; ++g) {
        for (int64_t r = 0; r < rows; ++r) {
          for (uint64_t above = col_masks[g * rows + r]; above != 0; above &= above - 1) {
            const int64_t l = g * run + __builtin_ctzll(above);
            take(first_col + first_lane + l, value_of(part[r * cols + l]),
                 first_row + pass + r);
          }
        }
      }
      // The tile rows' lists are every thread's: kept, by row and then column.
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t g = 0; g < runs; ++g) {
          for (uint64_t above = row_masks[g * rows + r]; above != 0; above &= above - 1) {
            const int64_t l = g * run + __builtin_ctzll(above);
            mine.push_back({pass + r, first_col + first_lane + l, value_of(part[r * cols + l])});
          }
        }
      }
    }
#pragma omp barrier
    // Each thread takes a range of tile rows' entries, from the threads in order, so each
    // row gets its columns in increasing order.
    const int64_t lo = tile_rows * t / team, hi = tile_rows * (t + 1) / team;
    for (int64_t u = 0; u < team; ++u) {
      const std::vector<RowHit>& hits = row_hits_[u];
      auto hit = std::lower_bound(hits.begin(), hits.end(), lo,
                                  [](const RowHit& h, int64_t row) { return h.row < row; });
      for (; hit != hits.end() && hit->row < hi; ++hit) {
        take(first_row + hit->row, hit->val, hit->col);
      }
    }
  }
}

template <typename T>
void RowTopk::offer_tile(const T* tile, int64_t tile_rows, int64_t cols, int64_t first_row,
                         int64_t first_col, bool mirror) {
  if (keep_ == 0) return;
  if (mirror) {
    offer_mirrored(tile, tile_rows, cols, first_row, first_col);
    return;
  }
#pragma omp parallel
  offer_rows(tile, tile_rows, cols, first_row, first_col);
}

void RowTopk::offer(const float* tile, int64_t tile_rows, int64_t cols, int64_t first_row,
                    int64_t first_col, bool mirror) {
  offer_tile(tile, tile_rows, cols, first_row, first_col, mirror);
}

void RowTopk::offer(const uint16_t* tile, int64_t tile_rows, int64_t cols, int64_t first_row,
                    int64_t first_col, bool mirror) {
  offer_tile(tile, tile_rows, cols, first_row, first_col, mirror);
}

void RowTopk::result(int64_t start, int64_t stop, int64_t* idx, float* vals) {
  const int64_t width = keep_ + 1;
#pragma omp parallel for schedule(static)
  for (int64_t i = start; i < stop; ++i) {
    cut(i, true);
    int64_t* row_idx = idx + (i - start) * width;
    float* row_vals = vals + (i - start) * width;
    row_idx[0] = own_[i];
    row_vals[0] = kInf;
    for (int64_t e = 0; e < keep_; ++e) {
      const bool held = e < count_[i];
      const uint64_t rank = entries_[i * 2 * keep_ + e];
      row_idx[1 + e] = held ? column_of_rank(rank) : -1;
      row_vals[1 + e] = held ? value_of_rank(rank) : -kInf;
    }
  }
}

}  // namespace sepfl
