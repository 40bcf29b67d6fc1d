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
// Windows are independent (parallel over windows, OpenMP). A window's rows are read whole (each
// [H, C] row contiguous, so consecutive rows stream) into per-head blocks, every product of a
// head is a small matrix product computed in register tiles of 4 rows x 2 vectors (the rows
// share each load and the FMA chains are independent), and the products of all heads are written
// back as whole rows. float32 uses a vectorisable exp. Every row in a window is written once;
// rows in no window get zeros.
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

// Per-thread buffers for one window of at most `s` tokens (`np`: s rounded up to 8). The
// per-head operands are blocks of `s` rows: head h of qs is qs[h * s * C ...], of kt (keys
// transposed, zero padded to np columns) kt[h * C * np ...]. The products of all heads are
// gathered row by row ([s, H, width], gq/gk/gv) and written to the tables as whole rows.
template <typename T>
struct Buffers {
  idx_t s, np;
  std::vector<T> qs, ks, kt, vs, vt, dout, p, ds, pt, dst, gq, gk, gv, inv;
  std::vector<idx_t> rows;
  Buffers(idx_t s_max, idx_t H, idx_t C, idx_t Cv, bool backward)
      : s(s_max), np((s_max + 7) / 8 * 8), qs(H * s_max * C), kt(H * C * np),
        vs(backward ? 0 : H * s_max * Cv), p(s_max * np), gv(s_max * H * Cv), inv(H * s_max),
        rows(s_max) {
    if (backward) {
      ks.resize(H * s_max * C);
      vt.resize(H * Cv * np);
      dout.resize(H * s_max * Cv);
      ds.resize(s_max * np);
      pt.resize(s_max * np);
      dst.resize(s_max * np);
      gq.resize(s_max * H * C);
      gk.resize(s_max * H * C);
    }
  }
};

// A register tile of a small matrix product: out[r, 0:V*NV) = mult * sum_{x < K} a[r, x]
// b[x, 0:V*NV) for r < R (a: rows of stride lda; b: rows of stride ldb; out: rows of stride
// ldo), V the lanes of a 32-byte vector. The R x NV vector accumulators stay in registers, so
// R rows share every load of b and the FMA chains are independent: 4 rows x 2 vectors keep both
// FMA units busy, where one row at a time is bound by the FMA latency.
// (an alias template would drop the vector attribute, hence the traits)
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
static_assert(sizeof(Vec<float>) == 32 && sizeof(Vec<double>) == 32, "32-byte vectors");

template <typename T>
inline Vec<T> load_vec(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T, int R, int NV>
inline void tile(const T* __restrict a, idx_t lda, const T* __restrict b, idx_t ldb, idx_t K,
                 T* __restrict out, idx_t ldo, T mult) {
  constexpr int V = 32 / sizeof(T);
  Vec<T> acc[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < NV; ++u) acc[r][u] = Vec<T>{};
  }
  for (idx_t x = 0; x < K; ++x) {
    const T* __restrict bx = b + x * ldb;
    Vec<T> bv[NV];
    for (int u = 0; u < NV; ++u) bv[u] = load_vec(bx + u * V);
    for (int r = 0; r < R; ++r) {
      const T s = a[r * lda + x];
      for (int u = 0; u < NV; ++u) acc[r][u] += s * bv[u];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < NV; ++u) {
      const Vec<T> o = mult * acc[r][u];
      __builtin_memcpy(out + r * ldo + u * V, &o, sizeof(o));
    }
  }
}

// R rows of out = mult * a b over all `cols` columns: tiles of two and one vectors (64 and 32
// bytes), then single columns.
template <typename T, int R>
inline void row_block(const T* a, idx_t lda, const T* b, idx_t ldb, idx_t K, T* out, idx_t ldo,
                      idx_t cols, T mult) {
  constexpr int kWide = 64 / sizeof(T), kNarrow = 32 / sizeof(T);
  idx_t j = 0;
  for (; j + kWide <= cols; j += kWide) tile<T, R, 2>(a, lda, b + j, ldb, K, out + j, ldo, mult);
  if (j + kNarrow <= cols) {
    tile<T, R, 1>(a, lda, b + j, ldb, K, out + j, ldo, mult);
    j += kNarrow;
  }
  for (; j < cols; ++j) {
    for (int r = 0; r < R; ++r) {
      T sum = 0;
      for (idx_t x = 0; x < K; ++x) sum += a[r * lda + x] * b[x * ldb + j];
      out[r * ldo + j] = mult * sum;
    }
  }
}

