// The frontier simulation behind every batching policy: the ready nodes of each type, which
// batch runs next (agenda, typewise, the learned FSM's table, or a Python callback), and the
// whole schedule, with no Python per step unless a callback asks for it.
//
// A batch runs every ready node of its type, in ascending node id. Ready unbatchable nodes run
// one at a time before each choice: the lowest type first, within it the lowest node id.
// `edbc/schedule/frontier.py` builds a `Frontier` from a graph's analyses; tests/oracle_frontier.py
// is the pure-Python definition the results must equal.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "parts.h"

namespace py = pybind11;

namespace edbc {
namespace {


// A vector handed to numpy without a copy: the array owns it.
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& values) {
  auto* owned = new std::vector<T>(std::move(values));
  py::capsule free_it(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(static_cast<py::ssize_t>(owned->size()), owned->data(), free_it);
}

// Batches in run order, as the CSR `Schedule` holds them.
struct Batches {
  std::vector<int64_t> ptr{0};
  std::vector<int32_t> nodes;
  std::vector<int32_t> types;

  void close(int32_t type) {
    ptr.push_back(static_cast<int64_t>(nodes.size()));
    types.push_back(type);
  }

  py::tuple to_python() {
    return py::make_tuple(to_numpy(std::move(ptr)), to_numpy(std::move(nodes)), to_numpy(std::move(types)));
  }
};

// The frontier states of `edbc/policy/encoding.py`.
enum class Encoding { set, sorted, max };

Encoding encoding_of(const std::string& name) {
  if (name == "set") return Encoding::set;
  if (name == "sorted") return Encoding::sorted;
  if (name == "max") return Encoding::max;
  throw py::value_error("unknown encoding '" + name + "'");
}

// A ready type as the state sees it: its vocabulary id and its ready-node count.
struct ReadyType {
  int32_t vocab;
  int64_t count;
};

// Most ready nodes first, ties by the lower vocabulary id.
bool more_ready(const ReadyType& a, const ReadyType& b) {
  return a.count != b.count ? a.count > b.count : a.vocab < b.vocab;
}

// The state of ready types `ready` (reordered in place) under `encoding`, into `state`.
void encode_state(Encoding encoding, std::vector<ReadyType>& ready, std::vector<int32_t>& state) {
  state.clear();
  if (encoding == Encoding::sorted) {
    std::sort(ready.begin(), ready.end(), more_ready);
  } else {
    std::sort(ready.begin(), ready.end(), [](const ReadyType& a, const ReadyType& b) { return a.vocab < b.vocab; });
  }
  for (const ReadyType& r : ready) state.push_back(r.vocab);
  if (encoding == Encoding::max) state.push_back(std::min_element(ready.begin(), ready.end(), more_ready)->vocab);
}

// A learned policy's table: state -> vocabulary id to run, by open addressing over the states'
// ids laid end to end, so that looking up a state or one of its prefixes allocates nothing.
class FsmTable {
 public:
  FsmTable(const std::string& encoding, const std::vector<std::vector<int32_t>>& states,
           const std::vector<int32_t>& actions, std::vector<int32_t> rank)
      : encoding_(encoding_of(encoding)), rank_(std::move(rank)) {
    if (states.size() != actions.size()) throw py::value_error("the table has as many states as actions");
    slots_.assign(16, -1);
    for (size_t i = 0; i < states.size(); ++i) insert(states[i].data(), states[i].size(), actions[i]);
  }

  Encoding encoding() const { return encoding_; }
  size_t size() const { return actions_.size(); }
  size_t vocab_size() const { return rank_.size(); }
  int32_t action(int32_t entry) const { return actions_[entry]; }

  // The entry holding the state `key[0:len]`, or -1.
  int32_t find(const int32_t* key, size_t len) const {
    size_t mask = slots_.size() - 1;
    for (size_t slot = hash(key, len) & mask;; slot = (slot + 1) & mask) {
      int32_t entry = slots_[slot];
      if (entry < 0) return -1;
      if (static_cast<size_t>(start_[entry + 1] - start_[entry]) == len &&
          std::memcmp(keys_.data() + start_[entry], key, len * sizeof(int32_t)) == 0)
        return entry;
    }
  }

  // Adds a state the table lacks.
  void insert(const int32_t* key, size_t len, int32_t action) {
    for (size_t i = 0; i < len; ++i) check_vocab(key[i]);
    check_vocab(action);
    keys_.insert(keys_.end(), key, key + len);
    start_.push_back(static_cast<int64_t>(keys_.size()));
    actions_.push_back(action);
    if (2 * actions_.size() > slots_.size()) {
      slots_.assign(2 * slots_.size(), -1);
      for (size_t e = 0; e < actions_.size(); ++e) place(static_cast<int32_t>(e));
    } else {
      place(static_cast<int32_t>(actions_.size() - 1));
    }
  }

  // `Fsm.fallback`: the choice of the longest proper prefix the table holds (not for `max`,
  // whose prefixes are no states), else the ready type first in the priority `rank`.
  int32_t fallback(const std::vector<int32_t>& state) const {
    size_t ready = encoding_ == Encoding::max ? state.size() - 1 : state.size();
    if (encoding_ != Encoding::max) {
      for (size_t k = ready - 1; k > 0; --k) {
        int32_t entry = find(state.data(), k);
        if (entry >= 0) return actions_[entry];
      }
    }
    return *std::min_element(state.begin(), state.begin() + ready,
                             [&](int32_t a, int32_t b) { return rank_[a] < rank_[b]; });
  }

 private:
  static uint64_t hash(const int32_t* key, size_t len) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ len;
    for (size_t i = 0; i < len; ++i) {
      h = (h ^ static_cast<uint32_t>(key[i])) * 0x100000001B3ull;
      h ^= h >> 29;
    }
    return h ^ (h >> 32);
  }

  void place(int32_t entry) {
    size_t mask = slots_.size() - 1;
    size_t slot = hash(keys_.data() + start_[entry], start_[entry + 1] - start_[entry]) & mask;
    while (slots_[slot] >= 0) slot = (slot + 1) & mask;
    slots_[slot] = entry;
  }

  void check_vocab(int32_t v) const {
    if (v < 0 || static_cast<size_t>(v) >= rank_.size())
      throw py::value_error("the table names vocabulary type " + std::to_string(v) + ", outside its " +
                            std::to_string(rank_.size()) + " types");
  }

  Encoding encoding_;
  std::vector<int32_t> rank_;  // fallback priority of each vocabulary id, lower first
  std::vector<int32_t> keys_;  // every state's ids, end to end
  std::vector<int64_t> start_{0};  // state e is keys_[start_[e]:start_[e + 1]]
  std::vector<int32_t> actions_;
  std::vector<int32_t> slots_;  // entry or -1; a power of two, at most half full
};

// Each node's consumers (the argument CSR transposed, one entry per argument edge, consumers in
// node order) and how many of its arguments are nodes: a counting sort, where numpy would sort.
struct ConsumerCsr {
  std::vector<int64_t> ptr;
  std::vector<int32_t> node;
  std::vector<int32_t> num_args;
};

ConsumerCsr transpose_arguments(const Array<int64_t>& arg_ptr, const Array<int32_t>& arg_node) {
  const int64_t n = arg_ptr.size() - 1;
  const int64_t* ptr = arg_ptr.data();
  const int32_t* arg = arg_node.data();
  if (n < 0 || ptr[0] != 0 || ptr[n] != arg_node.size()) throw py::value_error("the argument CSR does not match its nodes");
  ConsumerCsr c{std::vector<int64_t>(n + 1, 0), {}, std::vector<int32_t>(n)};
  // Local pointers and bounds: the int64 counts could alias the int64 argument pointers, which
  // would make the compiler reload those on every edge.
  int64_t* count = c.ptr.data() + 1;
  int32_t* num_args = c.num_args.data();
  for (int64_t v = 0; v < n; ++v) {
    const int64_t hi = ptr[v + 1];
    int32_t nodes = 0;
    for (int64_t e = ptr[v]; e < hi; ++e) {
      const int32_t a = arg[e];
      if (a >= n) throw py::value_error("node " + std::to_string(v) + " has an argument past the last node");
      if (a >= 0) {
        ++count[a];
        ++nodes;
      }
    }
    num_args[v] = nodes;
  }
  for (int64_t v = 0; v < n; ++v) count[v] += count[v - 1];
  c.node.resize(c.ptr[n]);
  std::vector<int64_t> fill(c.ptr.begin(), c.ptr.end() - 1);
  int64_t* next = fill.data();
  int32_t* node = c.node.data();
  for (int64_t v = 0; v < n; ++v) {
    const int64_t hi = ptr[v + 1];
    for (int64_t e = ptr[v]; e < hi; ++e) {
      const int32_t a = arg[e];
      if (a >= 0) node[next[a]++] = static_cast<int32_t>(v);
    }
  }
  return c;
}

class Frontier {
 public:
  Frontier(const Array<int64_t>& arg_ptr, const Array<int32_t>& arg_node, Array<int32_t> node_type,
           Array<bool> batchable, std::optional<Array<int64_t>> link_ptr, std::optional<Array<int32_t>> link_node,
           std::optional<Array<int32_t>> num_nearest)
      : node_type_(std::move(node_type)) {
    ConsumerCsr c = transpose_arguments(arg_ptr, arg_node);
    const int64_t n = static_cast<int64_t>(c.num_args.size());
    const int64_t num_types = batchable.size();
    consumer_ptr_ = std::move(c.ptr);
    consumer_node_ = std::move(c.node);
    pending_ = std::move(c.num_args);
    now_ready_.resize(consumer_node_.size() + 1);
    if (node_type_.size() != n) throw py::value_error("node_type has one entry a node");
    type_of_ = node_type_.data();
    for (int64_t v = 0; v < n; ++v)
      if (type_of_[v] < 0 || type_of_[v] >= num_types) throw py::value_error("a node's type is out of range");
    batchable_.assign(batchable.data(), batchable.data() + num_types);
    for (int32_t t = 0; t < num_types; ++t)
      if (!batchable_[t]) unbatchable_types_.push_back(t);
    ready_.resize(num_types);
    descending_.assign(num_types, 1);
    count_.assign(num_types, 0);
    remaining_ = n;
    for (int32_t v = 0; v < n; ++v)
      if (pending_[v] == 0) add_ready(v);
    if (link_ptr || link_node || num_nearest) {
      if (!(link_ptr && link_node && num_nearest)) throw py::value_error("|F*_t| needs all three link arrays");
      track_ideal(std::move(*link_ptr), std::move(*link_node), std::move(*num_nearest));
    }
  }

