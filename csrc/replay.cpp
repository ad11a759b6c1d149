// The replay loop: a compiled mini-batch as a flat stream of batches, each running its cell's
// native program (affine -> ATen matmuls; runs of elementwise ops -> one fused pass over the
// rows), with no Python per batch. Cells the lowering cannot express run their Python kernel.
//
// Inside a program every tensor is a `[k, width]` base (a cell input or a step's output); an
// operand is a column range of a base, or of a parameter row (the same row for every call).
#include <cmath>
#include <cstring>

#include "parts.h"

namespace edbc {
namespace {

// Opcodes: the order of `edbc.runtime.native.OPCODES`.
enum Code : int64_t {
  ADD, SUB, MUL, DIV, ADDCMUL, LERP, SIGMOID, TANH, RELU, EXP, COPY,  // elementwise
  AFFINE, AFFINE_ADD, EMBED, LOG_SOFTMAX, SOFTMAX,                      // through ATen
  NUM_CODES
};
constexpr int64_t LAST_ELEMENTWISE = COPY;
// One instruction: code, dst (base, col), width, then three operands (base, col); a negative
// base -1-p is parameter p. AFFINE reads a (the rows), b = the weight, c = the bias or none.
constexpr int64_t FIELDS = 10;
constexpr int64_t kNone = INT64_MIN;  // an operand field not used

// Set reductions of a set batch's rows, segment by segment.
enum SetHow : int64_t { SET_SUM, SET_MEAN, SET_MAX };

// exp on floats, written so that the compiler vectorises the loops calling it (libm's expf is
// a call it cannot); Cephes' polynomial, within 2 ulp. NaN stays NaN and overflow gives inf;
// below -87.3 it gives 1.2e-38 where the true value is a denormal or 0.
inline float vexp(float x) {
  x = x > 88.73f ? 88.73f : x;  // e^88.73 is past the largest float: inf
  x = x < -87.33f ? -87.33f : x;
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^128 is no float: scale by 2^127, then double.
  const float twice = n > 127.0f ? 2.0f : 1.0f;
  n = n > 127.0f ? 127.0f : n;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale * twice;
}

inline float vsigmoid(float x) { return 1.0f / (1.0f + vexp(-x)); }
inline float vtanh(float x) { return 1.0f - 2.0f / (vexp(2.0f * x) + 1.0f); }

struct Instr {
  int64_t code, dst, dst_col, width, a, a_col, b, b_col, c, c_col;
};

struct Program {
  std::vector<Instr> instrs;
  std::vector<int64_t> widths;      // columns of each base
  std::vector<int64_t> token;       // per input: 1 if token ids
  std::vector<int64_t> ref_aten;    // per base: read by an ATen instruction (so it is materialised)
  std::vector<std::array<int64_t, 3>> outputs;  // per program output: base, col, width
  std::vector<int64_t> out_base;    // per base: the output it is, written in place (-1: scratch)
  std::vector<at::Tensor> params;
};

// Where a base's rows are: data, row stride, and for gathered rows the row indices.
struct Rows {
  float* data = nullptr;
  int64_t stride = 0;
  const int64_t* index = nullptr;
  at::Tensor tensor;  // the [k, width] tensor, when one exists (ATen instructions read it)
  inline float* row(int64_t r) const { return data + (index ? index[r] : r) * stride; }
};

class NativeKernel {
 public:
  NativeKernel(at::Tensor instrs, std::vector<int64_t> widths, std::vector<int64_t> token,
               std::vector<std::array<int64_t, 3>> outputs, std::vector<at::Tensor> params) {
    auto acc = instrs.accessor<int64_t, 2>();
    TORCH_CHECK(instrs.size(1) == FIELDS, "instructions have ", FIELDS, " fields");
    p_.widths = std::move(widths);
    p_.token = std::move(token);
    p_.outputs = std::move(outputs);
    p_.params = std::move(params);
    const int64_t nb = static_cast<int64_t>(p_.widths.size());
    p_.ref_aten.assign(nb, 0);
    p_.out_base.assign(nb, -1);
    for (int64_t i = 0; i < instrs.size(0); ++i) {
      Instr in{acc[i][0], acc[i][1], acc[i][2], acc[i][3], acc[i][4],
               acc[i][5], acc[i][6], acc[i][7], acc[i][8], acc[i][9]};
      TORCH_CHECK(in.code >= 0 && in.code < NUM_CODES, "unknown opcode ", in.code);
      if (in.code > LAST_ELEMENTWISE && in.a >= 0) p_.ref_aten[in.a] = 1;
      p_.instrs.push_back(in);
    }
    // An output that is a whole step base is written straight into its destination rows; an
    // output that is (part of) an input is copied from it, so that input must be a tensor.
    const int64_t n_in = static_cast<int64_t>(p_.token.size());
    for (size_t o = 0; o < p_.outputs.size(); ++o) {
      auto [base, col, width] = p_.outputs[o];
      if (base < n_in) p_.ref_aten[base] = 1;
      if (base >= n_in && col == 0 && width == p_.widths[base] && p_.out_base[base] < 0) p_.out_base[base] = o;
    }
  }

