// The per-mini-batch compile work that numpy serves badly (thousands of nodes, dozens of passes):
// the structure calls of trees, chains, sequence pairs and lattices, the graph's assembly from them,
// the unplanned memory layout and the operand table. The Python oracles they must equal live in
// tests/compile_oracle.py.
#include <pybind11/numpy.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "parts.h"

namespace py = pybind11;

namespace edbc {
namespace {

template <typename T>
py::array_t<T> out(int64_t n) {
  return py::array_t<T>(static_cast<py::ssize_t>(n));
}

[[noreturn]] void refuse(const char* what) { throw py::index_error(std::string("compile: ") + what); }

inline void require(bool ok, const char* what) {
  if (!ok) refuse(what);
}

// Exclusive prefix sums: ptr[i] = counts[0] + ... + counts[i - 1], n + 1 entries.
std::vector<int64_t> prefix(const int64_t* counts, int64_t n) {
  std::vector<int64_t> ptr(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) ptr[i + 1] = ptr[i] + counts[i];
  return ptr;
}

template <typename T>
py::array_t<T> array(const std::vector<T>& values) {
  auto a = out<T>(static_cast<int64_t>(values.size()));
  std::copy(values.begin(), values.end(), a.mutable_data());
  return a;
}

// Memory planning off (`edbc.memory.planner.unplanned`): each batch's nodes in graph order, and
// each arena filled in run order, batch by batch, slot by slot, node by node. `slot_arena`: per
// type, the arena of each output slot. Returns (nodes, value_arena, value_row, arena_rows).
py::tuple unplanned_layout(Array<int64_t> ptr_a, Array<int32_t> nodes_a, Array<int32_t> node_type_a, Array<int64_t> value_ptr_a,
                           Array<int32_t> slot_arena_a, int64_t num_arenas) {
  const int64_t num_batches = ptr_a.size() - 1;
  const int64_t num_values = value_ptr_a.data()[value_ptr_a.size() - 1];
  const int64_t width = slot_arena_a.ndim() == 2 ? slot_arena_a.shape(1) : 0;
  const int64_t* ptr = ptr_a.data();
  const int32_t* node_type = node_type_a.data();
  const int64_t* value_ptr = value_ptr_a.data();
  const int32_t* slot_arena = slot_arena_a.data();
  auto nodes_out = out<int32_t>(nodes_a.size());
  int32_t* nodes = nodes_out.mutable_data();
  std::copy(nodes_a.data(), nodes_a.data() + nodes_a.size(), nodes);
  auto arena_out = out<int32_t>(num_values);
  auto row_out = out<int64_t>(num_values);
  int32_t* arena = arena_out.mutable_data();
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
      int64_t slots = 0;  // a batch's nodes share a type, but nothing here relies on it
      for (int32_t* n = first; n != last; ++n) slots = std::max(slots, value_ptr[*n + 1] - value_ptr[*n]);
      for (int64_t slot = 0; slot < slots; ++slot) {
        for (int32_t* n = first; n != last; ++n) {
          const int64_t v = value_ptr[*n] + slot;
          if (v >= value_ptr[*n + 1]) continue;
          arena[v] = slot_arena[node_type[*n] * width + slot];
          row[v] = next_row[arena[v]]++;
        }
      }
    }
  }
  return py::make_tuple(nodes_out, arena_out, row_out, arena_rows_out);
}

constexpr int8_t VIEW = 0, BROADCAST = 1, GATHER = 2;  // `OperandTable`'s kind codes