  int64_t remaining() const { return remaining_; }
  int64_t num_types() const { return static_cast<int64_t>(count_.size()); }
  bool tracks_ideal() const { return tracks_ideal_; }
  int64_t* count_data() { return count_.data(); }
  int64_t* ideal_data() { return ideal_.data(); }

  // Batchable types with a ready node, in type order.
  std::vector<int64_t> ready_types() const {
    std::vector<int64_t> out;
    for (size_t t = 0; t < count_.size(); ++t)
      if (count_[t] && batchable_[t]) out.push_back(static_cast<int64_t>(t));
    return out;
  }

  // Runs every ready node of type t as one batch, appended to `out`.
  void run(int64_t t, Batches& out) {
    if (t < 0 || t >= num_types() || ready_[t].empty())
      throw py::value_error("type " + std::to_string(t) + " has no ready node");
    std::vector<int32_t>& ready = ready_[t];
    const size_t start = out.nodes.size();
    out.nodes.insert(out.nodes.end(), ready.begin(), ready.end());
    ready.clear();
    count_[t] = 0;
    // Nodes mostly become ready in ascending order (a batch's consumers follow its nodes').
    if (!std::is_sorted(out.nodes.begin() + start, out.nodes.end())) std::sort(out.nodes.begin() + start, out.nodes.end());
    out.close(static_cast<int32_t>(t));
    finish(out.nodes.data() + start, out.nodes.size() - start, static_cast<int32_t>(t));
  }