  void set_params(std::vector<at::Tensor> params) { p_.params = std::move(params); }
  int64_t num_inputs() const { return static_cast<int64_t>(p_.token.size()); }
  const std::vector<int64_t>& token() const { return p_.token; }
  // Whether input p must be a tensor (ATen reads it), rather than rows read in place.
  bool needs_tensor(size_t p, bool direct) const { return p_.ref_aten[p] || !direct; }

  // `bases`: the inputs' rows (a tensor where `needs_tensor`); `ids`: token inputs' ids, by input;
  // `out`: each output's destination, `[k, width]`.
  void run(std::vector<Rows>& bases, const std::vector<at::Tensor>& ids, const std::vector<at::Tensor>& out,
           int64_t k, bool direct) const {
    const int64_t n_in = num_inputs();
    const auto opts = out.front().options();
    bases.resize(p_.widths.size());
    for (size_t b = n_in; b < p_.widths.size(); ++b) {
      at::Tensor t = p_.out_base[b] >= 0 ? out[p_.out_base[b]] : at::empty({k, p_.widths[b]}, opts);
      bases[b].tensor = t;
      bases[b].data = t.data_ptr<float>();
      bases[b].stride = t.stride(0);
      bases[b].index = nullptr;
    }
    size_t i = 0;
    while (i < p_.instrs.size()) {
      const Instr& in = p_.instrs[i];
      if (in.code <= LAST_ELEMENTWISE) {
        size_t j = i;
        while (j < p_.instrs.size() && p_.instrs[j].code <= LAST_ELEMENTWISE) ++j;
        if (direct) {
          fused(bases, i, j, k);
        } else {
          for (size_t q = i; q < j; ++q) elementwise_aten(bases, p_.instrs[q], k);
        }
        i = j;
        continue;
      }
      aten(bases, ids, in, k);
      ++i;
    }
    for (size_t o = 0; o < p_.outputs.size(); ++o) {
      auto [base, col, width] = p_.outputs[o];
      if (p_.out_base[base] == static_cast<int64_t>(o)) continue;
      out[o].copy_(columns(bases, base, col, width, k));
    }
  }

 private:
  at::Tensor columns(const std::vector<Rows>& bases, int64_t base, int64_t col, int64_t width, int64_t k) const {
    if (base < 0) return p_.params[-1 - base].narrow(0, col, width).unsqueeze(0).expand({k, width});
    const at::Tensor& t = bases[base].tensor;
    return col == 0 && width == t.size(1) ? t : t.narrow(1, col, width);  // a view costs ~2 us
  }

  // A run of elementwise instructions as one pass: row by row, every instruction on that row.
  void fused(std::vector<Rows>& bases, size_t from, size_t to, int64_t k) const {
    for (int64_t r = 0; r < k; ++r) {
      for (size_t q = from; q < to; ++q) {
        const Instr& in = p_.instrs[q];
        float* d = bases[in.dst].row(r) + in.dst_col;
        const float* a = operand(bases, in.a, in.a_col, r);
        const float* b = operand(bases, in.b, in.b_col, r);
        const float* c = operand(bases, in.c, in.c_col, r);
        const int64_t w = in.width;
        switch (in.code) {
          case ADD: for (int64_t x = 0; x < w; ++x) d[x] = a[x] + b[x]; break;
          case SUB: for (int64_t x = 0; x < w; ++x) d[x] = a[x] - b[x]; break;
          case MUL: for (int64_t x = 0; x < w; ++x) d[x] = a[x] * b[x]; break;
          case DIV: for (int64_t x = 0; x < w; ++x) d[x] = a[x] / b[x]; break;
          case ADDCMUL: for (int64_t x = 0; x < w; ++x) d[x] = a[x] + b[x] * c[x]; break;
          case LERP: for (int64_t x = 0; x < w; ++x) d[x] = a[x] + c[x] * (b[x] - a[x]); break;
          case SIGMOID: for (int64_t x = 0; x < w; ++x) d[x] = vsigmoid(a[x]); break;
          case TANH: for (int64_t x = 0; x < w; ++x) d[x] = vtanh(a[x]); break;
          case RELU: for (int64_t x = 0; x < w; ++x) d[x] = a[x] < 0.0f ? 0.0f : a[x]; break;
          case EXP: for (int64_t x = 0; x < w; ++x) d[x] = vexp(a[x]); break;
          case COPY: for (int64_t x = 0; x < w; ++x) d[x] = a[x]; break;
        }
      }
    }
  }

