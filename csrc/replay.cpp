// The replay loop: a compiled mini-batch as a flat stream of batches, each running its cell's
// native program (affine -> one GEMM; matrix products -> one GEMM per row; runs of elementwise
// ops -> one fused pass over the rows), with no Python per batch. Cells the lowering cannot
// express run their Python kernel.
//
// Inside a program every tensor is a `[k, width]` base (a cell input or a step's output); an
// operand is a column range of a base, or of a parameter row (the same row for every call).
#include <torch/extension.h>

#include <dlfcn.h>

#include <cmath>
#include <cstring>
#include <map>
#include <optional>

#include "parts.h"

namespace edbc {
namespace {

// Opcodes: the order of `edbc.runtime.native.OPCODES`.
enum Code : int64_t {
  ADD, SUB, MUL, DIV, ADDCMUL, LERP, SIGMOID, TANH, RELU, EXP, COPY, DROPOUT,  // elementwise
  AFFINE, AFFINE_ADD, EMBED, LOG_SOFTMAX, SOFTMAX, MATMUL, MATMUL_ADD, MATVEC,  // ATen (CPU: sgemm)
  NUM_CODES
};
constexpr int64_t LAST_ELEMENTWISE = DROPOUT;
// One instruction: code, dst (base, col), width, then three operands (base, col); a negative
// base -1-p is parameter p. AFFINE reads a (the rows), b = the weight, c = the bias or none.
// MATMUL (d = a b; MATMUL_ADD d += a b) and MATVEC read a, the left operand, as a [p, q] matrix
// per row (or a parameter), and b; the last two fields are p and q. DROPOUT's are its site and
// rate (percent): d = a, or in training a times its mask.
constexpr int64_t FIELDS = 12;
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
// tanh as Cephes' tanhf: a polynomial below |x| = 0.625 (where 1 - 2/(e^2x + 1) would cancel to
// nothing: tanh(1e-9) must be 1e-9, not 0), else through exp; both sides computed, one kept, so
// the loop stays vectorised.
inline float vtanh(float x) {
  const float s = x * x;
  const float small = ((((-5.70498872745e-3f * s + 2.06390887954e-2f) * s - 5.37397155531e-2f) * s +
                        1.33314422036e-1f) * s - 3.33332819422e-1f) * s * x + x;
  const float large = 1.0f - 2.0f / (vexp(2.0f * x) + 1.0f);
  return (x < 0.625f && x > -0.625f) ? small : large;
}

// MKL's Fortran sgemm inside torch's own library, when it exports one: products whose operands
// are rows of many matrices run one GEMM per row, read in place, with no gather copy or ATen
// call per row. Integer arguments are passed as int64 holding small values, which reads right
// under both the LP64 and the ILP64 interface (little-endian).
using Sgemm = void (*)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*, const float*,
                       const float*, const int64_t*, const float*, const int64_t*, const float*, float*,
                       const int64_t*);

// Row-major d[p, r] (+)= a[p, q] b[q, r], as column-major d^T = b^T a^T.
inline void row_gemm(Sgemm gemm, int64_t p, int64_t q, int64_t r, const float* a, const float* b, float beta,
                     float* d) {
  const float one = 1.0f;
  gemm("N", "N", &r, &p, &q, &one, b, &r, a, &q, &beta, d, &r);
}

Sgemm find_sgemm() {
  Dl_info info;
  if (!dladdr(reinterpret_cast<void*>(&at::_ops::mm::call), &info) || !info.dli_fname) return nullptr;
  void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  auto gemm = lib ? reinterpret_cast<Sgemm>(dlsym(lib, "sgemm_")) : nullptr;
  if (!gemm) return nullptr;
  // Trust it once it multiplies a 2x3 by a 3x2 right.
  const float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {7, 8, 9, 10, 11, 12}, want[4] = {58, 64, 139, 154};
  float d[4] = {0, 0, 0, 0};
  row_gemm(gemm, 2, 3, 2, a, b, 0.0f, d);
  return std::equal(d, d + 4, want) ? gemm : nullptr;
}

// The process's sgemm (nullptr: products go through ATen).
Sgemm blas() {
  static const Sgemm gemm = find_sgemm();
  return gemm;
}

// Training's dropout masks (`edbc.spec.ops.dropout_keep`, which these equal bit for bit): an entry is
// kept by a hash of the step's seed, its row's cell call key, the op's site and the column.
constexpr int64_t kM32 = 0xFFFFFFFFLL;

inline int64_t mix32(int64_t h) {
  h = (((h >> 16) ^ h) * 0x45D9F3BLL) & kM32;
  h = (((h >> 16) ^ h) * 0x45D9F3BLL) & kM32;
  return (h >> 16) ^ h;
}

// The part of the hash a row shares across its columns.
inline int64_t dropout_row(int64_t key, int64_t seed, int64_t site) {
  const int64_t row = mix32((key & kM32) ^ (seed & kM32));
  return mix32(row ^ (key >> 32) ^ ((site * 0x9E3779B9LL) & kM32));
}

// The factor of one entry: 0 where dropped, else 100 / (100 - rate) as the float torch makes it.
inline float dropout_factor(int64_t row, int64_t col, int64_t rate) {
  int64_t h = row ^ ((col * 0x85EBCA6BLL) & kM32);
  h = (((h >> 16) ^ h) * 0x45D9F3BLL) & kM32;
  const bool keep = ((h ^ (h >> 16)) >> 8) >= (rate << 24) / 100;
  return keep ? static_cast<float>(100.0 / static_cast<double>(100 - rate)) : 0.0f;
}

// A batch's dropout draws: its rows' call keys (none: dropout is the identity, as at inference).
struct Noise {
  int64_t seed = 0;
  const int64_t* keys = nullptr;  // the batch's rows', on the CPU
  at::Tensor device_keys;  // the same on the arenas' device (the ATen path)
};

// The factors of a [k, width] dropout through ATen, on the keys' device.
at::Tensor dropout_factors(const Noise& noise, int64_t site, int64_t rate, int64_t width) {
  auto shr = [](const at::Tensor& h, int64_t n) { return at::bitwise_right_shift(h, n); };
  auto mix = [&](at::Tensor h) {
    h = ((shr(h, 16) ^ h) * 0x45D9F3BLL).bitwise_and(kM32);
    h = ((shr(h, 16) ^ h) * 0x45D9F3BLL).bitwise_and(kM32);
    return shr(h, 16) ^ h;
  };
  const at::Tensor& keys = noise.device_keys;
  at::Tensor row = mix(keys.bitwise_and(kM32) ^ (noise.seed & kM32));
  row = mix(row ^ shr(keys, 32) ^ ((site * 0x9E3779B9LL) & kM32));
  at::Tensor h = row.unsqueeze(1) ^ (at::arange(width, keys.options()) * 0x85EBCA6BLL).bitwise_and(kM32).unsqueeze(0);
  h = ((shr(h, 16) ^ h) * 0x45D9F3BLL).bitwise_and(kM32);
  at::Tensor keep = shr(h ^ shr(h, 16), 8) >= (rate << 24) / 100;
  return keep.to(at::kFloat) * static_cast<float>(100.0 / static_cast<double>(100 - rate));
}

struct Instr {
  int64_t code, dst, dst_col, width, a, a_col, b, b_col, c, c_col, p, q;
};

struct Program {
  std::vector<Instr> instrs;
  std::vector<int64_t> widths;      // columns of each base
  std::vector<int64_t> token;       // per input: 1 if token ids
  std::vector<int64_t> ref_aten;    // per base: read by an ATen instruction (so it is materialised)
  std::vector<std::array<int64_t, 3>> outputs;  // per program output: base, col, width
  std::vector<int64_t> out_base;    // per base: the output it is, written in place (-1: scratch)
  std::vector<at::Tensor> params;
  std::vector<char> rewrites;       // per instruction: it reads its own destination (a sum's chain)
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
      Instr in{acc[i][0], acc[i][1], acc[i][2], acc[i][3], acc[i][4], acc[i][5],
               acc[i][6], acc[i][7], acc[i][8], acc[i][9], acc[i][10], acc[i][11]};
      TORCH_CHECK(in.code >= 0 && in.code < NUM_CODES, "unknown opcode ", in.code);
      if (in.code > LAST_ELEMENTWISE && !(rowwise(in) && blas())) {
        for (int64_t base : {in.a, in.b, in.c}) {
          if (base >= 0) p_.ref_aten[base] = 1;
        }
      }
      p_.rewrites.push_back(in.a == in.dst || in.b == in.dst || in.c == in.dst);
      // The one rewrite lowering emits: a sum's chain, d = d + b on the same columns.
      TORCH_CHECK(!p_.rewrites.back() || (in.code == ADD && in.a == in.dst && in.a_col == in.dst_col &&
                                          in.b != in.dst), "an instruction reads its destination");
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