  // Runs ready unbatchable nodes one at a time until none is ready, each its own batch.
  void run_unbatchable(Batches& out) {
    while (!unbatchable_types_.empty()) {
      auto waiting = std::find_if(unbatchable_types_.begin(), unbatchable_types_.end(),
                                  [&](int32_t t) { return count_[t] > 0; });
      if (waiting == unbatchable_types_.end()) return;
      const int32_t t = *waiting;
      std::vector<int32_t>& ready = ready_[t];
      if (!descending_[t]) {
        std::sort(ready.begin(), ready.end(), std::greater<int32_t>());
        descending_[t] = 1;
      }
      const int32_t v = ready.back();
      ready.pop_back();
      --count_[t];
      out.nodes.push_back(v);
      out.close(t);
      finish(&v, 1, t);
    }
  }

  // Runs the frontier to the end, `choose` naming the type of every batchable batch.
  template <class Choose>
  Batches drive(Choose&& choose) {
    Batches out;
    while (true) {
      run_unbatchable(out);
      if (remaining_ == 0) return out;
      run(choose(), out);
    }
  }

  // DyNet's agenda: the ready type whose nodes have the lowest average depth (lowest id on ties).
  int64_t agenda_choice(const double* average) const {
    int64_t best = -1;
    for (size_t t = 0; t < count_.size(); ++t)
      if (count_[t] && batchable_[t] && (best < 0 || average[t] < average[best])) best = static_cast<int64_t>(t);
    return best;
  }

