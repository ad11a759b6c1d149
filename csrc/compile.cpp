// The per-mini-batch compile work that numpy serves badly (small arrays, many passes): the
// unplanned memory layout and the operand table. The Python oracles they must equal live in
// tests/compile_oracle.py.
#include <pybind11/numpy.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "parts.h"

namespace py = pybind11;

namespace edbc {
namespace {

template <typename T>
using In = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
py::array_t<T> out(int64_t n) {
  return py::array_t<T>(static_cast<py::ssize_t>(n));
}

// Memory planning off (`edbc.memory.planner.unplanned`): each batch's nodes in graph order, and
// each arena filled in run order, batch by batch, slot by slot, node by node.
// Returns (nodes, value_row, arena_rows).
py::tuple unplanned_layout(In<int64_t> ptr_a, In<int32_t> nodes_a, In<int64_t> value_ptr_a,
                           In<int32_t> value_arena_a, int64_t num_arenas) {
  const int64_t num_batches = ptr_a.size() - 1;
  const int64_t* ptr = ptr_a.data();
  const int64_t* value_ptr = value_ptr_a.data();
  const int32_t* value_arena = value_arena_a.data();
  auto nodes_out = out<int32_t>(nodes_a.size());
  int32_t* nodes = nodes_out.mutable_data();
  std::copy(nodes_a.data(), nodes_a.data() + nodes_a.size(), nodes);
  auto row_out = out<int64_t>(value_arena_a.size());
  int64_t* row = row_out.mutable_data();
  auto arena_rows_out = out<int64_t>(num_arenas);
  int64_t* next_row = arena_rows_out.mutable_data();  // the arenas' fill, their sizes at the end
  std::fill(next_row, next_row + num_arenas, 0);
  {
    py::gil_scoped_release release;
    for (int64_t b = 0; b < num_batches; ++b) {
      int32_t* first = nodes + ptr[b];
      int32_t* last = nodes + ptr[b + 1];
      if (!std::is_sorted(first, last)) std::sort(first, last);
      int64_t width = 0;  // a batch's nodes share a type, but nothing here relies on it
      for (int32_t* n = first; n != last; ++n) width = std::max(width, value_ptr[*n + 1] - value_ptr[*n]);
      for (int64_t slot = 0; slot < width; ++slot) {
        for (int32_t* n = first; n != last; ++n) {
          const int64_t v = value_ptr[*n] + slot;
          if (v < value_ptr[*n + 1]) row[v] = next_row[value_arena[v]]++;
        }
      }
    }
  }
  return py::make_tuple(nodes_out, row_out, arena_rows_out);
}

constexpr int8_t VIEW = 0, BROADCAST = 1, GATHER = 2;  // `OperandTable`'s kind codes

// Every float operand of every batch, batch-major (`edbc.memory.operands.operand_table`).
// Per type: `is_set` (a set reduction: one operand, every argument of its nodes, node after node)
// and its float inputs `input_ptr[t]..input_ptr[t + 1]` into `input_arena` (the arena of the
// input's shape, -1 if none) and `input_row_bytes`.
// Returns (batch, position, kind, arena, first_row, rows_read, nbytes, ptr, rows, bad_batch,
// bad_position): the last two name the operand read outside its shape's arena that the oracle
// reports (the least by type, position, batch), or are -1.
py::tuple operand_table(In<int64_t> ptr_a, In<int32_t> nodes_a, In<int32_t> batch_type_a,
                        In<int64_t> arg_ptr_a, In<int32_t> arg_node_a, In<int32_t> arg_slot_a,
                        In<int64_t> value_ptr_a, In<int32_t> value_arena_a, In<int64_t> value_row_a,
                        In<int64_t> arena_rows_a, In<int8_t> is_set_a, In<int64_t> input_ptr_a,
                        In<int32_t> input_arena_a, In<int64_t> input_row_bytes_a) {
  const int64_t num_batches = batch_type_a.size();
  const int64_t* ptr = ptr_a.data();
  const int32_t* nodes = nodes_a.data();
  const int32_t* batch_type = batch_type_a.data();
  const int64_t* arg_ptr = arg_ptr_a.data();
  const int32_t* arg_node = arg_node_a.data();
  const int32_t* arg_slot = arg_slot_a.data();
  const int64_t* value_ptr = value_ptr_a.data();
  const int32_t* value_arena = value_arena_a.data();
  const int64_t* value_row = value_row_a.data();
  const int64_t* arena_rows = arena_rows_a.data();
  const int8_t* is_set = is_set_a.data();
  const int64_t* input_ptr = input_ptr_a.data();
  const int32_t* input_arena = input_arena_a.data();
  const int64_t* input_row_bytes = input_row_bytes_a.data();

  int64_t entries = 0;
  for (int64_t b = 0; b < num_batches; ++b) {
    const int32_t t = batch_type[b];
    entries += is_set[t] ? 1 : input_ptr[t + 1] - input_ptr[t];
  }
  auto batch_out = out<int64_t>(entries), position_out = out<int64_t>(entries);
  auto kind_out = out<int8_t>(entries);
  auto arena_out = out<int64_t>(entries), first_out = out<int64_t>(entries);
  auto read_out = out<int64_t>(entries), nbytes_out = out<int64_t>(entries);
  auto ptr_out = out<int64_t>(entries + 1);
  int64_t *batch_col = batch_out.mutable_data(), *position_col = position_out.mutable_data();
  int8_t* kind_col = kind_out.mutable_data();
  int64_t *arena_col = arena_out.mutable_data(), *first_col = first_out.mutable_data();
  int64_t *read_col = read_out.mutable_data(), *nbytes_col = nbytes_out.mutable_data();
  int64_t* rows_ptr = ptr_out.mutable_data();
  std::vector<int64_t> gathered;
  std::vector<int64_t> rows;  // one operand's rows
  int64_t bad_type = -1, bad_position = -1, bad_batch = -1;
  {
    py::gil_scoped_release release;
    int64_t i = 0;
    rows_ptr[0] = 0;
    for (int64_t b = 0; b < num_batches; ++b) {
      const int32_t t = batch_type[b];
      const int64_t positions = is_set[t] ? 1 : input_ptr[t + 1] - input_ptr[t];
      for (int64_t p = 0; p < positions; ++p, ++i) {
        const int64_t a = input_arena[input_ptr[t] + p];
        const int64_t zero_row = a >= 0 ? arena_rows[a] : 0;
        rows.clear();
        int64_t real = 0;
        bool outside = false;
        auto read = [&](int64_t e) {
          const int32_t producer = arg_node[e];
          if (producer < 0) {
            rows.push_back(zero_row);
            return;
          }
          const int64_t v = value_ptr[producer] + arg_slot[e];
          outside |= value_arena[v] != a;
          rows.push_back(value_row[v]);
          ++real;
        };
        for (int64_t j = ptr[b]; j < ptr[b + 1]; ++j) {
          if (is_set[t]) {
            for (int64_t e = arg_ptr[nodes[j]]; e < arg_ptr[nodes[j] + 1]; ++e) read(e);
          } else {
            read(arg_ptr[nodes[j]] + p);
          }
        }
        if (outside && (bad_type < 0 || t < bad_type || (t == bad_type && p < bad_position))) {
          bad_type = t, bad_position = p, bad_batch = b;
        }
        const int64_t k = static_cast<int64_t>(rows.size());
        bool consecutive = true, same = true;
        for (int64_t j = 1; j < k; ++j) {
          consecutive &= rows[j] == rows[j - 1] + 1;
          same &= rows[j] == rows[0];
        }
        int8_t kind = GATHER;
        if (real == 0) kind = BROADCAST;  // zeros only
        else if (k == 1 || (real == k && consecutive)) kind = VIEW;
        else if (same) kind = BROADCAST;
        batch_col[i] = b;
        position_col[i] = p;
        kind_col[i] = kind;
        arena_col[i] = a;
        first_col[i] = real == 0 || k == 0 ? zero_row : rows[0];
        read_col[i] = k;
        nbytes_col[i] = k * input_row_bytes[input_ptr[t] + p];
        if (kind == GATHER) gathered.insert(gathered.end(), rows.begin(), rows.end());
        rows_ptr[i + 1] = static_cast<int64_t>(gathered.size());
      }
    }
  }
  auto rows_out = out<int64_t>(static_cast<int64_t>(gathered.size()));
  std::copy(gathered.begin(), gathered.end(), rows_out.mutable_data());
  return py::make_tuple(batch_out, position_out, kind_out, arena_out, first_out, read_out, nbytes_out,
                        ptr_out, rows_out, bad_batch, bad_position);
}

}  // namespace

void register_compile(py::module_& m) {
  m.def("unplanned_layout", &unplanned_layout, "the unplanned layout: batches in graph order, arenas in run order");
  m.def("operand_table", &operand_table, "every batch operand served as a view, broadcast or gather");
}
}  // namespace edbc