  // The step bases a `run` made (to keep for the backward), and putting them back in place of a run.
  std::vector<at::Tensor> steps_of(const std::vector<Rows>& bases) const {
    std::vector<at::Tensor> kept;
    for (size_t b = num_inputs(); b < bases.size(); ++b) kept.push_back(bases[b].tensor);
    return kept;
  }
  void restore(std::vector<Rows>& bases, const std::vector<at::Tensor>& kept) const {
    bases.resize(p_.widths.size());
    for (size_t i = 0; i < kept.size(); ++i) {
      Rows& r = bases[num_inputs() + i];
      r.tensor = kept[i];
      r.data = kept[i].data_ptr<float>();
      r.stride = kept[i].stride(0);
      r.index = nullptr;
    }
  }

  std::vector<at::Tensor> zero_param_grads() const {
    std::vector<at::Tensor> grads;
    for (const auto& p : p_.params) grads.push_back(at::zeros_like(p));
    return grads;
  }

  // The gradients of one batch, after `run` on the same operands: `gout` holds the outputs'
  // gradients; `gin` gets each input's ([k, width], undefined where none flows); parameters'
  // gradients add into `gparams`. Instruction by instruction in reverse, through ATen.
  void backward(const std::vector<Rows>& bases, const std::vector<at::Tensor>& ids,
                const std::vector<at::Tensor>& gout, std::vector<at::Tensor>& gin,
                std::vector<at::Tensor>& gparams, int64_t k, bool direct, const Noise& noise) const {
    const auto opts = gout.front().options();
    std::vector<at::Tensor> g(p_.widths.size());
    auto grad_of = [&](int64_t base) -> at::Tensor& {
      if (!g[base].defined()) g[base] = at::zeros({k, p_.widths[base]}, opts);
      return g[base];
    };
    auto add = [&](int64_t base, int64_t col, int64_t width, const at::Tensor& d) {
      if (base == kNone) return;
      if (base < 0) {
        gparams[-1 - base].narrow(0, col, width).add_(d.sum(0));
      } else {
        grad_of(base).narrow(1, col, width).add_(d);
      }
    };
    for (size_t o = 0; o < p_.outputs.size(); ++o) {
      auto [base, col, width] = p_.outputs[o];
      grad_of(base).narrow(1, col, width).add_(gout[o]);
    }
    for (size_t i = p_.instrs.size(); i-- > 0;) {
      const Instr& in = p_.instrs[i];
      if (direct && in.code <= LAST_ELEMENTWISE) {  // the whole run of elementwise instructions, fused
        size_t from = i;
        while (from > 0 && p_.instrs[from - 1].code <= LAST_ELEMENTWISE) --from;
        for (size_t q = from; q <= i; ++q) {
          for (int64_t base : {p_.instrs[q].dst, p_.instrs[q].a, p_.instrs[q].b, p_.instrs[q].c}) {
            if (base >= 0 && base != kNone) grad_of(base);
          }
        }
        fused_backward(bases, g, gparams, from, i + 1, k, noise);
        i = from;
        continue;
      }
      at::Tensor gd = grad_of(in.dst).narrow(1, in.dst_col, in.width);
      if (p_.rewrites[i]) {  // the destination held another value before: its gradient starts anew
        gd = gd.clone();
        grad_of(in.dst).narrow(1, in.dst_col, in.width).zero_();
      }
      auto val = [&](int64_t base, int64_t col) { return columns(bases, base, col, in.width, k); };
      const int64_t w = in.width;
      switch (in.code) {
        case ADD: add(in.a, in.a_col, w, gd); add(in.b, in.b_col, w, gd); break;
        case SUB: add(in.a, in.a_col, w, gd); add(in.b, in.b_col, w, -gd); break;
        case MUL:
          add(in.a, in.a_col, w, gd * val(in.b, in.b_col));
          add(in.b, in.b_col, w, gd * val(in.a, in.a_col));
          break;
        case DIV: {
          at::Tensor q = gd / val(in.b, in.b_col);
          add(in.a, in.a_col, w, q);
          add(in.b, in.b_col, w, -q * val(in.dst, in.dst_col));
          break;
        }
        case ADDCMUL:
          add(in.a, in.a_col, w, gd);
          add(in.b, in.b_col, w, gd * val(in.c, in.c_col));
          add(in.c, in.c_col, w, gd * val(in.b, in.b_col));
          break;
        case LERP: {
          at::Tensor c = val(in.c, in.c_col);
          add(in.a, in.a_col, w, gd * (1 - c));
          add(in.b, in.b_col, w, gd * c);
          add(in.c, in.c_col, w, gd * (val(in.b, in.b_col) - val(in.a, in.a_col)));
          break;
        }
        case SIGMOID: {
          at::Tensor d = val(in.dst, in.dst_col);
          add(in.a, in.a_col, w, gd * d * (1 - d));
          break;
        }
        case TANH: {
          at::Tensor d = val(in.dst, in.dst_col);
          add(in.a, in.a_col, w, gd * (1 - d * d));
          break;
        }
        case RELU: add(in.a, in.a_col, w, gd * (val(in.dst, in.dst_col) > 0)); break;
        case EXP: add(in.a, in.a_col, w, gd * val(in.dst, in.dst_col)); break;
        case COPY: add(in.a, in.a_col, w, gd); break;
        case DROPOUT: add(in.a, in.a_col, w, noise.keys ? gd * dropout_factors(noise, in.p, in.q, w) : gd); break;
        case AFFINE:
        case AFFINE_ADD: {
          const at::Tensor& weight = p_.params[-1 - in.b];
          const int64_t rows = weight.size(0);
          add(in.a, in.a_col, rows, gd.mm(weight.t()));
          gparams[-1 - in.b].addmm_(columns(bases, in.a, in.a_col, rows, k).t(), gd);
          if (in.code == AFFINE) add(in.c, in.c_col, w, gd);
          break;
        }
        case EMBED: gparams[-1 - in.b].index_add_(0, ids[in.a], gd); break;
        case MATMUL:
        case MATMUL_ADD: {  // d = a b: ga = gd b^T, gb = a^T gd (a parameter's summed over the rows)
          const int64_t p = in.p, q = in.q, r = w / p;
          if (in.a < 0) {
            const at::Tensor& a = p_.params[-1 - in.a];
            at::Tensor b = columns(bases, in.b, in.b_col, q * r, k).view({k, q, r}), g3 = gd.view({k, p, r});
            gparams[-1 - in.a].add_(at::einsum("kpr,kqr->pq", {g3, b}));
            add(in.b, in.b_col, q * r, at::matmul(a.t(), g3).view({k, q * r}));
          } else if (in.b < 0) {
            const at::Tensor& b = p_.params[-1 - in.b];
            at::Tensor a = columns(bases, in.a, in.a_col, p * q, k).reshape({k * p, q}), g2 = gd.reshape({k * p, r});
            gparams[-1 - in.b].addmm_(a.t(), g2);
            add(in.a, in.a_col, p * q, g2.mm(b.t()).view({k, p * q}));
          } else {
            at::Tensor a = columns(bases, in.a, in.a_col, p * q, k).view({k, p, q});
            at::Tensor b = columns(bases, in.b, in.b_col, q * r, k).view({k, q, r}), g3 = gd.view({k, p, r});
            add(in.a, in.a_col, p * q, at::bmm(g3, b.transpose(1, 2)).view({k, p * q}));
            add(in.b, in.b_col, q * r, at::bmm(a.transpose(1, 2), g3).view({k, q * r}));
          }
          break;
        }
        case MATVEC: {  // d = a v: ga = gd v^T, gv = a^T gd
          const int64_t p = in.p, q = in.q;
          if (in.a < 0) {
            const at::Tensor& a = p_.params[-1 - in.a];
            gparams[-1 - in.a].addmm_(gd.t(), columns(bases, in.b, in.b_col, q, k));
            add(in.b, in.b_col, q, gd.mm(a));
          } else if (in.b < 0) {
            const at::Tensor& v = p_.params[-1 - in.b];
            at::Tensor a = columns(bases, in.a, in.a_col, p * q, k).view({k, p, q});
            add(in.a, in.a_col, p * q, (gd.unsqueeze(2) * v.view({1, 1, q})).view({k, p * q}));
            gparams[-1 - in.b].add_(at::einsum("kp,kpq->q", {gd, a}));
          } else {
            at::Tensor a = columns(bases, in.a, in.a_col, p * q, k).view({k, p, q});
            at::Tensor v = columns(bases, in.b, in.b_col, q, k);
            add(in.a, in.a_col, p * q, (gd.unsqueeze(2) * v.unsqueeze(1)).view({k, p * q}));
            add(in.b, in.b_col, q, at::bmm(gd.unsqueeze(1), a).view({k, q}));
          }
          break;
        }
        case LOG_SOFTMAX: {
          at::Tensor d = val(in.dst, in.dst_col);
          add(in.a, in.a_col, w, gd - d.exp() * gd.sum(1, true));
          break;
        }
        case SOFTMAX: {
          at::Tensor d = val(in.dst, in.dst_col);
          add(in.a, in.a_col, w, d * (gd - (gd * d).sum(1, true)));
          break;
        }
      }
    }
    gin.assign(g.begin(), g.begin() + num_inputs());
  }
  int64_t num_inputs() const { return static_cast<int64_t>(p_.token.size()); }
  // A product that runs one GEMM per row on the CPU: its left operand is a matrix per row (a
  // shared left matrix with per-row right ones is no better as one batched call).
  static bool rowwise(const Instr& in) {
    return in.code == MATMUL || in.code == MATMUL_ADD || (in.code == MATVEC && in.a >= 0);
  }
  const std::vector<int64_t>& token() const { return p_.token; }
  // Whether input p must be a tensor (ATen reads it), rather than rows read in place.
  bool needs_tensor(size_t p, bool direct) const { return p_.ref_aten[p] || !direct; }

