// pybind11 glue of sepfl._core: numpy buffers in, pointers to the CPU kernels,
// numpy arrays out. Arrays must already be C-contiguous float32 / int64 (the
// Python layer converts explicitly; `noconvert` makes pybind11 refuse anything
// else rather than copying). Shapes are re-checked here so a direct call cannot go out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <tuple>

#include "check.h"
#include "ops_cpu.h"
#include "preconditions.h"

namespace py = pybind11;

namespace bind {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;
using Floats = Array<float>;
using Indices = Array<int64_t>;

template <typename T>
void require_ndim(const Array<T>& x, py::ssize_t ndim, const char* name) {
  SEPFL_CHECK(x.ndim() == ndim, name << " must have " << ndim << " dimension(s), got " << x.ndim());
}

template <typename T>
void require_dim(const Array<T>& x, py::ssize_t axis, py::ssize_t size, const char* name) {
  SEPFL_CHECK(x.shape(axis) == size, name << " has size " << x.shape(axis) << " on axis " << axis
                                          << ", expected " << size);
}

// The index arrays every gather takes, checked against the n rows gathered from:
// nbrs [n, k] and node_ids [b]. Returns {k, b}.
std::tuple<int64_t, int64_t> require_gather_indices(const Indices& nbrs, const Indices& node_ids,
                                                    int64_t n) {
  require_ndim(nbrs, 2, "nbrs");
  require_ndim(node_ids, 1, "node_ids");
  require_dim(nbrs, 0, n, "nbrs");
  return {nbrs.shape(1), node_ids.shape(0)};
}

Floats density(const Floats& sims, float rho) {
  require_ndim(sims, 2, "sims");
  const int64_t n = sims.shape(0), k = sims.shape(1);
  Floats out(n);
  {
    py::gil_scoped_release release;
    sepfl::density_cpu(sims.data(), n, k, rho, out.mutable_data());
  }
  return out;
}

Indices select_pairs(const Indices& nbrs, const Floats& density, int64_t max_per_node) {
  require_ndim(nbrs, 2, "nbrs");
  require_ndim(density, 1, "density");
  const int64_t n = nbrs.shape(0), k = nbrs.shape(1);
  require_dim(density, 0, n, "density");
  const int64_t width = sepfl::select_pairs_width(max_per_node, k);
  Indices dst_padded({n, width});
  {
    py::gil_scoped_release release;
    sepfl::select_pairs_cpu(nbrs.data(), density.data(), n, k, width, dst_padded.mutable_data());
  }
  return dst_padded;
}

std::tuple<Indices, Indices> train_pairs(const Indices& nbrs, const Indices& labels,
                                         int64_t ranks) {
  require_ndim(nbrs, 2, "nbrs");
  require_ndim(labels, 1, "labels");
  const int64_t n = nbrs.shape(0), k = nbrs.shape(1);
  require_dim(labels, 0, n, "labels");
  sepfl::check_train_ranks(ranks, k);
  Indices dst_padded({n, ranks}), target_padded({n, ranks});
  {
    py::gil_scoped_release release;
    sepfl::train_pairs_cpu(nbrs.data(), labels.data(), n, k, ranks, dst_padded.mutable_data(),
                           target_padded.mutable_data());
  }
  return {dst_padded, target_padded};
}

py::tuple compact(const Indices& padded, const std::optional<Indices>& alongside) {
  require_ndim(padded, 2, "padded");
  const int64_t n = padded.shape(0), m = padded.shape(1);
  if (alongside) {
    require_ndim(*alongside, 2, "alongside");
    require_dim(*alongside, 0, n, "alongside");
    require_dim(*alongside, 1, m, "alongside");
  }
  int64_t count;
  {
    py::gil_scoped_release release;
    count = sepfl::count_entries_cpu(padded.data(), n * m);
  }
  Indices rows(count), entries(count);
  std::optional<Indices> alongside_out;
  if (alongside) alongside_out.emplace(count);
  {
    py::gil_scoped_release release;
    sepfl::compact_cpu(padded.data(), alongside ? alongside->data() : nullptr, n, m,
                       rows.mutable_data(), entries.mutable_data(),
                       alongside_out ? alongside_out->mutable_data() : nullptr);
  }
  if (alongside_out) return py::make_tuple(rows, entries, *alongside_out);
  return py::make_tuple(rows, entries);
}

Floats gather(const Floats& features, const Indices& nbrs, const Indices& node_ids) {
  require_ndim(features, 2, "features");
  const int64_t n = features.shape(0), d = features.shape(1);
  const auto [k, b] = require_gather_indices(nbrs, node_ids, n);
  Floats out({b, k, d});
  {
    py::gil_scoped_release release;
    sepfl::gather_cpu(features.data(), nbrs.data(), node_ids.data(), n, k, d, b,
                      out.mutable_data());
  }
  return out;
}

Floats gather_add(const Floats& a, const Floats& bproj, const Indices& nbrs,
                  const Indices& node_ids, const std::optional<Floats>& bias, bool gelu) {
  require_ndim(a, 2, "a");
  require_ndim(bproj, 2, "bproj");
  const int64_t n = a.shape(0), h = a.shape(1);
  require_dim(bproj, 0, n, "bproj");
  require_dim(bproj, 1, h, "bproj");
  const auto [k, b] = require_gather_indices(nbrs, node_ids, n);
  if (bias) {
    require_ndim(*bias, 1, "bias");
    require_dim(*bias, 0, h, "bias");
  }
  const float* bias_ptr = bias ? bias->data() : nullptr;
  Floats out({b, k, h});
  {
    py::gil_scoped_release release;
    sepfl::gather_add_cpu(a.data(), bproj.data(), nbrs.data(), node_ids.data(), bias_ptr, gelu,
                          n, k, h, b, out.mutable_data());
  }
  return out;
}

// tokens [k + 1, cols] bfloat16 bits, in place; w_in, w_out padded and tiled as
// token_mix_cpu says (token_mix_shapes gives the shapes), scale [width] float32.
void token_mix(Array<uint16_t>& tokens, const Array<uint16_t>& w_in,
               const Array<uint16_t>& w_out, const Floats& scale) {
  require_ndim(tokens, 2, "tokens");
  require_ndim(w_in, 4, "w_in");
  require_ndim(w_out, 4, "w_out");
  require_ndim(scale, 1, "scale");
  const int64_t k = tokens.shape(0) - 1, cols = tokens.shape(1), width = scale.shape(0);
  SEPFL_CHECK(k >= 1, "tokens must have at least 2 rows (k tokens and the row of ones)");
  const int64_t in_shape[4] = {sepfl::token_mix_rows(2 * k) / 32,
                               sepfl::token_mix_depth(k + 1) / 32, 32, 32};
  const int64_t out_shape[4] = {sepfl::token_mix_rows(k) / 32,
                                sepfl::token_mix_depth(2 * k + 1) / 32, 32, 32};
  for (int axis = 0; axis < 4; ++axis) {
    require_dim(w_in, axis, in_shape[axis], "w_in");
    require_dim(w_out, axis, out_shape[axis], "w_out");
  }
  SEPFL_CHECK(width >= 1 && cols % width == 0,
              "tokens' " << cols << " columns must be a multiple of scale's " << width);
  uint16_t* data = tokens.mutable_data();
  py::gil_scoped_release release;
  sepfl::token_mix_cpu(data, k, cols, width, w_in.data(), w_out.data(), scale.data());
}

// IndexError unless every entry of pairs [rows, 2] is a row of a table of table_rows rows.
void check_pairs(const Indices& pairs, int64_t table_rows) {
  const int64_t* entries = pairs.data();
  for (int64_t i = 0; i < 2 * pairs.shape(0); ++i) {
    SEPFL_CHECK_INDEX(entries[i] >= 0 && entries[i] < table_rows,
                      "pairs[" << i / 2 << ", " << i % 2 << "] = " << entries[i]
                               << " is outside the table's " << table_rows << " rows");
  }
}

// table [R, width] bfloat16 bits, pairs [rows, 2] of rows in [0, R) -> [rows, width]
// bfloat16 bits (gather_gelu_cpu).
Array<uint16_t> gather_gelu(const Array<uint16_t>& table, const Indices& pairs) {
  require_ndim(table, 2, "table");
  require_ndim(pairs, 2, "pairs");
  require_dim(pairs, 1, 2, "pairs");
  const int64_t table_rows = table.shape(0), width = table.shape(1), rows = pairs.shape(0);
  check_pairs(pairs, table_rows);
  const int64_t* entries = pairs.data();
  Array<uint16_t> out({rows, width});
  uint16_t* data = out.mutable_data();
  py::gil_scoped_release release;
  sepfl::gather_gelu_cpu(table.data(), width, entries, rows, data);
  return out;
}

// ValueError unless weights is a [width, depth] Linear packed as channel_mix_cpu reads it.
void require_packed(const Array<uint16_t>& weights, int64_t width, int64_t depth) {
  require_ndim(weights, 4, "weights");
  const int64_t shape[4] = {sepfl::channel_mix_width(width) / 16,
                            sepfl::channel_mix_depth(depth) / 32, 16, 32};
  for (int axis = 0; axis < 4; ++axis) require_dim(weights, axis, shape[axis], "weights");
}

// out [rows, width], tokens [R, width] and hidden [R, depth] bfloat16 bits; pairs [rows, 2]
// of rows in [0, R); weights packed as channel_mix_cpu says (channel_mix_shape gives the
// shape). Writes out.
void channel_mix(Array<uint16_t>& out, const Array<uint16_t>& tokens,
                 const Array<uint16_t>& hidden, const Indices& pairs,
                 const Array<uint16_t>& weights) {
  require_ndim(out, 2, "out");
  require_ndim(tokens, 2, "tokens");
  require_ndim(hidden, 2, "hidden");
  require_ndim(pairs, 2, "pairs");
  require_dim(pairs, 1, 2, "pairs");
  const int64_t rows = out.shape(0), width = out.shape(1), depth = hidden.shape(1);
  require_dim(tokens, 1, width, "tokens");
  require_dim(hidden, 0, tokens.shape(0), "hidden");
  require_dim(pairs, 0, rows, "pairs");
  require_packed(weights, width, depth);
  check_pairs(pairs, tokens.shape(0));
  uint16_t* data = out.mutable_data();
  py::gil_scoped_release release;
  sepfl::channel_mix_cpu(tokens.data(), width, hidden.data(), depth, pairs.data(), rows,
                         weights.data(), data);
}

// x [rows, width] bfloat16 bits; weights packed as channel_mix's are for W [out, width];
// bias, out_w [out] float32 -> scores [rows] float32 (attention_scores_cpu).
Floats attention_scores(const Array<uint16_t>& x, const Array<uint16_t>& weights,
                        const Floats& bias, const Floats& out_w) {
  require_ndim(x, 2, "x");
  require_ndim(bias, 1, "bias");
  require_ndim(out_w, 1, "out_w");
  const int64_t rows = x.shape(0), width = x.shape(1), out = bias.shape(0);
  SEPFL_CHECK(out >= 1, "bias must not be empty");
  require_dim(out_w, 0, out, "out_w");
  require_packed(weights, out, width);
  Floats scores(rows);
  float* data = scores.mutable_data();
  py::gil_scoped_release release;
  sepfl::attention_scores_cpu(x.data(), rows, width, weights.data(), out, bias.data(),
                              out_w.data(), data);
  return scores;
}

// The packed shape of channel_mix's weights for W [width, depth].
py::tuple channel_mix_shape(int64_t width, int64_t depth) {
  SEPFL_CHECK(width >= 1 && depth >= 1,
              "width and depth must be >= 1, got " << width << " and " << depth);
  return py::make_tuple(sepfl::channel_mix_width(width) / 16,
                        sepfl::channel_mix_depth(depth) / 32, 16, 32);
}

// The padded shapes of token_mix's weights for k tokens, before tiling: ((rows, cols) of
// w_in, of w_out).
py::tuple token_mix_shapes(int64_t k) {
  SEPFL_CHECK(k >= 1, "k must be >= 1, got " << k);
  return py::make_tuple(
      py::make_tuple(sepfl::token_mix_rows(2 * k), sepfl::token_mix_depth(k + 1)),
      py::make_tuple(sepfl::token_mix_rows(k), sepfl::token_mix_depth(2 * k + 1)));
}

Floats aggregate(const Floats& weights, const Floats& features, const Indices& nbrs,
                 const Indices& node_ids) {
  require_ndim(weights, 2, "weights");
  require_ndim(features, 2, "features");
  const int64_t n = features.shape(0), d = features.shape(1);
  const auto [k, b] = require_gather_indices(nbrs, node_ids, n);
  require_dim(weights, 0, b, "weights");
  require_dim(weights, 1, k, "weights");
  Floats out({b, d});
  {
    py::gil_scoped_release release;
    sepfl::aggregate_cpu(weights.data(), features.data(), nbrs.data(), node_ids.data(), n, k, d,
                         b, out.mutable_data());
  }
  return out;
}

std::tuple<Indices, Indices> shared_neighbours(const Indices& nbrs, const Indices& src,
                                               const Indices& dst) {
  require_ndim(nbrs, 2, "nbrs");
  require_ndim(src, 1, "src");
  require_ndim(dst, 1, "dst");
  const int64_t n = nbrs.shape(0), k = nbrs.shape(1), e = src.shape(0);
  require_dim(dst, 0, e, "dst");
  Indices shared(e), reverse(e);
  {
    py::gil_scoped_release release;
    sepfl::shared_neighbours_cpu(nbrs.data(), src.data(), dst.data(), n, k, e,
                                 shared.mutable_data(), reverse.mutable_data());
  }
  return {shared, reverse};
}

Indices link(const Indices& src, const Indices& dst, const std::optional<Floats>& scores,
             float threshold, int64_t num_nodes) {
  require_ndim(src, 1, "src");
  require_ndim(dst, 1, "dst");
  const int64_t e = src.shape(0);
  require_dim(dst, 0, e, "dst");
  if (scores) {
    require_ndim(*scores, 1, "scores");
    require_dim(*scores, 0, e, "scores");
  }
  SEPFL_CHECK(num_nodes >= 0, "num_nodes must be >= 0, got " << num_nodes);
  const float* scores_ptr = scores ? scores->data() : nullptr;
  Indices labels(num_nodes);
  {
    py::gil_scoped_release release;
    sepfl::link_cpu(src.data(), dst.data(), scores_ptr, threshold, e, num_nodes,
                    labels.mutable_data());
  }
  return labels;
}

Floats list_dots(const Floats& features, const Indices& rows, const Indices& lists) {
  require_ndim(features, 2, "features");
  require_ndim(rows, 1, "rows");
  require_ndim(lists, 2, "lists");
  require_dim(lists, 0, rows.shape(0), "lists");
  const int64_t n = features.shape(0), d = features.shape(1), m = lists.shape(0),
                w = lists.shape(1);
  Floats out({m, w});
  {
    py::gil_scoped_release release;
    sepfl::list_dots_cpu(features.data(), rows.data(), lists.data(), n, d, m, w,
                         out.mutable_data());
  }
  return out;
}

sepfl::RowTopk row_topk(const Indices& own, int64_t width,
                        const std::optional<Floats>& above) {
  require_ndim(own, 1, "own");
  if (above) {
    require_ndim(*above, 1, "above");
    require_dim(*above, 0, own.shape(0), "above");
  }
  return sepfl::RowTopk(own.shape(0), width, own.data(), above ? above->data() : nullptr);
}

// tile [tile_rows, cols] of float32 or bfloat16 bits (uint16), rows first_row ..
// first_row + tile_rows - 1; with `mirror` also its columns' rows (see RowTopk::offer).
template <typename T>
void offer(sepfl::RowTopk& best, const Array<T>& tile, int64_t first_col, int64_t first_row,
           bool mirror) {
  require_ndim(tile, 2, "tile");
  const int64_t tile_rows = tile.shape(0), cols = tile.shape(1);
  SEPFL_CHECK(first_col >= 0 && first_col + cols <= (int64_t(1) << 32),
              "first_col must be >= 0 and the tile's columns below 2^32, got " << first_col);
  SEPFL_CHECK(first_row >= 0 && first_row + tile_rows <= best.rows(),
              "the tile's rows " << first_row << ".." << first_row + tile_rows
                                 << " must lie within the " << best.rows() << " rows");
  SEPFL_CHECK(!mirror || (first_col + cols <= best.rows() &&
                          (first_col >= first_row + tile_rows || first_row >= first_col + cols)),
              "a mirrored tile's columns " << first_col << ".." << first_col + cols
                                           << " must be rows apart from its rows "
                                           << first_row << ".." << first_row + tile_rows);
  py::gil_scoped_release release;
  best.offer(tile.data(), tile_rows, cols, first_row, first_col, mirror);
}

std::tuple<Indices, Floats> result(sepfl::RowTopk& best, int64_t start,
                                   std::optional<int64_t> stop) {
  const int64_t end = stop.value_or(best.rows());
  SEPFL_CHECK(0 <= start && start <= end && end <= best.rows(),
              "rows " << start << ".." << end << " must lie within the " << best.rows()
                      << " rows");
  Indices idx({end - start, best.width()});
  Floats vals({end - start, best.width()});
  {
    py::gil_scoped_release release;
    best.result(start, end, idx.mutable_data(), vals.mutable_data());
  }
  return {idx, vals};
}

}  // namespace bind