  const float* operand(const std::vector<Rows>& bases, int64_t base, int64_t col, int64_t r) const {
    if (base == kNone) return nullptr;
    if (base < 0) return p_.params[-1 - base].data_ptr<float>() + col;
    return bases[base].row(r) + col;
  }

  // The same instruction through ATen (other devices; and tests of this path on the CPU).
  void elementwise_aten(std::vector<Rows>& bases, const Instr& in, int64_t k) const {
    at::Tensor d = columns(bases, in.dst, in.dst_col, in.width, k);
    auto arg = [&](int64_t base, int64_t col) { return columns(bases, base, col, in.width, k); };
    switch (in.code) {
      case ADD: at::add_out(d, arg(in.a, in.a_col), arg(in.b, in.b_col)); break;
      case SUB: at::sub_out(d, arg(in.a, in.a_col), arg(in.b, in.b_col)); break;
      case MUL: at::mul_out(d, arg(in.a, in.a_col), arg(in.b, in.b_col)); break;
      case DIV: at::div_out(d, arg(in.a, in.a_col), arg(in.b, in.b_col)); break;
      case ADDCMUL: at::addcmul_out(d, arg(in.a, in.a_col), arg(in.b, in.b_col), arg(in.c, in.c_col)); break;
      case LERP: at::lerp_out(d, arg(in.a, in.a_col), arg(in.b, in.b_col), arg(in.c, in.c_col)); break;
      case SIGMOID: at::sigmoid_out(d, arg(in.a, in.a_col)); break;
      case TANH: at::tanh_out(d, arg(in.a, in.a_col)); break;
      case RELU: at::clamp_min_out(d, arg(in.a, in.a_col), 0); break;
      case EXP: at::exp_out(d, arg(in.a, in.a_col)); break;
      case COPY: d.copy_(arg(in.a, in.a_col)); break;
    }
  }

  void aten(std::vector<Rows>& bases, const std::vector<at::Tensor>& ids, const Instr& in, int64_t k) const {
    at::Tensor d = columns(bases, in.dst, in.dst_col, in.width, k);
    switch (in.code) {
      case AFFINE:
      case AFFINE_ADD: {
        const at::Tensor& w = p_.params[-1 - in.b];
        at::Tensor x = columns(bases, in.a, in.a_col, w.size(0), k);
        if (in.code == AFFINE_ADD) {
          d.addmm_(x, w);
        } else if (in.c == kNone) {
          at::mm_out(d, x, w);
        } else {
          at::addmm_out(d, columns(bases, in.c, in.c_col, in.width, k), x, w);
        }
        break;
      }
      case EMBED: at::index_select_out(d, p_.params[-1 - in.b], 0, ids[in.a]); break;
      case LOG_SOFTMAX: at::_log_softmax_out(d, columns(bases, in.a, in.a_col, in.width, k), 1, false); break;
      case SOFTMAX: at::_softmax_out(d, columns(bases, in.a, in.a_col, in.width, k), 1, false); break;
      default: TORCH_CHECK(false, "opcode ", in.code, " is not an ATen instruction");
    }
  }