// out [rows, cols] (stride ldo) = mult * a [rows, K] (stride lda) b [K, cols] (stride ldb).
template <typename T>
void small_matmul(const T* a, idx_t lda, const T* b, idx_t ldb, idx_t K, T* out, idx_t ldo,
                  idx_t rows, idx_t cols, T mult) {
  idx_t r = 0;
  for (; r + 4 <= rows; r += 4) row_block<T, 4>(a + r * lda, lda, b, ldb, K, out + r * ldo, ldo, cols, mult);
  const T* ar = a + r * lda;
  T* outr = out + r * ldo;
  switch (rows - r) {
    case 3: return row_block<T, 3>(ar, lda, b, ldb, K, outr, ldo, cols, mult);
    case 2: return row_block<T, 2>(ar, lda, b, ldb, K, outr, ldo, cols, mult);
    case 1: return row_block<T, 1>(ar, lda, b, ldb, K, outr, ldo, cols, mult);
    default: return;
  }
}

// dst[j, i] = src[i, j] for i, j < n (both n x n blocks of row stride ld).
template <typename T>
inline void transpose_block(const T* __restrict src, T* __restrict dst, idx_t n, idx_t ld) {
  for (idx_t i = 0; i < n; ++i) {
    for (idx_t j = 0; j < n; ++j) dst[j * ld + i] = src[i * ld + j];
  }
}

// Loads the window's rows, each [H, C] row of the tables read whole (contiguous, so the
// hardware prefetcher streams consecutive rows), into the per-head blocks: queries times scale,
// keys transposed; the forward also values row-major, the backward keys row-major, values
// transposed and the output gradients row-major.
template <typename T>
void load_window(const Problem<T>& P, Buffers<T>& B, const T* dout, idx_t n) {
  const idx_t H = P.H, C = P.C, Cv = P.Cv, np = B.np, s = B.s;
  for (idx_t i = 0; i < n; ++i) {
    const T* __restrict q = P.q + B.rows[i] * H * C;
    const T* __restrict k = P.k + B.rows[i] * H * C;
    const T* __restrict v = P.v + B.rows[i] * H * Cv;
    for (idx_t h = 0; h < H; ++h) {
      T* __restrict qs = B.qs.data() + (h * s + i) * C;
      T* __restrict kt = B.kt.data() + h * C * np + i;
      for (idx_t c = 0; c < C; ++c) qs[c] = q[h * C + c] * P.scale;
      for (idx_t c = 0; c < C; ++c) kt[c * np] = k[h * C + c];
      if (dout == nullptr) {
        std::copy(v + h * Cv, v + (h + 1) * Cv, B.vs.data() + (h * s + i) * Cv);
      } else {
        const T* __restrict g = dout + B.rows[i] * H * Cv;
        std::copy(k + h * C, k + (h + 1) * C, B.ks.data() + (h * s + i) * C);
        T* __restrict vt = B.vt.data() + h * Cv * np + i;
        for (idx_t c = 0; c < Cv; ++c) vt[c * np] = v[h * Cv + c];
        std::copy(g + h * Cv, g + (h + 1) * Cv, B.dout.data() + (h * s + i) * Cv);
      }
    }
  }
  if (n == np) return;
  for (idx_t row = 0; row < H * C; ++row) {
    std::fill(B.kt.data() + row * np + n, B.kt.data() + (row + 1) * np, T(0));
  }
  if (dout == nullptr) return;
  for (idx_t row = 0; row < H * Cv; ++row) {
    std::fill(B.vt.data() + row * np + n, B.vt.data() + (row + 1) * np, T(0));
  }
}

// Writes the window's product rows ([n, H, width]) to their table rows, head h of row i times
// mult[h * s + i] when mult is given.
template <typename T>
inline void store_window(const Problem<T>& P, const Buffers<T>& B, idx_t n, idx_t width,
                         const std::vector<T>& product, const T* mult, T* table) {
  const idx_t H = P.H, row = H * width;
  for (idx_t i = 0; i < n; ++i) {
    const T* __restrict src = product.data() + i * row;
    T* __restrict dst = table + B.rows[i] * row;
    if (mult == nullptr) {
      std::copy(src, src + row, dst);
      continue;
    }
    for (idx_t h = 0; h < H; ++h) {
      const T m = mult[h * B.s + i];
#pragma omp simd
      for (idx_t c = 0; c < width; ++c) dst[h * width + c] = m * src[h * width + c];
    }
  }
}

// exp(row - shift) in place; returns the sum.
template <typename T>
inline T exp_row(T* __restrict row, idx_t n, T shift) {
  for (idx_t j = 0; j < n; ++j) row[j] = exp_of<T>(row[j] - shift);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (idx_t j = 0; j < n; ++j) sum += row[j];
  return sum;
}