  // Typewise: the ready type with the largest |F_t| / |F*_t|; ties to the larger batch, then the lower id.
  int64_t typewise_choice() const {
    if (!tracks_ideal()) throw py::value_error("typewise needs |F*_t|: make the frontier with track_ideal");
    int64_t best = -1;
    double best_ratio = 0.0;
    for (size_t t = 0; t < count_.size(); ++t) {
      if (!count_[t] || !batchable_[t]) continue;
      const double ratio = static_cast<double>(count_[t]) / static_cast<double>(ideal_[t]);
      if (best < 0 || ratio > best_ratio || (ratio == best_ratio && count_[t] > count_[best])) {
        best = static_cast<int64_t>(t);
        best_ratio = ratio;
      }
    }
    return best;
  }

  // The ready batchable types `to_vocab` knows, as the state sees them.
  void ready_known(const int64_t* to_vocab, std::vector<ReadyType>& out) const {
    out.clear();
    for (size_t t = 0; t < count_.size(); ++t)
      if (count_[t] && batchable_[t] && to_vocab[t] >= 0)
        out.push_back({static_cast<int32_t>(to_vocab[t]), count_[t]});
  }

  // When no type the vocabulary knows is ready: the ready unknown type with the most ready nodes
  // (lowest id on ties). Such nodes are mostly sinks (a loss), which lose nothing by waiting.
  int64_t unknown_choice(const int64_t* to_vocab) const {
    int64_t best = -1;
    for (size_t t = 0; t < count_.size(); ++t)
      if (count_[t] && batchable_[t] && to_vocab[t] < 0 && (best < 0 || count_[t] > count_[best]))
        best = static_cast<int64_t>(t);
    return best;
  }

 private:
  static void check_csr(const Array<int64_t>& ptr, const Array<int32_t>& node, int64_t n, const char* what) {
    if (ptr.size() != n + 1 || ptr.data()[0] != 0 || ptr.data()[n] != node.size())
      throw py::value_error(std::string("the ") + what + " CSR does not match the graph");
    for (int64_t i = 0; i < node.size(); ++i)
      if (node.data()[i] < 0 || node.data()[i] >= n)
        throw py::value_error(std::string("the ") + what + " CSR names a node out of range");
  }