// Every float operand of every batch, batch-major (`edbc.memory.operands.operand_table`).
// Per type: `is_set` (a set reduction: one operand, every argument of its nodes, node after node)
// and its float inputs `input_ptr[t]..input_ptr[t + 1]` into `input_arena` (the arena of the
// input's shape, -1 if none) and `input_row_bytes`.
// Returns (batch, position, kind, arena, first_row, rows_read, nbytes, ptr, rows, bad_batch,
// bad_position): the last two name the operand read outside its shape's arena that the oracle
// reports (the least by type, position, batch), or are -1.
py::tuple operand_table(Array<int64_t> ptr_a, Array<int32_t> nodes_a, Array<int32_t> batch_type_a,
                        Array<int64_t> arg_ptr_a, Array<int32_t> arg_node_a, Array<int32_t> arg_slot_a,
                        Array<int64_t> value_ptr_a, Array<int32_t> value_arena_a, Array<int64_t> value_row_a,
                        Array<int64_t> arena_rows_a, Array<int8_t> is_set_a, Array<int64_t> input_ptr_a,
                        Array<int32_t> input_arena_a, Array<int64_t> input_row_bytes_a) {
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

// The structure calls of a mini-batch of trees (`edbc.graph.build._tree_calls`), read from the
// `Tree` objects themselves (their `child_ptr`, `child` and `tokens` arrays; no Python gathers
// them). Per tree, in post-order: each node, preceded by the edge calls of its children when
// `with_edges`. Returns (instance, node ids, leaf ids, internal ids, leaf tokens, root ids, children
// set pointer, children's ids, left ids, right ids, edge ids, first node of another arity than two
// (-1 if none; only looked for when `binary`)), or just (that node,) when there is one.
py::tuple tree_calls(py::sequence trees_seq, bool binary, bool with_edges) {
  struct TreeArrays {
    Array<int64_t> child_ptr;
    Array<int32_t> child, tokens;
  };
  const int64_t trees = static_cast<int64_t>(py::len(trees_seq));
  std::vector<TreeArrays> held;
  held.reserve(trees);
  std::vector<int64_t> tree_base(trees + 1, 0);
  int64_t links = 0;
  // Interned once and never freed: a static py::str would be released after the interpreter is gone.
  static const py::handle child_ptr_name = PyUnicode_InternFromString("child_ptr"),
                          child_name = PyUnicode_InternFromString("child"),
                          tokens_name = PyUnicode_InternFromString("tokens");
  for (int64_t t = 0; t < trees; ++t) {
    py::object tree = trees_seq[t];
    py::object tokens = tree.attr(tokens_name);
    if (tokens.is_none()) throw py::value_error("instances must be encoded (token ids) before building a graph");
    held.push_back({as_array<int64_t>(tree.attr(child_ptr_name)), as_array<int32_t>(tree.attr(child_name)),
                    as_array<int32_t>(tokens)});
    const TreeArrays& a = held.back();
    const int64_t size = a.child_ptr.size() - 1;
    require(size >= 1 && a.tokens.size() == size && a.child_ptr.data()[0] == 0 &&
                a.child_ptr.data()[size] == a.child.size(), "tree arrays of other lengths than the tree's");
    tree_base[t + 1] = tree_base[t] + size;
    links += a.child.size();
  }
  const int64_t n = tree_base[trees];
  int64_t internal_count = 0, calls = 0;
  for (int64_t t = 0; t < trees; ++t) {
    const int64_t* cp = held[t].child_ptr.data();
    for (int64_t v = 0; v < tree_base[t + 1] - tree_base[t]; ++v) {
      const int64_t arity = cp[v + 1] - cp[v];
      require(arity >= 0, "child pointers out of order");
      if (binary && arity > 0 && arity != 2) return py::make_tuple(tree_base[t] + v);
      internal_count += arity > 0;
      calls += with_edges ? 1 + arity : 1;
    }
  }
  const int64_t leaf_count = n - internal_count;
  auto instance_out = out<int32_t>(calls);
  auto node_id_out = out<int64_t>(n), leaves_out = out<int64_t>(leaf_count), internal_out = out<int64_t>(internal_count);
  auto leaf_tokens_out = out<int64_t>(leaf_count), roots_out = out<int64_t>(trees);
  auto children_ptr_out = out<int64_t>(internal_count + 1), children_out = out<int64_t>(links);
  auto left_out = out<int64_t>(binary ? internal_count : 0), right_out = out<int64_t>(binary ? internal_count : 0);
  auto edges_out = out<int64_t>(with_edges ? links : 0);
  int32_t* instance = instance_out.mutable_data();
  int64_t *node_id = node_id_out.mutable_data(), *leaves = leaves_out.mutable_data();
  int64_t *internal = internal_out.mutable_data(), *leaf_tokens = leaf_tokens_out.mutable_data();
  int64_t *roots = roots_out.mutable_data(), *children_ptr = children_ptr_out.mutable_data();
  int64_t *children = children_out.mutable_data(), *left = left_out.mutable_data();
  int64_t *right = right_out.mutable_data(), *edges = edges_out.mutable_data();
  int64_t call = 0, leaf = 0, inner = 0, link = 0;
  children_ptr[0] = 0;
  for (int64_t t = 0; t < trees; ++t) {
    const int64_t* cp = held[t].child_ptr.data();
    const int32_t* child = held[t].child.data();
    const int32_t* tokens = held[t].tokens.data();
    const int64_t base = tree_base[t], size = tree_base[t + 1] - base;
    for (int64_t v = 0; v < size; ++v) {
      const int64_t arity = cp[v + 1] - cp[v];
      const int64_t first_call = call;
      call += with_edges ? 1 + arity : 1;  // the node's block: its children's edge calls, then its own
      std::fill(instance + first_call, instance + call, static_cast<int32_t>(t));
      node_id[base + v] = call - 1;
      if (arity == 0) {
        leaves[leaf] = call - 1;
        leaf_tokens[leaf++] = tokens[v];
        continue;
      }
      internal[inner++] = call - 1;
      children_ptr[inner] = children_ptr[inner - 1] + arity;
      for (int64_t l = cp[v]; l < cp[v + 1]; ++l, ++link) {
        require(child[l] >= 0 && child[l] < v, "a child that is not before its parent in its tree");
        children[link] = node_id[base + child[l]];
        if (with_edges) edges[link] = first_call + l - cp[v];
      }
      if (binary) {
        left[inner - 1] = node_id[base + child[cp[v]]];
        right[inner - 1] = node_id[base + child[cp[v] + 1]];
      }
    }
    roots[t] = node_id[base + size - 1];
  }
  return py::make_tuple(instance_out, node_id_out, leaves_out, internal_out, leaf_tokens_out, roots_out,
                        children_ptr_out, children_out, left_out, right_out, edges_out, int64_t{-1});
}

// The structure calls of a mini-batch of sequences (`edbc.graph.build._chain_calls`) of the given
// lengths: per sequence, `blocks` blocks of one call a position, block `backward` (-1: none) in
// reverse order. Returns (instance, and per block (ids, each call's predecessor in its block and
// successor, -1 at a sequence's ends; each sequence's first position's id and last one's)).
py::tuple chain_calls(Array<int64_t> lengths_a, int64_t blocks, int64_t backward) {
  const int64_t seqs = lengths_a.size();
  const int64_t* lengths = lengths_a.data();
  const std::vector<int64_t> seq_base = prefix(lengths, seqs);
  const int64_t n = seq_base[seqs];
  std::vector<int32_t> instance(n * blocks);
  py::list per_block;
  for (int64_t k = 0; k < blocks; ++k) {
    std::vector<int64_t> ids(n), prev(n), next(n), firsts(seqs), lasts(seqs);
    for (int64_t s = 0; s < seqs; ++s) {
      const int64_t len = lengths[s], base = seq_base[s] * blocks + k * len;
      for (int64_t at = 0; at < len; ++at) {
        ids[seq_base[s] + at] = base + (k == backward ? len - 1 - at : at);
        instance[base + at] = static_cast<int32_t>(s);
      }
      for (int64_t at = 0; at < len; ++at) {
        const int64_t i = seq_base[s] + at;
        prev[i] = at > 0 ? ids[i - 1] : -1;
        next[i] = at < len - 1 ? ids[i + 1] : -1;
      }
      require(len > 0, "an empty sequence");
      firsts[s] = ids[seq_base[s]];
      lasts[s] = ids[seq_base[s] + len - 1];
    }
    per_block.append(py::make_tuple(array(ids), array(prev), array(next), array(firsts), array(lasts)));
  }
  return py::make_tuple(array(instance), per_block);
}

// The structure calls of a mini-batch of sequence pairs (`edbc.graph.build._seq2seq_calls`): per
// pair, its source's encoder calls, then its target's decoder calls, the first decoder call
// continuing from the last encoder call. Returns (instance, encoder ids, decoder ids, each
// encoder call's predecessor (-1 first), each decoder call's).
py::tuple seq2seq_calls(Array<int64_t> source_lengths_a, Array<int64_t> target_lengths_a) {
  const int64_t pairs = source_lengths_a.size();
  const int64_t* source_lengths = source_lengths_a.data();
  const int64_t* target_lengths = target_lengths_a.data();
  require(target_lengths_a.size() == pairs, "source and target lengths of different counts");
  std::vector<int64_t> encoder, decoder, encoder_prev, decoder_prev;
  std::vector<int32_t> instance;
  int64_t base = 0;
  for (int64_t p = 0; p < pairs; ++p) {
    require(source_lengths[p] > 0 && target_lengths[p] > 0, "an empty side of a pair");
    for (int64_t at = 0; at < source_lengths[p]; ++at) {
      encoder.push_back(base + at);
      encoder_prev.push_back(at > 0 ? base + at - 1 : -1);
    }
    for (int64_t at = 0; at < target_lengths[p]; ++at) {
      decoder.push_back(base + source_lengths[p] + at);
      decoder_prev.push_back(base + source_lengths[p] + at - 1);  // the last encoder call first
    }
    instance.insert(instance.end(), source_lengths[p] + target_lengths[p], static_cast<int32_t>(p));
    base += source_lengths[p] + target_lengths[p];
  }
  return py::make_tuple(array(instance), array(encoder), array(decoder), array(encoder_prev), array(decoder_prev));
}

// The structure calls of a mini-batch of lattices (`edbc.graph.build._lattice_calls`) from the
// lattices' arrays end to end: `nodes` and `arcs` per lattice, each arc's target and source (in its
// lattice), whether it is a char arc, and its token. Per lattice node but the first, in node order:
// its char arc call, its word arc calls, then one merge call per word arc folding it into the
// node's state. Returns (instance, char ids, word ids, merge ids, chars' sources' states, words'
// sources' states, merges' accumulators, char tokens, word tokens, every non-start node's state,
// each lattice's last node's state).
py::tuple lattice_calls(Array<int64_t> nodes_a, Array<int64_t> arcs_a, Array<int32_t> dst_a, Array<int32_t> src_a,
                        Array<bool> is_char_a, Array<int32_t> tokens_a) {
  const int64_t lattices = nodes_a.size();
  const std::vector<int64_t> node_base = prefix(nodes_a.data(), lattices), arc_base = prefix(arcs_a.data(), lattices);
  const int64_t total = node_base[lattices], num_arcs = arc_base[lattices];
  require(dst_a.size() == num_arcs && src_a.size() == num_arcs && is_char_a.size() == num_arcs &&
              tokens_a.size() == num_arcs, "lattice arrays of other lengths than the lattices'");
  const bool* is_char = is_char_a.data();
  std::vector<int64_t> dst(num_arcs), src(num_arcs), m(total, 0);  // m: word arcs into each node
  std::vector<int32_t> node_lat(total);
  std::vector<bool> is_start(total, false);
  for (int64_t l = 0; l < lattices; ++l) {
    for (int64_t v = node_base[l]; v < node_base[l + 1]; ++v) node_lat[v] = static_cast<int32_t>(l);
    if (node_base[l + 1] > node_base[l]) is_start[node_base[l]] = true;
    for (int64_t a = arc_base[l]; a < arc_base[l + 1]; ++a) {
      dst[a] = dst_a.data()[a] + node_base[l];
      src[a] = src_a.data()[a] + node_base[l];
      require(dst[a] >= node_base[l] && dst[a] < node_base[l + 1] && src[a] >= node_base[l] &&
                  src[a] < node_base[l + 1], "an arc outside its lattice");
      if (!is_char[a]) ++m[dst[a]];
    }
  }
  std::vector<int64_t> base(total + 1, 0), state(total);
  for (int64_t v = 0; v < total; ++v) {
    base[v + 1] = base[v] + (is_start[v] ? 0 : 1 + 2 * m[v]);
    state[v] = is_start[v] ? -1 : base[v] + 2 * m[v];  // the last merge, or the char arc
  }
  const std::vector<int64_t> word_base = prefix(m.data(), total);
  std::vector<int32_t> instance(base[total]);
  for (int64_t v = 0; v < total; ++v) std::fill(instance.begin() + base[v], instance.begin() + base[v + 1], node_lat[v]);
  std::vector<int64_t> char_ids, word_ids, merge_ids, char_src, word_src, merge_acc, char_tokens, word_tokens;
  for (int64_t a = 0; a < num_arcs; ++a) {
    const int64_t d = dst[a];
    if (is_char[a]) {
      char_ids.push_back(base[d]);
      char_src.push_back(state[src[a]]);
      char_tokens.push_back(tokens_a.data()[a]);
      continue;
    }
    // Word arcs are listed by target node: this one's place among its node's.
    const int64_t rank = static_cast<int64_t>(word_ids.size()) - word_base[d];
    word_ids.push_back(base[d] + 1 + rank);
    merge_ids.push_back(base[d] + 1 + m[d] + rank);
    merge_acc.push_back(rank == 0 ? base[d] : merge_ids.back() - 1);
    word_src.push_back(state[src[a]]);
    word_tokens.push_back(tokens_a.data()[a]);
  }
  std::vector<int64_t> non_start, last(lattices);
  for (int64_t v = 0; v < total; ++v) {
    if (!is_start[v]) non_start.push_back(state[v]);
  }
  for (int64_t l = 0; l < lattices; ++l) {
    require(node_base[l + 1] > node_base[l], "a lattice without nodes");
    last[l] = state[node_base[l + 1] - 1];
  }
  return py::make_tuple(array(instance), array(char_ids), array(word_ids), array(merge_ids), array(char_src),
                        array(word_src), array(merge_acc), array(char_tokens), array(word_tokens),
                        array(non_start), array(last));
}

// The graph of one mini-batch's structure calls (`edbc.graph.build.assemble`): the calls, then one
// reduction node per set a call reads, placed just before the call, then the readout calls.
// `roles`: per role, (structure ids, or None for the readout; type; argument count; arguments;
// token columns), an argument being (position, reduction type or -1, slot of the bound output per
// type and one more for "no producer", neighbour ids aligned with the role's, set CSR pointer, set
// members): the neighbours for a neighbour, the CSR for a set. `anchors`: the readout's neighbour
// columns (a readout belongs to the instance of its largest). Ids are structure ids, -1 for none.
// `num_imms`, `num_outs`: each type's immediates and outputs. Returns (node_type, arg_ptr, arg_node,
// arg_slot, imm_ptr, imm, instance, readout ids, value_ptr).
struct Argument {
  int64_t position, reduction;
  Array<int32_t> slot_of_type;
  Array<int64_t> neighbors, set_ptr, set_members;
};

struct Role {
  bool readout;  // its calls are new nodes after all others, one per anchor row
  Array<int64_t> ids;
  int64_t count, type, num_args;
  std::vector<Argument> arguments;
  std::vector<Array<int64_t>> tokens;
  int64_t sets = 0;
};

py::tuple assemble_graph(Array<int32_t> instance_a, py::list roles_list, py::list anchors_list,
                         Array<int64_t> num_imms_a, Array<int64_t> num_outs_a) {
  const int64_t n_struct = instance_a.size();
  std::vector<Array<int64_t>> anchors;
  for (auto a : anchors_list) anchors.push_back(a.cast<Array<int64_t>>());
  const int64_t n_readout = anchors.empty() ? 0 : anchors[0].size();
  for (auto& a : anchors) require(a.size() == n_readout, "anchor columns of different lengths");

  std::vector<Role> roles;
  for (auto item : roles_list) {
    auto r = item.cast<py::tuple>();
    const bool readout = r[0].is_none();
    Role role{readout, readout ? Array<int64_t>(0) : r[0].cast<Array<int64_t>>(), 0, r[1].cast<int64_t>(),
              r[2].cast<int64_t>(), {}, {}};
    role.count = readout ? n_readout : role.ids.size();
    for (auto arg : r[3].cast<py::list>()) {
      auto a = arg.cast<py::tuple>();
      role.arguments.push_back({a[0].cast<int64_t>(), a[1].cast<int64_t>(), a[2].cast<Array<int32_t>>(),
                                a[3].is_none() ? Array<int64_t>(0) : a[3].cast<Array<int64_t>>(),
                                a[4].is_none() ? Array<int64_t>(1) : a[4].cast<Array<int64_t>>(),
                                a[5].is_none() ? Array<int64_t>(0) : a[5].cast<Array<int64_t>>()});
      role.sets += role.arguments.back().reduction >= 0;
    }
    for (auto column : r[4].cast<py::list>()) role.tokens.push_back(column.cast<Array<int64_t>>());
    roles.push_back(std::move(role));
  }
  // Structure node -> its id in the graph, after the reduction nodes of its call.
  std::vector<int64_t> moved(n_struct);
  {
    std::vector<int64_t> extra(n_struct, 0);
    for (auto& r : roles) {
      if (r.readout || !r.sets) continue;
      for (int64_t i = 0; i < r.count; ++i) {
        const int64_t v = r.ids.data()[i];
        require(v >= 0 && v < n_struct, "a call outside the structure");
        extra[v] = r.sets;
      }
    }
    int64_t placed = 0;
    for (int64_t v = 0; v < n_struct; ++v) moved[v] = v + (placed += extra[v]);
  }
  const int64_t n_before = n_struct ? moved[n_struct - 1] + 1 : 0;
  const int64_t total = n_before + n_readout;
  auto renumber = [&](int64_t v) {
    require(v >= -1 && v < n_struct, "a neighbour outside the structure");
    return v < 0 ? int64_t{-1} : moved[v];
  };
  auto id_of = [&](const Role& r, int64_t i) {
    if (r.readout) return n_before + i;
    const int64_t v = r.ids.data()[i];
    require(v >= 0 && v < n_struct, "a call outside the structure");
    return moved[v];
  };

  auto node_type_out = out<int32_t>(total), instance_out = out<int32_t>(total);
  int32_t* node_type = node_type_out.mutable_data();
  int32_t* instance = instance_out.mutable_data();
  std::vector<int64_t> n_args(total, 0);
  std::fill(node_type, node_type + total, -1);
  for (int64_t v = 0; v < n_struct; ++v) instance[moved[v]] = instance_a.data()[v];
  for (int64_t i = 0; i < n_readout; ++i) {
    int64_t largest = -1;
    for (auto& a : anchors) largest = std::max(largest, renumber(a.data()[i]));
    instance[n_before + i] = instance[largest >= 0 ? largest : total - 1];
  }
  for (auto& r : roles) {
    for (int64_t i = 0; i < r.count; ++i) {
      const int64_t id = id_of(r, i);
      node_type[id] = static_cast<int32_t>(r.type);
      n_args[id] = r.num_args;
      int64_t j = 0;
      for (auto& a : r.arguments) {
        if (a.reduction < 0) continue;
        require(a.set_ptr.size() == r.count + 1, "a set pointer not aligned with its role");
        const int64_t* ptr = a.set_ptr.data();
        require(ptr[i] >= 0 && ptr[i + 1] >= ptr[i] && ptr[i + 1] <= a.set_members.size(),
              "a set pointer out of order");
        const int64_t at = id - r.sets + j++;
        node_type[at] = static_cast<int32_t>(a.reduction);
        instance[at] = instance[id];
        n_args[at] = ptr[i + 1] - ptr[i];
      }
    }
  }
  const int64_t* num_imms = num_imms_a.data();
  const int64_t* num_outs = num_outs_a.data();
  require(num_outs_a.size() == num_imms_a.size(), "output counts not one a type");
  auto arg_ptr_out = out<int64_t>(total + 1), imm_ptr_out = out<int64_t>(total + 1);
  auto value_ptr_out = out<int64_t>(total + 1);
  int64_t* arg_ptr = arg_ptr_out.mutable_data();
  int64_t* imm_ptr = imm_ptr_out.mutable_data();
  int64_t* value_ptr = value_ptr_out.mutable_data();
  arg_ptr[0] = imm_ptr[0] = value_ptr[0] = 0;
  for (int64_t v = 0; v < total; ++v) {
    require(node_type[v] >= 0, "a node no call fills");
    arg_ptr[v + 1] = arg_ptr[v] + n_args[v];
    imm_ptr[v + 1] = imm_ptr[v] + num_imms[node_type[v]];
    value_ptr[v + 1] = value_ptr[v] + num_outs[node_type[v]];
  }
  auto arg_node_out = out<int32_t>(arg_ptr[total]), arg_slot_out = out<int32_t>(arg_ptr[total]);
  auto imm_out = out<int64_t>(imm_ptr[total]);
  int32_t* arg_node = arg_node_out.mutable_data();
  int32_t* arg_slot = arg_slot_out.mutable_data();
  int64_t* imm = imm_out.mutable_data();
  std::fill(arg_node, arg_node + arg_ptr[total], -1);
  std::fill(arg_slot, arg_slot + arg_ptr[total], 0);
  std::fill(imm, imm + imm_ptr[total], 0);
  auto bind = [&](int64_t where, int64_t producer, const int32_t* slot_of_type) {
    arg_node[where] = static_cast<int32_t>(producer);
    arg_slot[where] = producer >= 0 ? slot_of_type[node_type[producer]] : 0;
  };
  for (auto& r : roles) {
    for (auto& column : r.tokens) require(column.size() == r.count, "a token column not aligned with its role");
    for (auto& a : r.arguments) {
      require(a.reduction >= 0 || a.neighbors.size() == r.count, "a neighbour column not aligned with its role");
    }
    for (int64_t i = 0; i < r.count; ++i) {
      const int64_t id = id_of(r, i);
      int64_t j = 0;
      for (auto& a : r.arguments) {
        const int64_t where = arg_ptr[id] + a.position;
        if (a.reduction < 0) {
          bind(where, renumber(a.neighbors.data()[i]), a.slot_of_type.data());
          continue;
        }
        const int64_t at = id - r.sets + j++;  // the reduction node just before the call, its output slot 0
        arg_node[where] = static_cast<int32_t>(at);
        const int64_t* ptr = a.set_ptr.data();
        for (int64_t m = ptr[i]; m < ptr[i + 1]; ++m) {
          bind(arg_ptr[at] + m - ptr[i], renumber(a.set_members.data()[m]), a.slot_of_type.data());
        }
      }
      for (size_t q = 0; q < r.tokens.size(); ++q) imm[imm_ptr[id] + q] = r.tokens[q].data()[i];
    }
  }
  auto readout_out = out<int64_t>(n_readout);
  for (int64_t i = 0; i < n_readout; ++i) readout_out.mutable_data()[i] = n_before + i;
  return py::make_tuple(node_type_out, arg_ptr_out, arg_node_out, arg_slot_out, imm_ptr_out, imm_out,
                        instance_out, readout_out, value_ptr_out);
}

}  // namespace

void register_compile(py::module_& m) {
  m.def("unplanned_layout", &unplanned_layout, "the unplanned layout: batches in graph order, arenas in run order");
  m.def("operand_table", &operand_table, "every batch operand served as a view, broadcast or gather");
  m.def("assemble_graph", &assemble_graph, "a mini-batch's graph from its structure calls");
  m.def("tree_calls", &tree_calls, "the structure calls of a mini-batch of trees");
  m.def("chain_calls", &chain_calls, "the structure calls of a mini-batch of sequences");
  m.def("seq2seq_calls", &seq2seq_calls, "the structure calls of a mini-batch of sequence pairs");
  m.def("lattice_calls", &lattice_calls, "the structure calls of a mini-batch of lattices");
}
}  // namespace edbc
