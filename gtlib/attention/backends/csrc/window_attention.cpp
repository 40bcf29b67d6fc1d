// Fused CPU kernel of gtlib's window attention: softmax dot-product attention inside disjoint
// windows (all-to-all blocks) of a serialised token order, e.g. octree windows of a point cloud.
//
// Window w holds the serial positions t in [ptr[w], ptr[w + 1]); position t is row index[t] of
// the [N, H, C] tables (row t when no index is given), so a caller's point order needs no gather
// or scatter of its own. For query row i, head h and the keys j of its window:
//   s_ij = scale * q_i . k_j,  p_ij = softmax_j(s_ij),  o_i = sum_j p_ij v_j,
//   lse_i = log sum_j exp(s_ij)  (kept for the backward, [L, H] in serial positions).
// Backward (scores recomputed from lse; neither the output nor anything of size s x s is kept
// between calls):
//   dp_ij = dO_i . v_j,  D_i = sum_j p_ij dp_ij (= dO_i . o_i),  ds_ij = p_ij (dp_ij - D_i),
//   dq_i = scale sum_j ds_ij k_j,  dk_j = scale sum_i ds_ij q_i,  dv_j = sum_i p_ij dO_i.
// Windows are independent (parallel over windows, OpenMP); every product is an axpy over a
// contiguous row of a per-window buffer (keys and values transposed once per window and head),
// which the compiler vectorises; float32 uses a vectorisable exp. (Reading the rows in place
// through row pointers instead of these copies measured 1.3-2x slower: the rows of one head are
// 512 B apart in the [N, H, C] tables.) Every row in a window is written once; rows in no
// window get zeros.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

#include "fast_exp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>