  // |F*_t| from here on: type-t nodes not yet run with no not-yet-run type-t ancestor, kept by
  // counting down each node's nearest same-type ancestors (`analysis.same_type_links`).
  void track_ideal(Array<int64_t> link_ptr, Array<int32_t> link_node, Array<int32_t> num_nearest) {
    const int64_t n = static_cast<int64_t>(pending_.size());
    check_csr(link_ptr, link_node, n, "same-type link");
    if (num_nearest.size() != n) throw py::value_error("num_nearest has one entry a node");
    link_ptr_ = std::move(link_ptr);
    link_node_ = std::move(link_node);
    near_pending_.assign(num_nearest.data(), num_nearest.data() + n);
    ideal_.assign(count_.size(), 0);
    tracks_ideal_ = true;
    for (int64_t v = 0; v < n; ++v)
      if (near_pending_[v] == 0) ++ideal_[type_of_[v]];
  }

  void add_ready(int32_t v) {
    const int32_t t = type_of_[v];
    std::vector<int32_t>& ready = ready_[t];
    if (ready.empty()) {
      descending_[t] = 1;
    } else if (v > ready.back()) {
      descending_[t] = 0;
    }
    ready.push_back(v);
    ++count_[t];
  }

  void finish(const int32_t* nodes, size_t k, int32_t t) {
    remaining_ -= static_cast<int64_t>(k);
    if (tracks_ideal_) {
      const int64_t* ptr = link_ptr_.data();
      const int32_t* later = link_node_.data();
      ideal_[t] -= static_cast<int64_t>(k);
      for (size_t i = 0; i < k; ++i)
        for (int64_t e = ptr[nodes[i]]; e < ptr[nodes[i] + 1]; ++e)
          if (--near_pending_[later[e]] == 0) ++ideal_[type_of_[later[e]]];
    }
    // Consumers whose last argument this was are collected without a branch (whether a count
    // reaches zero is a coin toss the predictor loses), then made ready in the same order.
    const int64_t* ptr = consumer_ptr_.data();
    const int32_t* consumer = consumer_node_.data();
    int32_t* pending = pending_.data();
    int32_t* now_ready = now_ready_.data();
    size_t found = 0;
    for (size_t i = 0; i < k; ++i) {
      const int64_t hi = ptr[nodes[i] + 1];
      for (int64_t e = ptr[nodes[i]]; e < hi; ++e) {
        const int32_t c = consumer[e];
        now_ready[found] = c;
        found += --pending[c] == 0;
      }
    }
    for (size_t j = 0; j < found; ++j) add_ready(now_ready[j]);
  }

  std::vector<int64_t> consumer_ptr_;
  std::vector<int32_t> consumer_node_;  // one entry per argument edge: a node may consume another twice
  Array<int32_t> node_type_;
  const int32_t* type_of_ = nullptr;
  std::vector<uint8_t> batchable_;
  std::vector<int32_t> unbatchable_types_;
  std::vector<int32_t> pending_;  // arguments not yet run
  std::vector<int32_t> now_ready_;  // `finish`'s scratch: one entry per consumer edge, and one more
  std::vector<std::vector<int32_t>> ready_;  // by type, in no order until a batch sorts them
  std::vector<uint8_t> descending_;  // ready_[t] sorted descending, so its lowest id pops from the back
  std::vector<int64_t> count_;  // |F_t|
  int64_t remaining_ = 0;
  Array<int64_t> link_ptr_;
  Array<int32_t> link_node_;
  std::vector<int32_t> near_pending_;  // nearest same-type ancestors not yet run
  bool tracks_ideal_ = false;
  std::vector<int64_t> ideal_;  // |F*_t|, when tracked
};

// The learned policy's choice, step by step: the state of the ready types the vocabulary knows,
// looked up in the table; a state it lacks goes by `FsmTable::fallback` (counted), or, given
// `ask`, by asking Python and adding the answer to the table (distillation).
class FsmChooser {
 public:
  FsmChooser(Frontier& frontier, FsmTable& table, const Array<int64_t>& to_vocab, py::object ask, bool count_visits)
      : frontier_(frontier), table_(table), to_vocab_(to_vocab.data()), ask_(std::move(ask)) {
    if (to_vocab.size() != frontier.num_types()) throw py::value_error("to_vocab has one entry a graph type");
    to_graph_.assign(table.vocab_size(), -1);
    for (int64_t t = 0; t < to_vocab.size(); ++t) {
      if (to_vocab_[t] >= static_cast<int64_t>(table.vocab_size()))
        throw py::value_error("to_vocab names a type outside the table's vocabulary");
      if (to_vocab_[t] >= 0) to_graph_[to_vocab_[t]] = t;
    }
    if (count_visits) visits_.assign(table.size(), 0);
  }