  Program p_;
};

// A set batch: k nodes, node i's set the operand's rows seg[i]..seg[i+1], reduced to one row.
void reduce_sets(const Rows& rows, const at::Tensor& out, const int64_t* counts, int64_t k, int64_t how) {
  const int64_t w = out.size(1);
  float* o = out.data_ptr<float>();
  const int64_t os = out.stride(0);
  int64_t r = 0;
  for (int64_t i = 0; i < k; ++i) {
    float* d = o + i * os;
    const int64_t n = counts[i];
    if (n == 0) {
      std::fill(d, d + w, 0.0f);
      continue;
    }
    const float* s = rows.row(r);
    std::copy(s, s + w, d);
    for (int64_t j = 1; j < n; ++j) {
      s = rows.row(r + j);
      if (how == SET_MAX) {
        for (int64_t x = 0; x < w; ++x) d[x] = (s[x] > d[x] || std::isnan(s[x])) ? s[x] : d[x];
      } else {
        for (int64_t x = 0; x < w; ++x) d[x] += s[x];
      }
    }
    if (how == SET_MEAN) {
      const float inv = 1.0f / static_cast<float>(n);
      for (int64_t x = 0; x < w; ++x) d[x] *= inv;
    }
    r += n;
  }
}

// The same on other devices, through ATen: the rows of node i's set are consecutive.
void reduce_sets_aten(const at::Tensor& rows, const at::Tensor& out, const at::Tensor& counts, int64_t how) {
  const int64_t k = counts.numel();
  at::Tensor owner = at::repeat_interleave(at::arange(k, counts.options()), counts).to(rows.device());
  if (how == SET_MAX) {
    std::vector<int64_t> shape(rows.dim(), 1);
    shape[0] = -1;
    at::Tensor index = owner.view(shape).expand_as(rows);
    out.zero_().scatter_reduce_(0, index, rows, "amax", /*include_self=*/false);
    return;
  }
  out.zero_().index_add_(0, owner, rows);
  if (how == SET_MEAN) {
    std::vector<int64_t> shape(rows.dim(), 1);
    shape[0] = k;
    out.div_(counts.clamp_min(1).to(out.options()).view(shape));
  }
}

// What a type runs: a native program, a set reduction, or (cells the lowering cannot express)
// its Python kernel, called as kernel(inputs, out).
struct TypeKernel {
  std::shared_ptr<NativeKernel> native;
  int64_t set_how = -1;
  pybind11::object python;
  std::vector<int64_t> token;  // per input: 1 if token ids (set reductions and Python kernels)
  int64_t n_outputs = 0;
};

// The flat arrays of a compiled mini-batch (see `edbc.runtime.native.replay_of`).
class Replay {
 public:
  // `direct`: read and write rows in place with loops of our own (CPU); else everything goes
  // through ATen (other devices, and the CPU's tests of that path).
  Replay(std::vector<at::Tensor> arenas, std::vector<TypeKernel> kernels, std::vector<at::Tensor> arrays,
         std::vector<at::Tensor> tokens, bool direct)
      : arenas_(std::move(arenas)), kernels_(std::move(kernels)), arrays_(std::move(arrays)),
        tokens_(std::move(tokens)), direct_(direct) {
    TORCH_CHECK(arrays_.size() == 12, "a replay takes 12 arrays");
    for (size_t i = 0; i < arrays_.size(); ++i) {
      // The gather rows (array 8) live on the arenas' device; the rest are read here.
      TORCH_CHECK(arrays_[i].dtype() == at::kLong && arrays_[i].is_contiguous() && (i == 8 || arrays_[i].is_cpu()),
                  "the replay's arrays are contiguous int64 tensors");
    }
    for (auto& a : arenas_) TORCH_CHECK(a.dtype() == at::kFloat && a.is_contiguous(), "float32 arenas");
    for (auto& a : arenas_) TORCH_CHECK(!direct_ || a.is_cpu(), "direct replays run on the CPU");
  }