namespace {

using gtlib::exp_of;
using idx_t = int64_t;

template <typename T>
struct Problem {
  const T* q;
  const T* k;
  const T* v;
  const idx_t* ptr;
  const idx_t* index;  // nullptr: position t is row t
  idx_t W, H, C, Cv;
  T scale;
  idx_t row(idx_t t) const { return index ? index[t] : t; }
};

// Per-thread buffers for one window of at most `s_max` tokens (`np`: s_max rounded up to 8).
template <typename T>
struct Buffers {
  idx_t np;
  std::vector<T> qs, ks, kt, vs, vt, dout, p, ds, acc;
  std::vector<idx_t> rows;
  explicit Buffers(idx_t s_max, idx_t C, idx_t Cv)
      : np((s_max + 7) / 8 * 8), qs(s_max * C), ks(s_max * C), kt(C * np), vs(s_max * Cv),
        vt(Cv * np), dout(s_max * Cv), p(s_max * np), ds(s_max * np),
        acc(std::max(C, Cv)), rows(s_max) {}
};

// out[0:n) = sum_c a[c] * bt[c, 0:n) (bt: [C, ld] row-major, zero past n up to ld).
// NB > 0: n <= 8 NB and ld >= 8 NB, the 8 NB accumulators stay in registers.
template <typename T, int NB>
inline void scores_row(const T* __restrict__ a, const T* __restrict__ bt, T* __restrict__ out,
                       idx_t n, idx_t ld, idx_t C) {
  if constexpr (NB > 0) {
    T acc[8 * NB] = {};
    for (idx_t c = 0; c < C; ++c) {
      const T x = a[c];
      const T* __restrict__ b = bt + c * ld;
      for (int j = 0; j < 8 * NB; ++j) acc[j] += x * b[j];
    }
    for (idx_t j = 0; j < n; ++j) out[j] = acc[j];
  } else {
    std::fill(out, out + n, T(0));
    for (idx_t c = 0; c < C; ++c) {
      const T x = a[c];
      const T* __restrict__ b = bt + c * ld;
      for (idx_t j = 0; j < n; ++j) out[j] += x * b[j];
    }
  }
}

template <typename T>
inline void scores_row_any(const T* a, const T* bt, T* out, idx_t n, idx_t ld, idx_t C) {
  switch ((n + 7) / 8) {
    case 1: return scores_row<T, 1>(a, bt, out, n, ld, C);
    case 2: return scores_row<T, 2>(a, bt, out, n, ld, C);
    case 3: return scores_row<T, 3>(a, bt, out, n, ld, C);
    case 4: return scores_row<T, 4>(a, bt, out, n, ld, C);
    case 5: return scores_row<T, 5>(a, bt, out, n, ld, C);
    case 6: return scores_row<T, 6>(a, bt, out, n, ld, C);
    case 7: return scores_row<T, 7>(a, bt, out, n, ld, C);
    case 8: return scores_row<T, 8>(a, bt, out, n, ld, C);
    default: return scores_row<T, 0>(a, bt, out, n, ld, C);
  }
}

// out[0:C) = mult * sum_x coef[x * stride] * m[x, 0:C) (m: [n, C] row-major). CK > 0: C == CK,
// the accumulators stay in registers; otherwise `acc` ([C]) is the scratch.
template <typename T, int CK>
inline void combine_row(const T* __restrict__ coef, idx_t stride, const T* __restrict__ m,
                        idx_t n, idx_t C, T mult, T* __restrict__ out, T* __restrict__ acc) {
  if constexpr (CK > 0) {
    T local[CK] = {};
    for (idx_t x = 0; x < n; ++x) {
      const T a = coef[x * stride];
      const T* __restrict__ row = m + x * CK;
      for (int c = 0; c < CK; ++c) local[c] += a * row[c];
    }
    for (int c = 0; c < CK; ++c) out[c] = mult * local[c];
  } else {
    std::fill(acc, acc + C, T(0));
    for (idx_t x = 0; x < n; ++x) {
      const T a = coef[x * stride];
      const T* __restrict__ row = m + x * C;
      for (idx_t c = 0; c < C; ++c) acc[c] += a * row[c];
    }
    for (idx_t c = 0; c < C; ++c) out[c] = mult * acc[c];
  }
}

// Loads head h of the window: queries (times scale), keys transposed (zero padded to np
// columns); the forward also values row-major, the backward keys row-major, values transposed
// and the output gradients row-major.
template <typename T>
void load_head(const Problem<T>& P, Buffers<T>& B, const T* dout, idx_t n, idx_t h) {
  const idx_t C = P.C, Cv = P.Cv, np = B.np;
  for (idx_t i = 0; i < n; ++i) {
    const idx_t offset = (B.rows[i] * P.H + h) * C, offset_v = (B.rows[i] * P.H + h) * Cv;
    const T* __restrict__ q = P.q + offset;
    const T* __restrict__ k = P.k + offset;
    const T* __restrict__ v = P.v + offset_v;
    for (idx_t c = 0; c < C; ++c) B.qs[i * C + c] = q[c] * P.scale;
    for (idx_t c = 0; c < C; ++c) B.kt[c * np + i] = k[c];
    if (dout == nullptr) {
      std::copy(v, v + Cv, B.vs.data() + i * Cv);
    } else {
      std::copy(k, k + C, B.ks.data() + i * C);
      for (idx_t c = 0; c < Cv; ++c) B.vt[c * np + i] = v[c];
      std::copy(dout + offset_v, dout + offset_v + Cv, B.dout.data() + i * Cv);
    }
  }
  if (n == np) return;
  for (idx_t c = 0; c < C; ++c) {
    std::fill(B.kt.data() + c * np + n, B.kt.data() + (c + 1) * np, T(0));
  }
  if (dout == nullptr) return;
  for (idx_t c = 0; c < Cv; ++c) {
    std::fill(B.vt.data() + c * np + n, B.vt.data() + (c + 1) * np, T(0));
  }
}

// exp(row - shift) in place; returns the sum.
template <typename T>
inline T exp_row(T* __restrict__ row, idx_t n, T shift) {
  for (idx_t j = 0; j < n; ++j) row[j] = exp_of<T>(row[j] - shift);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (idx_t j = 0; j < n; ++j) sum += row[j];
  return sum;
}

template <typename T, int CK>
void forward_window(const Problem<T>& P, Buffers<T>& B, idx_t w, T* out, T* lse) {
  const idx_t start = P.ptr[w], n = P.ptr[w + 1] - start, H = P.H, C = P.C, Cv = P.Cv;
  const idx_t np = B.np;
  if (n <= 0) return;
  for (idx_t i = 0; i < n; ++i) B.rows[i] = P.row(start + i);
  for (idx_t h = 0; h < H; ++h) {
    load_head<T>(P, B, nullptr, n, h);
    T* __restrict__ row = B.p.data();
    for (idx_t i = 0; i < n; ++i) {
      scores_row_any(B.qs.data() + i * C, B.kt.data(), row, n, np, C);
      T m = row[0];
#pragma omp simd reduction(max : m)
      for (idx_t j = 1; j < n; ++j) m = std::max(m, row[j]);
      const T sum = exp_row(row, n, m);
      lse[(start + i) * H + h] = m + std::log(sum);
      combine_row<T, CK>(row, 1, B.vs.data(), n, Cv, T(1) / sum,
                         out + (B.rows[i] * H + h) * Cv, B.acc.data());
    }
  }
}

template <typename T>
struct Grads {
  const T* dout;
  const T* lse;
  T* dq;
  T* dk;
  T* dv;
};

// FlashAttention's D_i = dO_i . o_i is formed as sum_j p_ij (dO_i . v_j) from the row itself
// (o_i = sum_j p_ij v_j), so the output is not kept for the backward.
template <typename T, int CK>
void backward_window(const Problem<T>& P, Buffers<T>& B, const Grads<T>& G, idx_t w) {
  const idx_t start = P.ptr[w], n = P.ptr[w + 1] - start, H = P.H, C = P.C, Cv = P.Cv;
  const idx_t np = B.np;
  if (n <= 0) return;
  for (idx_t i = 0; i < n; ++i) B.rows[i] = P.row(start + i);
  for (idx_t h = 0; h < H; ++h) {
    load_head(P, B, G.dout, n, h);
    for (idx_t i = 0; i < n; ++i) {
      const T* __restrict__ go = B.dout.data() + i * Cv;
      T* __restrict__ p = B.p.data() + i * np;
      T* __restrict__ ds = B.ds.data() + i * np;
      scores_row_any(B.qs.data() + i * C, B.kt.data(), p, n, np, C);
      exp_row(p, n, G.lse[(start + i) * H + h]);
      scores_row_any(go, B.vt.data(), ds, n, np, Cv);
      T d = 0;
#pragma omp simd reduction(+ : d)
      for (idx_t j = 0; j < n; ++j) d += p[j] * ds[j];
      for (idx_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - d);
    }
    for (idx_t i = 0; i < n; ++i) {
      const idx_t r = B.rows[i];
      // dq_i = scale sum_j ds_ij k_j; dk_i = sum_j ds_ji (scale q_j); dv_i = sum_j p_ji dO_j
      combine_row<T, CK>(B.ds.data() + i * np, 1, B.ks.data(), n, C, P.scale,
                         G.dq + (r * H + h) * C, B.acc.data());
      combine_row<T, CK>(B.ds.data() + i, np, B.qs.data(), n, C, T(1), G.dk + (r * H + h) * C,
                         B.acc.data());
      combine_row<T, CK>(B.p.data() + i, np, B.dout.data(), n, Cv, T(1),
                         G.dv + (r * H + h) * Cv, B.acc.data());
    }
  }
}

// Zeros the rows of the [N, width] tables that no window covers (the kernels write every covered
// row once and leave the others unwritten).
template <typename T>
void zero_uncovered(const Problem<T>& P, idx_t N, std::initializer_list<std::pair<T*, idx_t>> out) {
  const idx_t L = P.ptr[P.W];
  if (P.index == nullptr) {
    for (const auto& [table, width] : out) {
      std::fill(table + L * width, table + N * width, T(0));
    }
    return;
  }
  std::vector<uint8_t> covered(N, 0);
  for (idx_t t = 0; t < L; ++t) covered[P.index[t]] = 1;
  for (idx_t r = 0; r < N; ++r) {
    if (covered[r]) continue;
    for (const auto& [table, width] : out) std::fill(table + r * width, table + (r + 1) * width, T(0));
  }
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& ptr, const at::Tensor& index) {
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.dim() == 3 && v.size(0) == q.size(0) &&
                  v.size(1) == q.size(1),
              "query and key must be [N, H, C] and value [N, H, Cv]");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(),
              "query, key and value must be contiguous");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "query, key and value must share a dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "window attention supports float32 and float64");
  TORCH_CHECK(ptr.scalar_type() == at::kLong && ptr.dim() == 1 && ptr.numel() >= 1 &&
                  ptr.is_contiguous(),
              "ptr must be a contiguous int64 vector [W + 1]");
  if (index.defined() && index.numel() > 0) {
    TORCH_CHECK(index.scalar_type() == at::kLong && index.dim() == 1 && index.is_contiguous(),
                "index must be a contiguous int64 vector");
  }
}