// Per head: S = (scale Q) K^T, P = exp(S - max) row by row, O = P V / rowsum.
template <typename T>
void forward_window(const Problem<T>& P, Buffers<T>& B, idx_t w, T* out, T* lse) {
  const idx_t start = P.ptr[w], n = P.ptr[w + 1] - start, H = P.H, C = P.C, Cv = P.Cv;
  const idx_t np = B.np, s = B.s;
  if (n <= 0) return;
  for (idx_t i = 0; i < n; ++i) B.rows[i] = P.row(start + i);
  load_window<T>(P, B, nullptr, n);
  for (idx_t h = 0; h < H; ++h) {
    small_matmul<T>(B.qs.data() + h * s * C, C, B.kt.data() + h * C * np, np, C, B.p.data(), np,
                    n, np, T(1));
    for (idx_t i = 0; i < n; ++i) {
      T* __restrict row = B.p.data() + i * np;
      T m = row[0];
#pragma omp simd reduction(max : m)
      for (idx_t j = 1; j < n; ++j) m = std::max(m, row[j]);
      const T sum = exp_row(row, n, m);
      lse[(start + i) * H + h] = m + std::log(sum);
      B.inv[h * s + i] = T(1) / sum;
    }
    small_matmul<T>(B.p.data(), np, B.vs.data() + h * s * Cv, Cv, n, B.gv.data() + h * Cv, H * Cv,
                    n, Cv, T(1));
  }
  store_window<T>(P, B, n, Cv, B.gv, B.inv.data(), out);
}

template <typename T>
struct Grads {
  const T* dout;
  const T* lse;
  T* dq;
  T* dk;
  T* dv;
};

// Per head: P recomputed from lse, dP = dO V^T, ds = P (dP - D) with FlashAttention's
// D_i = dO_i . o_i formed as sum_j p_ij dp_ij (o_i = sum_j p_ij v_j, so the output is not kept
// for the backward); dQ = scale ds K, dK = ds^T (scale Q), dV = P^T dO.
template <typename T>
void backward_window(const Problem<T>& P, Buffers<T>& B, const Grads<T>& G, idx_t w) {
  const idx_t start = P.ptr[w], n = P.ptr[w + 1] - start, H = P.H, C = P.C, Cv = P.Cv;
  const idx_t np = B.np, s = B.s;
  if (n <= 0) return;
  for (idx_t i = 0; i < n; ++i) B.rows[i] = P.row(start + i);
  load_window(P, B, G.dout, n);
  for (idx_t h = 0; h < H; ++h) {
    const T* qs = B.qs.data() + h * s * C;
    const T* dout = B.dout.data() + h * s * Cv;
    small_matmul<T>(qs, C, B.kt.data() + h * C * np, np, C, B.p.data(), np, n, np, T(1));
    small_matmul<T>(dout, Cv, B.vt.data() + h * Cv * np, np, Cv, B.ds.data(), np, n, np, T(1));
    for (idx_t i = 0; i < n; ++i) {
      T* __restrict p = B.p.data() + i * np;
      T* __restrict ds = B.ds.data() + i * np;
      exp_row(p, n, G.lse[(start + i) * H + h]);
      T d = 0;
#pragma omp simd reduction(+ : d)
      for (idx_t j = 0; j < n; ++j) d += p[j] * ds[j];
#pragma omp simd
      for (idx_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - d);
    }
    small_matmul<T>(B.ds.data(), np, B.ks.data() + h * s * C, C, n, B.gq.data() + h * C, H * C,
                    n, C, P.scale);
    transpose_block(B.ds.data(), B.dst.data(), n, np);
    small_matmul<T>(B.dst.data(), np, qs, C, n, B.gk.data() + h * C, H * C, n, C, T(1));
    transpose_block(B.p.data(), B.pt.data(), n, np);
    small_matmul<T>(B.pt.data(), np, dout, Cv, n, B.gv.data() + h * Cv, H * Cv, n, Cv, T(1));
  }
  store_window<T>(P, B, n, C, B.gq, nullptr, G.dq);
  store_window<T>(P, B, n, C, B.gk, nullptr, G.dk);
  store_window<T>(P, B, n, Cv, B.gv, nullptr, G.dv);
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
    at::parallel_for(0, W, kGrain, [&](int64_t begin, int64_t end) {
      Buffers<T> B(s_max, P.H, P.C, P.Cv, false);
      for (int64_t w = begin; w < end; ++w) forward_window<T>(P, B, w, o, l);
    });
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
    at::parallel_for(0, W, kGrain, [&](int64_t begin, int64_t end) {
      Buffers<T> B(s_max, P.H, P.C, P.Cv, true);
      for (int64_t w = begin; w < end; ++w) backward_window<T>(P, B, G, w);
    });
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