PYBIND11_MODULE(_core, m) {
  m.doc() = "sepfl CPU kernels (float32 values, int64 indices, C-contiguous numpy arrays)";
  m.def("density", &bind::density, py::arg("sims").noconvert(), py::arg("rho"));
  m.def("select_pairs", &bind::select_pairs, py::arg("nbrs").noconvert(),
        py::arg("density").noconvert(), py::arg("max_per_node"));
  m.def("train_pairs", &bind::train_pairs, py::arg("nbrs").noconvert(),
        py::arg("labels").noconvert(), py::arg("ranks"));
  m.def("compact", &bind::compact, py::arg("padded").noconvert(),
        py::arg("alongside").noconvert());
  m.def("gather", &bind::gather, py::arg("features").noconvert(), py::arg("nbrs").noconvert(),
        py::arg("node_ids").noconvert());
  m.def("gather_add", &bind::gather_add, py::arg("a").noconvert(), py::arg("bproj").noconvert(),
        py::arg("nbrs").noconvert(), py::arg("node_ids").noconvert(),
        py::arg("bias").noconvert(), py::arg("gelu"));
  m.def("aggregate", &bind::aggregate, py::arg("weights").noconvert(),
        py::arg("features").noconvert(), py::arg("nbrs").noconvert(),
        py::arg("node_ids").noconvert());
  m.def("token_mix", &bind::token_mix, py::arg("tokens").noconvert(),
        py::arg("w_in").noconvert(), py::arg("w_out").noconvert(),
        py::arg("scale").noconvert());
  m.def("amx_ready", &sepfl::amx_ready);
  m.def("gather_gelu", &bind::gather_gelu, py::arg("table").noconvert(),
        py::arg("pairs").noconvert());
  m.def("gather_gelu_ready", &sepfl::gather_gelu_ready);
  m.def("token_mix_shapes", &bind::token_mix_shapes, py::arg("k"));
  m.def("channel_mix", &bind::channel_mix, py::arg("out").noconvert(),
        py::arg("tokens").noconvert(), py::arg("hidden").noconvert(),
        py::arg("pairs").noconvert(), py::arg("weights").noconvert());
  m.def("attention_scores", &bind::attention_scores, py::arg("x").noconvert(),
        py::arg("weights").noconvert(), py::arg("bias").noconvert(),
        py::arg("out_w").noconvert());
  m.def("channel_mix_shape", &bind::channel_mix_shape, py::arg("width"), py::arg("depth"));
  m.def("shared_neighbours", &bind::shared_neighbours, py::arg("nbrs").noconvert(),
        py::arg("src").noconvert(), py::arg("dst").noconvert());
  m.def("list_dots", &bind::list_dots, py::arg("features").noconvert(),
        py::arg("rows").noconvert(), py::arg("lists").noconvert());
  py::class_<sepfl::RowTopk>(m, "RowTopk")
      .def(py::init(&bind::row_topk), py::arg("own").noconvert(), py::arg("width"),
           py::arg("above").noconvert() = py::none())
      .def("offer", &bind::offer<float>, py::arg("tile").noconvert(), py::arg("first_col"),
           py::arg("first_row") = 0, py::arg("mirror") = false)
      .def("offer", &bind::offer<uint16_t>, py::arg("tile").noconvert(), py::arg("first_col"),
           py::arg("first_row") = 0, py::arg("mirror") = false)
      .def("result", &bind::result, py::arg("start") = 0, py::arg("stop") = py::none());
  m.def("link", &bind::link, py::arg("src").noconvert(), py::arg("dst").noconvert(),
        py::arg("scores").noconvert(), py::arg("threshold"), py::arg("num_nodes"));
}