idx_t max_window(const idx_t* ptr, idx_t W) {
  idx_t s = 1;
  for (idx_t w = 0; w < W; ++w) s = std::max(s, ptr[w + 1] - ptr[w]);
  return s;
}

template <typename T>
Problem<T> make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& ptr, const at::Tensor& index, double scale) {
  Problem<T> P;
  P.q = q.data_ptr<T>();
  P.k = k.data_ptr<T>();
  P.v = v.data_ptr<T>();
  P.ptr = ptr.data_ptr<idx_t>();
  P.index = index.defined() && index.numel() > 0 ? index.data_ptr<idx_t>() : nullptr;
  P.W = ptr.numel() - 1;
  P.H = q.size(1);
  P.C = q.size(2);
  P.Cv = v.size(2);
  P.scale = static_cast<T>(scale);
  return P;
}

// Channels known at compile time (accumulators in registers) when query and value agree.
template <typename F>
void dispatch_channels(idx_t C, idx_t Cv, F&& run) {
  if (C == Cv && C == 16) return run(std::integral_constant<int, 16>());
  if (C == Cv && C == 32) return run(std::integral_constant<int, 32>());
  if (C == Cv && C == 64) return run(std::integral_constant<int, 64>());
  run(std::integral_constant<int, 0>());
}