  void run() {
    auto ptr = [&](int i) { return arrays_[i].data_ptr<int64_t>(); };
    const int64_t* batch_type = ptr(0);
    const int64_t* node_ptr = ptr(1);
    const int64_t* entry = ptr(2);
    const int64_t* first_value = ptr(3);
    const int64_t* kind = ptr(4);
    const int64_t* arena = ptr(5);
    const int64_t* first = ptr(6);
    const int64_t* gptr = ptr(7);
    const int64_t* value_arena = ptr(9);
    const int64_t* value_row = ptr(10);
    const int64_t* set_count = ptr(11);
    const at::Tensor& grows = arrays_[8];
    const int64_t num_batches = arrays_[0].numel();
    std::vector<Rows> bases;
    std::vector<at::Tensor> ids, out, natural;
    pybind11::gil_scoped_release released;
    for (int64_t b = 0; b < num_batches; ++b) {
      const TypeKernel& tk = kernels_[batch_type[b]];
      const int64_t lo = node_ptr[b], k = node_ptr[b + 1] - lo;
      bases.clear();
      ids.clear();
      out.clear();
      const std::vector<int64_t>& token = tk.native ? tk.native->token() : tk.token;
      bases.resize(token.size());
      natural.assign(token.size(), at::Tensor());
      ids.assign(token.size(), at::Tensor());
      int64_t e = entry[b], q = 0;
      for (size_t p = 0; p < token.size(); ++p) {
        if (token[p]) {
          ids[p] = tokens_[q++].narrow(0, lo, k);
          continue;
        }
        Rows& r = bases[p];
        const at::Tensor& src = arenas_[arena[e]];
        const int64_t width = src.stride(0);
        const bool tensor = tk.native ? tk.native->needs_tensor(p, direct_) : tk.set_how < 0 || !direct_;
        r.stride = width;
        r.data = src.data_ptr<float>();
        if (kind[e] == kGather) {
          const int64_t n = gptr[e + 1] - gptr[e];
          r.index = grows.data_ptr<int64_t>() + gptr[e];
          if (tensor) {
            if (direct_) {  // a row copy loop: index_select's own overhead is several times the copy's
              r.tensor = at::empty({n, width}, src.options());
              float* d = r.tensor.data_ptr<float>();
              for (int64_t j = 0; j < n; ++j) std::memcpy(d + j * width, r.row(j), width * sizeof(float));
              std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
              shape[0] = n;
              natural[p] = tk.python ? r.tensor.view(shape) : r.tensor;
            } else {
              natural[p] = at::index_select(src, 0, grows.narrow(0, gptr[e], n));
              r.tensor = natural[p].view({n, width});
            }
            r.data = r.tensor.data_ptr<float>();
            r.index = nullptr;
          }
        } else {
          const int64_t rows = tk.set_how >= 0 ? set_rows(set_count, lo, k) : k;
          r.data += first[e] * width;
          if (kind[e] == kBroadcast) r.stride = 0;
          if (tensor) {
            if (kind[e] == kBroadcast) {
              std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
              shape[0] = rows;
              natural[p] = src.narrow(0, first[e], 1).expand(shape);
            } else {
              natural[p] = src.narrow(0, first[e], rows);
            }
            r.tensor = natural[p].dim() == 2 ? natural[p] : natural[p].view({rows, width});
          }
        }
        ++e;
      }
      const int64_t v = first_value[b];
      for (int64_t s = 0; s < tk.n_outputs; ++s) {
        const at::Tensor& dst = arenas_[value_arena[v + s]];
        out.push_back(dst.narrow(0, value_row[v + s], k));
      }
      if (tk.native) {
        for (auto& o : out) {
          if (o.dim() != 2) o = o.view({k, o.stride(0)});
        }
        tk.native->run(bases, ids, out, k, direct_);
      } else if (tk.set_how >= 0 && direct_) {
        reduce_sets(bases[0], out[0].view({k, out[0].stride(0)}), set_count + lo, k, tk.set_how);
      } else if (tk.set_how >= 0) {
        reduce_sets_aten(natural[0], out[0], arrays_[11].narrow(0, lo, k), tk.set_how);
      } else {
        pybind11::gil_scoped_acquire held;
        pybind11::list inputs;
        for (size_t p = 0; p < token.size(); ++p) inputs.append(token[p] ? ids[p] : natural[p]);
        tk.python(inputs, out);
      }
    }
  }

 private:
  static constexpr int64_t kBroadcast = 1, kGather = 2;  // OperandTable's kind codes (view is 0)

  static int64_t set_rows(const int64_t* counts, int64_t lo, int64_t k) {
    int64_t n = 0;
    for (int64_t i = lo; i < lo + k; ++i) n += counts[i];
    return n;
  }

  std::vector<at::Tensor> arenas_;
  std::vector<TypeKernel> kernels_;
  std::vector<at::Tensor> arrays_;
  std::vector<at::Tensor> tokens_;
  bool direct_;
};

}  // namespace

void register_replay(pybind11::module_& m) {
  namespace py = pybind11;
  py::class_<NativeKernel, std::shared_ptr<NativeKernel>>(m, "NativeKernel")
      .def(py::init<at::Tensor, std::vector<int64_t>, std::vector<int64_t>, std::vector<std::array<int64_t, 3>>,
                    std::vector<at::Tensor>>(),
           py::arg("instrs"), py::arg("widths"), py::arg("token"), py::arg("outputs"), py::arg("params"))
      .def("set_params", &NativeKernel::set_params);
  py::class_<TypeKernel>(m, "TypeKernel")
      .def(py::init([](std::shared_ptr<NativeKernel> native, int64_t set_how, py::object python,
                       std::vector<int64_t> token, int64_t n_outputs) {
             return TypeKernel{std::move(native), set_how, std::move(python), std::move(token), n_outputs};
           }),
           py::arg("native"), py::arg("set_how"), py::arg("python"), py::arg("token"), py::arg("n_outputs"));
  py::class_<Replay>(m, "Replay")
      .def(py::init<std::vector<at::Tensor>, std::vector<TypeKernel>, std::vector<at::Tensor>,
                    std::vector<at::Tensor>, bool>(),
           py::arg("arenas"), py::arg("kernels"), py::arg("arrays"), py::arg("tokens"), py::arg("direct"))
      .def("run", &Replay::run);
}

}  // namespace edbc