  int64_t operator()() {
    frontier_.ready_known(to_vocab_, ready_);
    if (ready_.empty()) return frontier_.unknown_choice(to_vocab_);
    encode_state(table_.encoding(), ready_, state_);
    int32_t action;
    const int32_t entry = table_.find(state_.data(), state_.size());
    if (entry >= 0) {
      action = table_.action(entry);
      if (!visits_.empty()) ++visits_[entry];
    } else if (!ask_.is_none()) {
      action = ask_(py::tuple(py::cast(state_))).cast<int32_t>();
      table_.insert(state_.data(), state_.size(), action);
    } else {
      ++fallbacks_;
      action = table_.fallback(state_);
    }
    if (action < 0 || static_cast<size_t>(action) >= to_graph_.size() || to_graph_[action] < 0)
      throw py::value_error("the table chose vocabulary type " + std::to_string(action) + ", which the graph lacks");
    return to_graph_[action];
  }

  int64_t fallbacks() const { return fallbacks_; }
  std::vector<int64_t>& visits() { return visits_; }

 private:
  Frontier& frontier_;
  FsmTable& table_;
  const int64_t* to_vocab_;
  py::object ask_;
  std::vector<int64_t> to_graph_;
  std::vector<int64_t> visits_;  // per table entry, when counted
  int64_t fallbacks_ = 0;
  std::vector<ReadyType> ready_;
  std::vector<int32_t> state_;
};

// A read-only numpy view of a frontier's per-type counts, kept alive by the frontier's Python object.
py::array_t<int64_t> counts_view(py::object owner, int64_t* data, int64_t size) {
  py::array_t<int64_t> view(size, data, owner);
  view.attr("flags").attr("writeable") = false;
  return view;
}

// Level 0 has no node arguments; a node's level is 1 + its deepest argument's. Arguments come
// before their node, so one scan in node order computes it.
py::array_t<int32_t> depths(const Array<int64_t>& arg_ptr, const Array<int32_t>& arg_node) {
  const int64_t n = arg_ptr.size() - 1;
  const int64_t* ptr = arg_ptr.data();
  const int32_t* arg = arg_node.data();
  if (n < 0 || ptr[0] != 0 || ptr[n] != arg_node.size()) throw py::value_error("the argument CSR does not match its nodes");
  std::vector<int32_t> depth(n);
  for (int64_t v = 0; v < n; ++v) {
    int32_t deepest = -1;
    for (int64_t e = ptr[v]; e < ptr[v + 1]; ++e) {
      if (arg[e] >= v) throw py::value_error("node " + std::to_string(v) + " has an argument that does not come before it");
      if (arg[e] >= 0) deepest = std::max(deepest, depth[arg[e]]);
    }
    depth[v] = deepest + 1;
  }
  return to_numpy(std::move(depth));
}

// The consumer CSR as numpy arrays (ptr, node, num_args): the frontier builds its own; this serves
// the tests that hold it to its oracle.
py::tuple consumers(const Array<int64_t>& arg_ptr, const Array<int32_t>& arg_node) {
  ConsumerCsr c = transpose_arguments(arg_ptr, arg_node);
  return py::make_tuple(to_numpy(std::move(c.ptr)), to_numpy(std::move(c.node)), to_numpy(std::move(c.num_args)));
}

// The nearest same-type ancestors of every node (`analysis.same_type_links` says what they are and
// numbers the bits): bitsets `seen` and `shadowed` travel down the graph, node by node in node order;
// a node's own type owns `words[t]` words from `col0[t]`. Returns (node, bit) for every nearest
// ancestor, the bit being the ancestor's rank among its type's nodes in its instance.
py::tuple nearest_same_type(const Array<int64_t>& arg_ptr, const Array<int32_t>& arg_node,
                            const Array<int32_t>& node_type, const Array<int64_t>& rank,
                            const Array<int64_t>& col0, const Array<int64_t>& words) {
  const int64_t n = node_type.size();
  const int64_t num_types = words.size();
  const int64_t* ptr = arg_ptr.data();
  const int32_t* arg = arg_node.data();
  if (arg_ptr.size() != n + 1 || ptr[0] != 0 || ptr[n] != arg_node.size() || rank.size() != n ||
      col0.size() != num_types + 1)
    throw py::value_error("the same-type link inputs do not match the graph");
  const int64_t total = col0.data()[num_types];
  // Each node's `seen` words, then its `shadowed` words.
  std::vector<uint64_t> bits(static_cast<size_t>(n) * 2 * total, 0);
  std::vector<int64_t> near_node, near_bit;
  for (int64_t v = 0; v < n; ++v) {
    uint64_t* acc = bits.data() + v * 2 * total;
    for (int64_t e = ptr[v]; e < ptr[v + 1]; ++e) {
      if (arg[e] >= v) throw py::value_error("node " + std::to_string(v) + " has an argument that does not come before it");
      if (arg[e] < 0) continue;
      const uint64_t* from = bits.data() + static_cast<int64_t>(arg[e]) * 2 * total;
      for (int64_t j = 0; j < 2 * total; ++j) acc[j] |= from[j];
    }
    const int32_t t = node_type.data()[v];
    if (t < 0 || t >= num_types) throw py::value_error("a node's type is out of range");
    const int64_t own = col0.data()[t];
    for (int64_t j = 0; j < words.data()[t]; ++j) {
      const uint64_t mine = acc[own + j];
      for (uint64_t near = mine & ~acc[total + own + j]; near; near &= near - 1) {
        near_node.push_back(v);
        near_bit.push_back(j * 64 + __builtin_ctzll(near));
      }
      acc[total + own + j] = mine;
    }
    const int64_t r = rank.data()[v];
    if (r < 0 || r >= 64 * words.data()[t]) throw py::value_error("a node's rank is out of its type's bits");
    acc[own + r / 64] |= uint64_t{1} << (r % 64);
  }
  return py::make_tuple(to_numpy(std::move(near_node)), to_numpy(std::move(near_bit)));
}

}  // namespace