  // `bases`: the inputs' rows (a tensor where `needs_tensor`); `ids`: token inputs' ids, by input;
  // `out`: each output's destination, `[k, width]`.
  // `noise`: the batch's dropout draws.
  void run(std::vector<Rows>& bases, const std::vector<at::Tensor>& ids, const std::vector<at::Tensor>& out,
           int64_t k, bool direct, const Noise& noise) const {
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
          fused(bases, i, j, k, noise);
        } else {
          for (size_t q = i; q < j; ++q) elementwise_aten(bases, p_.instrs[q], k, noise);
        }
        i = j;
        continue;
      }
      if (direct && (in.code == AFFINE || in.code == AFFINE_ADD) && affine_direct(bases, in, k)) {
        ++i;
        continue;
      }
      if (direct && rowwise(in) && blas()) {  // a run of products, row by row: a row's matrices stay in cache
        size_t j = i;
        while (j < p_.instrs.size() && rowwise(p_.instrs[j])) ++j;
        product_rows(bases, i, j, k);
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

  // The backward of a run of elementwise instructions as one pass: row by row, the instructions
  // in reverse, each adding its operands' gradients (`g`: per base, `[k, width]`, contiguous; a
  // parameter row's gradient sums over the rows).
  void fused_backward(const std::vector<Rows>& bases, const std::vector<at::Tensor>& g,
                      std::vector<at::Tensor>& gparams, size_t from, size_t to, int64_t k, const Noise& noise) const {
    std::vector<float*> gdata(g.size(), nullptr);
    for (size_t b = 0; b < g.size(); ++b) {
      if (g[b].defined()) gdata[b] = g[b].data_ptr<float>();
    }
    auto grad = [&](int64_t base, int64_t col, int64_t r) -> float* {
      if (base == kNone) return nullptr;
      if (base < 0) return gparams[-1 - base].data_ptr<float>() + col;
      return gdata[base] + r * p_.widths[base] + col;
    };
    for (int64_t r = 0; r < k; ++r) {
      for (size_t q = to; q-- > from;) {
        const Instr& in = p_.instrs[q];
        const float* gd = grad(in.dst, in.dst_col, r);
        const float* d = bases[in.dst].row(r) + in.dst_col;
        const float* a = operand(bases, in.a, in.a_col, r);
        const float* b = operand(bases, in.b, in.b_col, r);
        const float* c = operand(bases, in.c, in.c_col, r);
        float* ga = p_.rewrites[q] ? nullptr : grad(in.a, in.a_col, r);  // d = d + b: d's gradient stays
        float* gb = grad(in.b, in.b_col, r);
        float* gc = grad(in.c, in.c_col, r);
        const int64_t w = in.width;
        switch (in.code) {
          case ADD:
            if (ga) for (int64_t x = 0; x < w; ++x) ga[x] += gd[x];
            for (int64_t x = 0; x < w; ++x) gb[x] += gd[x];
            break;
          case SUB:
            for (int64_t x = 0; x < w; ++x) ga[x] += gd[x];
            for (int64_t x = 0; x < w; ++x) gb[x] -= gd[x];
            break;
          case MUL:
            for (int64_t x = 0; x < w; ++x) ga[x] += gd[x] * b[x];
            for (int64_t x = 0; x < w; ++x) gb[x] += gd[x] * a[x];
            break;
          case DIV:
            for (int64_t x = 0; x < w; ++x) ga[x] += gd[x] / b[x];
            for (int64_t x = 0; x < w; ++x) gb[x] -= gd[x] / b[x] * d[x];
            break;
          case ADDCMUL:
            for (int64_t x = 0; x < w; ++x) ga[x] += gd[x];
            for (int64_t x = 0; x < w; ++x) gb[x] += gd[x] * c[x];
            for (int64_t x = 0; x < w; ++x) gc[x] += gd[x] * b[x];
            break;
          case LERP:
            for (int64_t x = 0; x < w; ++x) ga[x] += gd[x] * (1.0f - c[x]);
            for (int64_t x = 0; x < w; ++x) gb[x] += gd[x] * c[x];
            for (int64_t x = 0; x < w; ++x) gc[x] += gd[x] * (b[x] - a[x]);
            break;
          case SIGMOID: for (int64_t x = 0; x < w; ++x) ga[x] += gd[x] * d[x] * (1.0f - d[x]); break;
          case TANH: for (int64_t x = 0; x < w; ++x) ga[x] += gd[x] * (1.0f - d[x] * d[x]); break;
          case RELU: for (int64_t x = 0; x < w; ++x) ga[x] += d[x] > 0.0f ? gd[x] : 0.0f; break;
          case EXP: for (int64_t x = 0; x < w; ++x) ga[x] += gd[x] * d[x]; break;
          case COPY: for (int64_t x = 0; x < w; ++x) ga[x] += gd[x]; break;
          case DROPOUT:
            if (!noise.keys) {
              for (int64_t x = 0; x < w; ++x) ga[x] += gd[x];
            } else {
              const int64_t row = dropout_row(noise.keys[r], noise.seed, in.p);
              for (int64_t x = 0; x < w; ++x) ga[x] += gd[x] * dropout_factor(row, x, in.q);
            }
            break;
        }
      }
    }
  }

  // A run of elementwise instructions as one pass: row by row, every instruction on that row.
  void fused(std::vector<Rows>& bases, size_t from, size_t to, int64_t k, const Noise& noise) const {
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
          case DROPOUT:
            if (!noise.keys) {
              for (int64_t x = 0; x < w; ++x) d[x] = a[x];
            } else {
              const int64_t row = dropout_row(noise.keys[r], noise.seed, in.p);
              for (int64_t x = 0; x < w; ++x) d[x] = a[x] * dropout_factor(row, x, in.q);
            }
            break;
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
  void elementwise_aten(std::vector<Rows>& bases, const Instr& in, int64_t k, const Noise& noise) const {
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
      case DROPOUT:
        if (noise.keys) {
          at::mul_out(d, arg(in.a, in.a_col), dropout_factors(noise, in.p, in.q, in.width));
        } else {
          d.copy_(arg(in.a, in.a_col));
        }
        break;
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
      case MATMUL:
      case MATMUL_ADD: product(bases, in, d, k); break;
      case MATVEC: {
        const int64_t p = in.p, q = in.q;
        if (in.a < 0) {  // a parameter matrix: an affine, d = v a^T
          at::mm_out(d, columns(bases, in.b, in.b_col, q, k), p_.params[-1 - in.a].t());
        } else {
          at::Tensor a = columns(bases, in.a, in.a_col, p * q, k).view({k, p, q});
          at::Tensor v = in.b < 0 ? p_.params[-1 - in.b].view({1, q, 1}).expand({k, q, 1})
                                  : columns(bases, in.b, in.b_col, q, k).unsqueeze(2);
          at::Tensor d3 = d.unsqueeze(2);
          at::bmm_out(d3, a, v);
        }
        break;
      }
      case LOG_SOFTMAX: at::_log_softmax_out(d, columns(bases, in.a, in.a_col, in.width, k), 1, false); break;
      case SOFTMAX: at::_softmax_out(d, columns(bases, in.a, in.a_col, in.width, k), 1, false); break;
      default: TORCH_CHECK(false, "opcode ", in.code, " is not an ATen instruction");
    }
  }

  // d[k, n] (+)= x[k, m] w[m, n] (+ bias) as one sgemm on the rows where they are: no ATen
  // dispatch, views or bias copy (x's rows are at a fixed stride: an ATen-read base). False
  // where BLAS cannot take the rows (a broadcast row's stride 0): ATen runs it instead.
  bool affine_direct(std::vector<Rows>& bases, const Instr& in, int64_t k) const {
    const at::Tensor& w = p_.params[-1 - in.b];
    const int64_t m = w.size(0), n = in.width;
    const Rows& x = bases[in.a];
    const Rows& d = bases[in.dst];
    if (!blas() || x.index || d.index || (k > 1 && (x.stride < m || d.stride < n))) return false;
    float* d0 = d.row(0) + in.dst_col;
    float beta = 1.0f;
    if (in.code == AFFINE) {
      if (in.c == kNone) {
        beta = 0.0f;
      } else {
        for (int64_t r = 0; r < k; ++r) std::memcpy(d0 + r * d.stride, operand(bases, in.c, in.c_col, r), n * sizeof(float));
      }
    }
    if (k == 0) return true;
    const float one = 1.0f;
    const int64_t ldx = k > 1 ? x.stride : m, ldd = k > 1 ? d.stride : n;
    blas()("N", "N", &n, &k, &m, &one, w.data_ptr<float>(), &n, x.row(0) + in.a_col, &ldx, &beta, d0, &ldd);
    return true;
  }

  void product_rows(std::vector<Rows>& bases, size_t from, size_t to, int64_t k) const {
    const Sgemm gemm = blas();
    for (int64_t row = 0; row < k; ++row) {
      for (size_t i = from; i < to; ++i) {
        const Instr& in = p_.instrs[i];
        const int64_t r = in.code == MATVEC ? 1 : in.width / in.p;
        row_gemm(gemm, in.p, in.q, r, operand(bases, in.a, in.a_col, row), operand(bases, in.b, in.b_col, row),
                 in.code == MATMUL_ADD ? 1.0f : 0.0f, bases[in.dst].row(row) + in.dst_col);
      }
    }
  }

  // d (+)= a b, a [p, q] and b [q, r] per row or a parameter: a shared left matrix is one batched
  // GEMM over the rows' matrices (expanded, not copied); a shared right one a single GEMM.
  void product(std::vector<Rows>& bases, const Instr& in, at::Tensor& d, int64_t k) const {
    const int64_t p = in.p, q = in.q, r = in.width / p;
    const double beta = in.code == MATMUL_ADD ? 1.0 : 0.0;
    if (in.b < 0) {  // [k p, q] x [q, r], on a copy where d's rows are not adjacent
      at::Tensor a = columns(bases, in.a, in.a_col, p * q, k).reshape({k * p, q});
      at::Tensor dc = d.is_contiguous() ? d : d.contiguous();
      dc.view({k * p, r}).addmm_(a, p_.params[-1 - in.b], beta);
      if (!d.is_contiguous()) d.copy_(dc);
      return;
    }
    at::Tensor a = in.a < 0 ? p_.params[-1 - in.a].expand({k, p, q})
                            : columns(bases, in.a, in.a_col, p * q, k).view({k, p, q});
    at::Tensor d3 = d.view({k, p, r});
    d3.baddbmm_(a, columns(bases, in.b, in.b_col, q * r, k).view({k, q, r}), beta);
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

// The gradient of a set batch's rows, given its reduced rows `out` and their gradient `gout`: a
// sum hands each member its node's gradient, a mean that over the set's size, a max shares it
// among the members equal to the largest.
at::Tensor set_backward(const at::Tensor& rows, const at::Tensor& out, const at::Tensor& gout,
                        const at::Tensor& counts, int64_t how) {
  const int64_t k = counts.numel();
  at::Tensor owner = at::repeat_interleave(at::arange(k, counts.options()), counts).to(rows.device());
  at::Tensor g = gout.index_select(0, owner);
  if (how == SET_MEAN) return g / counts.clamp_min(1).to(gout.options()).index_select(0, owner).unsqueeze(1);
  if (how == SET_MAX) {
    at::Tensor tied = (rows == out.index_select(0, owner)).to(rows.scalar_type());
    at::Tensor ties = at::zeros_like(out).index_add_(0, owner, tied);
    return g * tied / ties.index_select(0, owner);
  }
  return g;
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

// The replay's flat arrays, derived from a compiled mini-batch's own (graph, schedule, layout and
// operand table, each in its own integer type; plans' arrays are read-only): int64 tensors, the
// gather rows and the token ids on `device`. Indices are checked, since plans come from files.
struct ReplayArrays {
  std::vector<at::Tensor> arrays;  // see `Replay`
  std::vector<at::Tensor> tokens;  // per token input position: each schedule position's id (0: none)
};

template <class T>
at::Tensor int64_tensor(const Array<T>& a) {
  at::Tensor t = at::empty({static_cast<int64_t>(a.size())}, at::kLong);
  std::copy(a.data(), a.data() + a.size(), t.data_ptr<int64_t>());
  return t;
}

ReplayArrays replay_arrays(const Array<int32_t>& batch_type, const Array<int64_t>& ptr, const Array<int32_t>& nodes,
                           const Array<int64_t>& value_ptr, const Array<int64_t>& arg_ptr,
                           const Array<int64_t>& imm_ptr, const Array<int64_t>& imm,
                           const Array<int64_t>& n_float, int64_t n_tokens, const Array<int8_t>& kind,
                           const Array<int64_t>& arena, const Array<int64_t>& first_row,
                           const Array<int64_t>& table_ptr, const Array<int64_t>& rows,
                           const Array<int32_t>& value_arena, const Array<int64_t>& value_row, at::Device device) {
  const int64_t batches = batch_type.size(), positions = nodes.size(), n = value_ptr.size() - 1;
  const int64_t types = n_float.size();
  TORCH_CHECK(ptr.size() == batches + 1 && ptr.data()[0] == 0 && ptr.data()[batches] == positions &&
                  arg_ptr.size() == n + 1 && imm_ptr.size() == n + 1 && imm_ptr.data()[n] == imm.size() &&
                  table_ptr.size() == kind.size() + 1 && value_arena.size() == value_row.size(),
              "replay arrays of other lengths than their mini-batch's");
  at::Tensor entry = at::empty({batches + 1}, at::kLong), first_value = at::empty({batches}, at::kLong);
  int64_t* e = entry.data_ptr<int64_t>();
  int64_t* fv = first_value.data_ptr<int64_t>();
  e[0] = 0;
  for (int64_t b = 0; b < batches; ++b) {
    const int32_t t = batch_type.data()[b];
    const int64_t lo = ptr.data()[b];
    TORCH_CHECK(t >= 0 && t < types && lo < ptr.data()[b + 1], "a batch of no type or no node");
    e[b + 1] = e[b] + n_float.data()[t];
    fv[b] = value_ptr.data()[nodes.data()[lo]];
  }
  TORCH_CHECK(e[batches] == kind.size(), "an operand table of other entries than the batches' inputs");
  at::Tensor counts = at::empty({positions}, at::kLong);
  std::vector<at::Tensor> tokens;
  for (int64_t q = 0; q < n_tokens; ++q) tokens.push_back(at::empty({positions}, at::kLong));
  int64_t* c = counts.data_ptr<int64_t>();
  for (int64_t j = 0; j < positions; ++j) {
    const int32_t v = nodes.data()[j];
    TORCH_CHECK(v >= 0 && v < n, "a scheduled node outside the graph");
    c[j] = arg_ptr.data()[v + 1] - arg_ptr.data()[v];
    const int64_t first = imm_ptr.data()[v], have = imm_ptr.data()[v + 1] - first;
    for (int64_t q = 0; q < n_tokens; ++q) tokens[q].data_ptr<int64_t>()[j] = q < have ? imm.data()[first + q] : 0;
  }
  for (auto& t : tokens) t = t.to(device);
  return {{int64_tensor(batch_type), int64_tensor(ptr), entry, first_value, int64_tensor(kind), int64_tensor(arena),
           int64_tensor(first_row), int64_tensor(table_ptr), int64_tensor(rows).to(device), int64_tensor(value_arena),
           int64_tensor(value_row), counts},
          std::move(tokens)};
}

class Replay {
 public:
  // `direct`: read and write rows in place with loops of our own (CPU); else everything goes
  // through ATen (other devices, and the CPU's tests of that path).
  Replay(std::vector<at::Tensor> arenas, std::vector<TypeKernel> kernels, ReplayArrays arrays, bool direct)
      : arenas_(std::move(arenas)), kernels_(std::move(kernels)), arrays_(std::move(arrays.arrays)),
        tokens_(std::move(arrays.tokens)), direct_(direct) {
    TORCH_CHECK(arrays_.size() == 12, "a replay takes 12 arrays");
    for (size_t i = 0; i < arrays_.size(); ++i) {
      // The gather rows (array 8) live on the arenas' device; the rest are read here.
      TORCH_CHECK(arrays_[i].dtype() == at::kLong && arrays_[i].is_contiguous() && (i == 8 || arrays_[i].is_cpu()),
                  "the replay's arrays are contiguous int64 tensors");
    }
    for (auto& a : arenas_) TORCH_CHECK(a.dtype() == at::kFloat && a.is_contiguous(), "float32 arenas");
    for (auto& a : arenas_) TORCH_CHECK(!direct_ || a.is_cpu(), "direct replays run on the CPU");
  }

  // `keep`: keep every batch's intermediate values for `backward` (training), which then need
  // not compute them again. `keys` (int64, one a schedule position: its cell call's key) and `seed`:
  // training's dropout draws; without keys dropout is the identity.
  void run(bool keep, int64_t seed, std::optional<at::Tensor> keys) {
    Batch x;
    set_noise(seed, std::move(keys));
    TORCH_CHECK(!keys_.defined() || can_backward(), "dropout draws need every type of the mini-batch native");
    pybind11::gil_scoped_release released;
    kept_.assign(keep ? num_batches() : 0, {});
    for (int64_t b = 0; b < num_batches(); ++b) {
      const TypeKernel& tk = kernel_of(b);
      prepare(b, x, false);
      if (tk.native) {
        tk.native->run(x.bases, x.ids, x.out, x.k, direct_, noise_of(x));
        if (keep) kept_[b] = tk.native->steps_of(x.bases);
      } else if (tk.set_how >= 0 && direct_) {
        reduce_sets(x.bases[0], x.out[0], at_(11) + x.lo, x.k, tk.set_how);
      } else if (tk.set_how >= 0) {
        reduce_sets_aten(x.bases[0].tensor, x.out[0], arrays_[11].narrow(0, x.lo, x.k), tk.set_how);
      } else {
        pybind11::gil_scoped_acquire held;
        pybind11::list inputs;
        for (size_t p = 0; p < x.token->size(); ++p) inputs.append((*x.token)[p] ? x.ids[p] : x.natural[p]);
        pybind11::list out;
        for (size_t s = 0; s < x.out.size(); ++s) out.append(x.natural_out[s]);
        tk.python(inputs, out);
      }
    }
  }

  // Whether `backward` can run: every type is a native program or a set reduction.
  bool can_backward() const {
    for (const auto& tk : kernels_) {
      if (!tk.native && tk.set_how < 0 && !tk.python.is_none()) return false;
    }
    return true;
  }

  // The backward of `run`, batch by batch in reverse: each batch recomputes its program on its
  // inputs (which the arenas still hold), takes its outputs' gradients from `grads` (arena-shaped,
  // the results' already there) and adds its inputs' gradients into them: onto a view's rows, summed
  // into a broadcast row, index_add for a gather. Returns each type's parameter gradients, in its
  // native program's parameter order (types sharing a program share the tensors).
  std::vector<std::vector<at::Tensor>> backward(std::vector<at::Tensor> grads, int64_t seed,
                                                std::optional<at::Tensor> keys) {
    TORCH_CHECK(can_backward(), "a type of this mini-batch runs a Python kernel");
    set_noise(seed, std::move(keys));
    std::map<const NativeKernel*, std::vector<at::Tensor>> params;
    std::vector<std::vector<at::Tensor>> by_type(kernels_.size());
    for (size_t t = 0; t < kernels_.size(); ++t) {
      const auto& tk = kernels_[t];
      if (!tk.native) continue;
      auto it = params.find(tk.native.get());
      if (it == params.end()) it = params.emplace(tk.native.get(), tk.native->zero_param_grads()).first;
      by_type[t] = it->second;
    }
    Batch x;
    std::vector<at::Tensor> gbases;
    pybind11::gil_scoped_release released;
    for (int64_t b = num_batches() - 1; b >= 0; --b) {
      const TypeKernel& tk = kernel_of(b);
      prepare(b, x, true);
      std::vector<at::Tensor> gout;
      for (int64_t s = 0; s < static_cast<int64_t>(x.out.size()); ++s) {
        const int64_t v = at_(3)[b] + s;
        gout.push_back(grads[at_(9)[v]].narrow(0, at_(10)[v], x.k).view({x.k, x.out[s].size(1)}));
      }
      gbases.clear();
      if (tk.native) {
        if (kept_.empty()) {
          tk.native->run(x.bases, x.ids, x.out, x.k, direct_, noise_of(x));  // the same values again, for the derivatives
        } else {
          tk.native->restore(x.bases, kept_[b]);
        }
        tk.native->backward(x.bases, x.ids, gout, gbases, by_type[batch_type_(b)], x.k, direct_, noise_of(x));
      } else {
        gbases.push_back(set_backward(x.bases[0].tensor, x.out[0], gout[0], arrays_[11].narrow(0, x.lo, x.k),
                                      tk.set_how));
      }
      scatter_input_grads(b, x, gbases, grads);
    }
    kept_.clear();
    return by_type;
  }

 private:
  static constexpr int64_t kBroadcast = 1, kGather = 2;  // OperandTable's kind codes (view is 0)

  // One batch's operands: each input's rows (and tensor), token ids, output rows.
  struct Batch {
    int64_t lo = 0, k = 0;
    const std::vector<int64_t>* token = nullptr;
    std::vector<Rows> bases;
    std::vector<at::Tensor> ids, natural, out, natural_out;
  };

  void set_noise(int64_t seed, std::optional<at::Tensor> keys) {
    seed_ = seed;
    keys_ = at::Tensor();
    device_keys_ = at::Tensor();
    if (!keys) return;
    TORCH_CHECK(keys->dtype() == at::kLong && keys->dim() == 1 && keys->numel() == arrays_[1].data_ptr<int64_t>()[num_batches()],
                "dropout keys: int64, one a schedule position");
    keys_ = keys->to(at::kCPU).contiguous();
    device_keys_ = arenas_.empty() ? keys_ : keys_.to(arenas_[0].device());
  }

  // Batch x's dropout draws, while a run or backward holds the step's keys.
  Noise noise_of(const Batch& x) const {
    if (!keys_.defined()) return Noise{};
    return Noise{seed_, keys_.data_ptr<int64_t>() + x.lo, device_keys_.narrow(0, x.lo, x.k)};
  }

  const int64_t* at_(int i) const { return arrays_[i].data_ptr<int64_t>(); }
  int64_t num_batches() const { return arrays_[0].numel(); }
  int64_t batch_type_(int64_t b) const { return at_(0)[b]; }
  const TypeKernel& kernel_of(int64_t b) const { return kernels_[batch_type_(b)]; }

  // Batch b's operands into x; `all_tensors`: every float input as a tensor (the backward's reads).
  void prepare(int64_t b, Batch& x, bool all_tensors) const {
    const TypeKernel& tk = kernel_of(b);
    const int64_t *kind = at_(4), *arena = at_(5), *first = at_(6), *gptr = at_(7);
    const at::Tensor& grows = arrays_[8];
    x.lo = at_(1)[b];
    x.k = at_(1)[b + 1] - x.lo;
    const int64_t k = x.k;
    x.token = tk.native ? &tk.native->token() : &tk.token;
    const auto& token = *x.token;
    x.bases.assign(token.size(), Rows());
    x.natural.assign(token.size(), at::Tensor());
    x.ids.assign(token.size(), at::Tensor());
    int64_t e = at_(2)[b], q = 0;
    for (size_t p = 0; p < token.size(); ++p) {
      if (token[p]) {
        x.ids[p] = tokens_[q++].narrow(0, x.lo, k);
        continue;
      }
      Rows& r = x.bases[p];
      const at::Tensor& src = arenas_[arena[e]];
      const int64_t width = src.stride(0);
      const bool tensor = all_tensors || (tk.native ? tk.native->needs_tensor(p, direct_) : tk.set_how < 0 || !direct_);
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
          } else {
            r.tensor = at::index_select(src, 0, grows.narrow(0, gptr[e], n)).view({n, width});
          }
          if (!tk.python.is_none()) x.natural[p] = r.tensor.view(shape_of(src, n));
          r.data = r.tensor.data_ptr<float>();
          r.index = nullptr;
        }
      } else {
        const int64_t rows = tk.set_how >= 0 ? set_rows(at_(11), x.lo, k) : k;
        r.data += first[e] * width;
        if (kind[e] == kBroadcast) r.stride = 0;
        if (tensor) {
          at::Tensor t = kind[e] == kBroadcast ? src.narrow(0, first[e], 1).expand(shape_of(src, rows))
                                               : src.narrow(0, first[e], rows);
          r.tensor = t.dim() == 2 ? t : t.view({rows, width});
          if (!tk.python.is_none()) x.natural[p] = t;
        }
      }
      ++e;
    }
    x.out.clear();
    x.natural_out.clear();
    const int64_t v = at_(3)[b];
    for (int64_t s = 0; s < tk.n_outputs; ++s) {
      const at::Tensor& dst = arenas_[at_(9)[v + s]];
      at::Tensor rows = dst.narrow(0, at_(10)[v + s], k);
      if (!tk.python.is_none()) x.natural_out.push_back(rows);
      x.out.push_back(rows.dim() == 2 ? rows : rows.view({k, dst.stride(0)}));
    }
  }

  static std::vector<int64_t> shape_of(const at::Tensor& src, int64_t rows) {
    std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
    shape[0] = rows;
    return shape;
  }

  // Adds each float input's gradient (gbases[p], [rows, width]; undefined: none) where batch b read it.
  void scatter_input_grads(int64_t b, const Batch& x, const std::vector<at::Tensor>& gbases,
                           std::vector<at::Tensor>& grads) const {
    const int64_t *kind = at_(4), *arena = at_(5), *first = at_(6), *gptr = at_(7);
    int64_t e = at_(2)[b];
    for (size_t p = 0; p < x.token->size(); ++p) {
      if ((*x.token)[p]) continue;
      const int64_t a = arena[e];
      if (p < gbases.size() && gbases[p].defined() && a < static_cast<int64_t>(grads.size())) {
        const at::Tensor& g = gbases[p];
        at::Tensor flat = grads[a].view({grads[a].size(0), grads[a].stride(0)});
        if (kind[e] == kGather) {
          flat.index_add_(0, arrays_[8].narrow(0, gptr[e], gptr[e + 1] - gptr[e]), g);
        } else if (kind[e] == kBroadcast) {
          flat[first[e]].add_(g.sum(0));
        } else {
          flat.narrow(0, first[e], g.size(0)).add_(g);
        }
      }
      ++e;
    }
  }

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
  std::vector<std::vector<at::Tensor>> kept_;  // per batch, its step bases (`run(keep=true)`)
  int64_t seed_ = 0;  // the dropout draws of the run or backward under way (`set_noise`)
  at::Tensor keys_, device_keys_;
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
      .def(py::init([](std::vector<at::Tensor> arenas, std::vector<TypeKernel> kernels, bool direct,
                       const Array<int32_t>& batch_type, const Array<int64_t>& ptr, const Array<int32_t>& nodes,
                       const Array<int64_t>& value_ptr, const Array<int64_t>& arg_ptr, const Array<int64_t>& imm_ptr,
                       const Array<int64_t>& imm, const Array<int64_t>& n_float, int64_t n_tokens,
                       const Array<int8_t>& kind, const Array<int64_t>& arena, const Array<int64_t>& first_row,
                       const Array<int64_t>& table_ptr, const Array<int64_t>& rows,
                       const Array<int32_t>& value_arena, const Array<int64_t>& value_row) {
             TORCH_CHECK(!arenas.empty(), "a replay writes at least one arena");
             const at::Device device = arenas[0].device();
             return Replay(std::move(arenas), std::move(kernels),
                           replay_arrays(batch_type, ptr, nodes, value_ptr, arg_ptr, imm_ptr, imm, n_float, n_tokens,
                                         kind, arena, first_row, table_ptr, rows, value_arena, value_row, device),
                           direct);
           }),
           py::arg("arenas"), py::arg("kernels"), py::arg("direct"), py::arg("batch_type"), py::arg("ptr"),
           py::arg("nodes"), py::arg("value_ptr"), py::arg("arg_ptr"), py::arg("imm_ptr"), py::arg("imm"),
           py::arg("n_float"), py::arg("n_tokens"), py::arg("kind"), py::arg("arena"), py::arg("first_row"),
           py::arg("table_ptr"), py::arg("rows"), py::arg("value_arena"), py::arg("value_row"))
      .def("run", &Replay::run, py::arg("keep") = false, py::arg("seed") = 0, py::arg("keys") = py::none())
      .def("can_backward", &Replay::can_backward)
      .def("backward", &Replay::backward, py::arg("grads"), py::arg("seed") = 0, py::arg("keys") = py::none());
}

}  // namespace edbc