// Windows per parallel task: a few, so that buffers are allocated once per task.
constexpr int64_t kGrain = 16;

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& ptr,
                                           const at::Tensor& index, double scale) {
  check_inputs(q, k, v, ptr, index);
  const idx_t W = ptr.numel() - 1;
  const idx_t L = ptr.data_ptr<idx_t>()[W];
  at::Tensor out = at::empty_like(v);
  at::Tensor lse = at::empty({L, q.size(1)}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gtlib_window_forward", [&] {
    using T = scalar_t;
    const Problem<T> P = make_problem<T>(q, k, v, ptr, index, scale);
    const idx_t s_max = max_window(P.ptr, W);
    T* o = out.data_ptr<T>();
    T* l = lse.data_ptr<T>();
    zero_uncovered<T>(P, v.size(0), {{o, P.H * P.Cv}});
    auto run = [&](auto ck) {
      constexpr int CK = decltype(ck)::value;
      at::parallel_for(0, W, kGrain, [&](int64_t begin, int64_t end) {
        Buffers<T> B(s_max, P.C, P.Cv);
        for (int64_t w = begin; w < end; ++w) forward_window<T, CK>(P, B, w, o, l);
      });
    };
    dispatch_channels(P.C, P.Cv, run);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& lse, const at::Tensor& ptr, const at::Tensor& index, double scale) {
  check_inputs(q, k, v, ptr, index);
  TORCH_CHECK(grad_out.sizes() == v.sizes() && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == q.scalar_type(),
              "grad_out must be contiguous like value");
  const idx_t W = ptr.numel() - 1;
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gtlib_window_backward", [&] {
    using T = scalar_t;
    const Problem<T> P = make_problem<T>(q, k, v, ptr, index, scale);
    const idx_t s_max = max_window(P.ptr, W);
    Grads<T> G{grad_out.data_ptr<T>(), lse.data_ptr<T>(), dq.data_ptr<T>(), dk.data_ptr<T>(),
               dv.data_ptr<T>()};
    zero_uncovered<T>(P, q.size(0), {{G.dq, P.H * P.C}, {G.dk, P.H * P.C}, {G.dv, P.H * P.Cv}});
    auto run = [&](auto ck) {
      constexpr int CK = decltype(ck)::value;
      at::parallel_for(0, W, kGrain, [&](int64_t begin, int64_t end) {
        Buffers<T> B(s_max, P.C, P.Cv);
        for (int64_t w = begin; w < end; ++w) backward_window<T, CK>(P, B, G, w);
      });
    };
    dispatch_channels(P.C, P.Cv, run);
  });
  return {dq, dk, dv};
}

int num_threads() { return at::get_num_threads(); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gtlib fused CPU window attention (OpenMP)";
  m.def("forward", &forward, "window attention forward: (out, lse)", pybind11::arg("query"),
        pybind11::arg("key"), pybind11::arg("value"), pybind11::arg("ptr"),
        pybind11::arg("index"), pybind11::arg("scale"));
  m.def("backward", &backward, "window attention backward: grads of (query, key, value)",
        pybind11::arg("grad_out"), pybind11::arg("query"), pybind11::arg("key"),
        pybind11::arg("value"), pybind11::arg("lse"), pybind11::arg("ptr"),
        pybind11::arg("index"), pybind11::arg("scale"));
  m.def("num_threads", &num_threads, "threads a call uses (at::get_num_threads)");
}