void register_frontier(py::module_& m) {
  m.def("nearest_same_type", &nearest_same_type, py::arg("arg_ptr"), py::arg("arg_node"), py::arg("node_type"),
        py::arg("rank"), py::arg("col0"), py::arg("words"));
  m.def("consumers", &consumers, py::arg("arg_ptr"), py::arg("arg_node"),
        "Each node's consumers (ptr, node: one per argument edge, in node order) and its node-argument count.");
  m.def("depths", &depths, py::arg("arg_ptr"), py::arg("arg_node"),
        "Each node's depth from the inputs (0: no node arguments), in one scan in node order.");
  py::class_<FsmTable>(m, "FsmTable", "A learned policy's table (state -> vocabulary id), with its fallback priority.")
      .def(py::init<const std::string&, const std::vector<std::vector<int32_t>>&, const std::vector<int32_t>&,
                    std::vector<int32_t>>(),
           py::arg("encoding"), py::arg("states"), py::arg("actions"), py::arg("rank"))
      .def("__len__", &FsmTable::size);

  py::class_<Frontier>(m, "Frontier", "The ready frontier of a graph, by type (csrc/frontier.cpp).")
      .def(py::init<const Array<int64_t>&, const Array<int32_t>&, Array<int32_t>, Array<bool>,
                    std::optional<Array<int64_t>>, std::optional<Array<int32_t>>, std::optional<Array<int32_t>>>(),
           py::arg("arg_ptr"), py::arg("arg_node"), py::arg("node_type"),
           py::arg("batchable"), py::arg("link_ptr") = py::none(), py::arg("link_node") = py::none(),
           py::arg("num_nearest") = py::none())
      .def_property_readonly("remaining", &Frontier::remaining)
      .def_property_readonly("done", [](const Frontier& f) { return f.remaining() == 0; })
      .def_property_readonly(
          "count", [](py::object self) {
            Frontier& f = self.cast<Frontier&>();
            return counts_view(self, f.count_data(), f.num_types());
          }, "|F_t|: ready nodes of each type (a read-only view)")
      .def_property_readonly(
          "ideal", [](py::object self) -> py::object {
            Frontier& f = self.cast<Frontier&>();
            if (!f.tracks_ideal()) return py::none();
            return counts_view(self, f.ideal_data(), f.num_types());
          }, "|F*_t| (a read-only view), or None when not tracked")
      .def("ready_types", [](const Frontier& f) { return to_numpy(f.ready_types()); },
           "Batchable types with a ready node, in type order.")
      .def("run", [](Frontier& f, int64_t t) {
            Batches out;
            f.run(t, out);
            return to_numpy(std::move(out.nodes));
          }, py::arg("t"), "Run every ready node of type t as one batch; returns it (ascending node ids).")
      .def("run_unbatchable", [](Frontier& f) {
            Batches out;
            f.run_unbatchable(out);
            return to_numpy(std::move(out.nodes));
          }, "Run ready unbatchable nodes one at a time until none is ready; returns them, each its own batch.")
      .def("state", [](const Frontier& f, Array<int64_t> to_vocab, const std::string& encoding) {
            if (to_vocab.size() != f.num_types()) throw py::value_error("to_vocab has one entry a graph type");
            std::vector<ReadyType> ready;
            std::vector<int32_t> state;
            f.ready_known(to_vocab.data(), ready);
            if (!ready.empty()) encode_state(encoding_of(encoding), ready, state);
            return py::tuple(py::cast(state));
          }, py::arg("to_vocab"), py::arg("encoding"),
           "The state of the ready types `to_vocab` knows (graph type -> vocabulary id or -1); () when none is.")
      .def("agenda_choice", [](const Frontier& f, Array<double> average) {
            return f.agenda_choice(average.data());
          }, py::arg("average"))
      .def("typewise_choice", &Frontier::typewise_choice)
      .def("drive", [](py::object self, py::function choose) {
            Frontier& f = self.cast<Frontier&>();
            return f.drive([&]() { return choose(self).cast<int64_t>(); }).to_python();
          }, py::arg("choose"),
           "Run to the end, `choose(frontier)` naming the type of every batch; returns (ptr, nodes, types).")
      .def("schedule_agenda", [](Frontier& f, Array<double> average) {
            if (average.size() != f.num_types()) throw py::value_error("average has one entry a type");
            return f.drive([&]() { return f.agenda_choice(average.data()); }).to_python();
          }, py::arg("average"))
      .def("schedule_typewise", [](Frontier& f) {
            return f.drive([&]() { return f.typewise_choice(); }).to_python();
          })
      .def("schedule_fsm", [](Frontier& f, FsmTable& table, Array<int64_t> to_vocab, py::object ask, bool count_visits) {
            FsmChooser choose(f, table, to_vocab, std::move(ask), count_visits);
            py::tuple batches = f.drive(choose).to_python();
            return py::make_tuple(batches[0], batches[1], batches[2], choose.fallbacks(),
                                  to_numpy(std::move(choose.visits())));
          }, py::arg("table"), py::arg("to_vocab"), py::arg("ask") = py::none(), py::arg("count_visits") = false,
           "Run to the end under a learned table; returns (ptr, nodes, types, fallbacks, visits per entry).");
}

}  // namespace edbc
