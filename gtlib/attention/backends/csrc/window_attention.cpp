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
// share each load and the FMA chains are independent; a transposed operand such as the
// backward's ds^T is read in place), keys (and the backward's values) are transposed per head in
// 8 x 8 register blocks, score rows are padded to whole vectors with -inf (so softmax and its
// reductions run on whole vectors), and the products of all heads are written back as whole
// rows (in a caller's order, the rows a few positions ahead are prefetched meanwhile). float32
// uses a vectorisable exp. Every row in a window is written once; rows in no
// window get zeros.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

#include "fast_exp.h"
#include "output_pool.h"

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
// per-head operands are blocks: head h of qs (queries times scale, [s, C]) is qs[h * s * C ...],
// of ks (keys, [np, C], rows from n on zero) ks[h * np * C ...], of kt (keys transposed,
// [C, np]) kt[h * C * np ...]; values likewise (vs row-major, vt transposed, backward only) and
// the output gradients (dout, [s, Cv]). The products of all heads are gathered row by row
// ([s, H, width], gq/gk/gv) and written to the tables as whole rows.
template <typename T>
struct Buffers {
  idx_t s, np;
  std::vector<T> qs, ks, kt, vs, vt, dout, p, ds, gq, gk, gv, inv;
  std::vector<idx_t> rows;
  Buffers(idx_t s_max, idx_t H, idx_t C, idx_t Cv, bool backward)
      : s(s_max), np((s_max + 7) / 8 * 8), qs(H * s_max * C), ks(H * np * C), kt(H * C * np),
        vs(H * np * Cv), p(s_max * np), gv(s_max * H * Cv), inv(H * s_max), rows(s_max) {
    if (backward) {
      vt.resize(H * Cv * np);
      dout.resize(H * s_max * Cv);
      ds.resize(s_max * np);
      gq.resize(s_max * H * C);
      gk.resize(s_max * H * C);
    }
  }
};

// A register tile of a small matrix product: out[r, 0:V*NV) = mult * sum_{x < K} a(r, x)
// b[x, 0:V*NV) for r < R, with a(r, x) = a[r * lda + x], or a[x * lda + r] when TransA (the
// transpose of a stored block, read in place), b rows of stride ldb, out rows of stride ldo,
// V the lanes of a 32-byte vector. The R x NV vector accumulators stay in registers, so R rows
// share every load of b and the FMA chains are independent: 4 rows x 2 vectors keep both FMA
// units busy, where one row at a time is bound by the FMA latency.
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

template <typename T>
inline void store_vec(T* p, const Vec<T>& v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

template <bool TransA>
inline idx_t a_at(idx_t r, idx_t x, idx_t lda) {
  return TransA ? x * lda + r : r * lda + x;
}

template <typename T, int R, int NV, bool TransA>
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
      const T s = a[a_at<TransA>(r, x, lda)];
      for (int u = 0; u < NV; ++u) acc[r][u] += s * bv[u];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int u = 0; u < NV; ++u) store_vec(out + r * ldo + u * V, mult * acc[r][u]);
  }
}

// R rows of out = mult * a b over all `cols` columns: tiles of four vectors where AVX-512VL gives
// 32 vector registers (16 accumulators fit), then of two and one vectors (64 and 32 bytes), then
// single columns.
template <typename T, int R, bool TransA>
inline void row_block(const T* a, idx_t lda, const T* b, idx_t ldb, idx_t K, T* out, idx_t ldo,
                      idx_t cols, T mult) {
  constexpr int kWide = 64 / sizeof(T), kNarrow = 32 / sizeof(T);
  idx_t j = 0;
#ifdef __AVX512VL__  // 32 vector registers: 4 x 4 accumulators fit
  for (; j + 2 * kWide <= cols; j += 2 * kWide) {
    tile<T, R, 4, TransA>(a, lda, b + j, ldb, K, out + j, ldo, mult);
  }
#endif
  for (; j + kWide <= cols; j += kWide) {
    tile<T, R, 2, TransA>(a, lda, b + j, ldb, K, out + j, ldo, mult);
  }
  if (j + kNarrow <= cols) {
    tile<T, R, 1, TransA>(a, lda, b + j, ldb, K, out + j, ldo, mult);
    j += kNarrow;
  }
  for (; j < cols; ++j) {
    for (int r = 0; r < R; ++r) {
      T sum = 0;
      for (idx_t x = 0; x < K; ++x) sum += a[a_at<TransA>(r, x, lda)] * b[x * ldb + j];
      out[r * ldo + j] = mult * sum;
    }
  }
}

// out [rows, cols] (stride ldo) = mult * op(a) b: op(a) [rows, K] is a (rows of stride lda),
// or with TransA the transpose of a [K, rows] block (rows of stride lda); b [K, cols] (stride
// ldb).
template <typename T, bool TransA = false>
void small_matmul(const T* a, idx_t lda, const T* b, idx_t ldb, idx_t K, T* out, idx_t ldo,
                  idx_t rows, idx_t cols, T mult) {
  idx_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    row_block<T, 4, TransA>(a + a_at<TransA>(r, 0, lda), lda, b, ldb, K, out + r * ldo, ldo,
                            cols, mult);
  }
  const T* ar = a + a_at<TransA>(r, 0, lda);
  T* outr = out + r * ldo;
  switch (rows - r) {
    case 3: return row_block<T, 3, TransA>(ar, lda, b, ldb, K, outr, ldo, cols, mult);
    case 2: return row_block<T, 2, TransA>(ar, lda, b, ldb, K, outr, ldo, cols, mult);
    case 1: return row_block<T, 1, TransA>(ar, lda, b, ldb, K, outr, ldo, cols, mult);
    default: return;
  }
}

// Lanes I... of the 16 lanes of (a, b): GCC's __builtin_shuffle, clang's __builtin_shufflevector.
template <int... I>
inline Vec<float> shuffle(const Vec<float>& a, const Vec<float>& b) {
#if defined(__clang__)
  return __builtin_shufflevector(a, b, I...);
#else
  typedef int Mask __attribute__((vector_size(32)));
  return __builtin_shuffle(a, b, Mask{I...});
#endif
}

// dst [cols, rows] (row stride ldd) = the transpose of src [rows, cols] (row stride lds), rows a
// multiple of the vector lanes. float32 with cols a multiple of 8 goes by 8 x 8 blocks in
// registers (three rounds of two-vector shuffles); anything else element by element.
template <typename T>
inline void transpose(const T* __restrict src, idx_t lds, idx_t rows, idx_t cols,
                      T* __restrict dst, idx_t ldd) {
  if constexpr (std::is_same_v<T, float>) {
    if (cols % 8 == 0) {
      for (idx_t r0 = 0; r0 < rows; r0 += 8) {
        for (idx_t c0 = 0; c0 < cols; c0 += 8) {
          Vec<float> x[8], y[8];
          for (int i = 0; i < 8; ++i) x[i] = load_vec(src + (r0 + i) * lds + c0);
          for (int i = 0; i < 8; i += 2) {  // 2 x 2 blocks of elements
            y[i] = shuffle<0, 8, 2, 10, 4, 12, 6, 14>(x[i], x[i + 1]);
            y[i + 1] = shuffle<1, 9, 3, 11, 5, 13, 7, 15>(x[i], x[i + 1]);
          }
          for (int i = 0; i < 8; i += 4) {  // 2 x 2 blocks of pairs
            for (int a = 0; a < 2; ++a) {
              x[i + a] = shuffle<0, 1, 8, 9, 4, 5, 12, 13>(y[i + a], y[i + a + 2]);
              x[i + a + 2] = shuffle<2, 3, 10, 11, 6, 7, 14, 15>(y[i + a], y[i + a + 2]);
            }
          }
          for (int a = 0; a < 4; ++a) {  // 2 x 2 blocks of quadruples
            y[a] = shuffle<0, 1, 2, 3, 8, 9, 10, 11>(x[a], x[a + 4]);
            y[a + 4] = shuffle<4, 5, 6, 7, 12, 13, 14, 15>(x[a], x[a + 4]);
          }
          for (int i = 0; i < 8; ++i) store_vec(dst + (c0 + i) * ldd + r0, y[i]);
        }
      }
      return;
    }
  }
  for (idx_t r = 0; r < rows; ++r) {
    for (idx_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
}

// dst[0:n) = src[0:n) by vectors (short rows: inline, not a call to memmove).
template <typename T>
inline __attribute__((always_inline)) void copy_row(
    const T* __restrict src, idx_t n, T* __restrict dst) {
  constexpr idx_t V = 32 / sizeof(T);
  idx_t c = 0;
  for (; c + V <= n; c += V) store_vec(dst + c, load_vec(src + c));
  for (; c < n; ++c) dst[c] = src[c];
}

// sum_j a[j] (b[j] when given) over np entries, a multiple of the vector lanes.
template <typename T>
inline T sum_row(const T* __restrict a, const T* __restrict b, idx_t np) {
  constexpr idx_t V = 32 / sizeof(T);
  Vec<T> acc{};
  if (b == nullptr) {
    for (idx_t j = 0; j < np; j += V) acc += load_vec(a + j);
  } else {
    for (idx_t j = 0; j < np; j += V) acc += load_vec(a + j) * load_vec(b + j);
  }
  T sum = 0;
  for (idx_t u = 0; u < V; ++u) sum += acc[u];
  return sum;
}

// Rows ahead whose lines are asked for (__builtin_prefetch) while a window's rows are read or
// written in a caller's order: the out-of-order window covers about one random row, and asking 8
// rows ahead keeps several in flight (measured: 8 and 12 alike, 2 and 4 slower; prefetching a
// whole window ahead gave nothing). Reads look ahead across the window's end into the next
// windows' rows, so that small windows start with their rows in flight too (windows of at most
// 16 points, 9.5 on average: 6% faster with the output pool; windows of 32: the same); writes
// stay within the window. Serial rows stream without it.
constexpr idx_t kAhead = 8;

// Asks for row `row` (`width` entries) of each table, for reading or (write) for writing.
// Reads go to L2 (locality 2: prefetcht1), not L1: a window's rows of four tables ahead would
// crowd L1, and the L1 fill buffers fill with prefetches that then stall the loads (measured with
// the output pool, 1M points: 5-9% faster than into L1, with windows of 16 and of 32 points;
// into L3 alike, non-temporal slower).
template <typename T, bool Write>
inline void prefetch_row(std::initializer_list<const T*> tables, idx_t row, idx_t width) {
  constexpr idx_t kLine = 64 / sizeof(T);
  for (const T* table : tables) {
    for (idx_t c = 0; c < width; c += kLine) {
      __builtin_prefetch(table + row * width + c, Write, Write ? 3 : 2);
    }
  }
}

// Loads the window's rows, each [H, C] row of the tables read whole (contiguous, so the
// hardware prefetcher streams consecutive rows), into the per-head blocks (queries times scale,
// keys, values; the backward also the output gradients), zeroes the key and value rows from n to
// np and transposes the keys (the backward also the values) per head.
template <typename T>
void load_window(const Problem<T>& P, Buffers<T>& B, const T* dout, idx_t start, idx_t n) {
  const idx_t H = P.H, C = P.C, Cv = P.Cv, np = B.np, s = B.s;
  for (idx_t i = 0; i < n; ++i) {
    if (P.index != nullptr && start + i + kAhead < P.ptr[P.W]) {
      const idx_t ahead = P.index[start + i + kAhead];
      prefetch_row<T, false>({P.q, P.k}, ahead, H * C);
      prefetch_row<T, false>({P.v}, ahead, H * Cv);
      if (dout != nullptr) prefetch_row<T, false>({dout}, ahead, H * Cv);
    }
    const T* __restrict q = P.q + B.rows[i] * H * C;
    const T* __restrict k = P.k + B.rows[i] * H * C;
    const T* __restrict v = P.v + B.rows[i] * H * Cv;
    for (idx_t h = 0; h < H; ++h) {
      T* __restrict qs = B.qs.data() + (h * s + i) * C;
#pragma omp simd
      for (idx_t c = 0; c < C; ++c) qs[c] = q[h * C + c] * P.scale;
      copy_row(k + h * C, C, B.ks.data() + (h * np + i) * C);
      copy_row(v + h * Cv, Cv, B.vs.data() + (h * np + i) * Cv);
    }
    if (dout != nullptr) copy_row(dout + B.rows[i] * H * Cv, H * Cv, B.dout.data() + i * H * Cv);
  }
  for (idx_t h = 0; h < H; ++h) {
    std::fill(B.ks.data() + (h * np + n) * C, B.ks.data() + (h + 1) * np * C, T(0));
    transpose(B.ks.data() + h * np * C, C, np, C, B.kt.data() + h * C * np, np);
    if (dout == nullptr) continue;
    std::fill(B.vs.data() + (h * np + n) * Cv, B.vs.data() + (h + 1) * np * Cv, T(0));
    transpose(B.vs.data() + h * np * Cv, Cv, np, Cv, B.vt.data() + h * Cv * np, np);
  }
}

// Writes the window's product rows ([n, H, width]) to their table rows, head h of row i times
// mult[h * s + i] when mult is given.
template <typename T>
inline void store_window(const Problem<T>& P, const Buffers<T>& B, idx_t n, idx_t width,
                         const std::vector<T>& product, const T* mult, T* table) {
  const idx_t H = P.H, row = H * width;
  for (idx_t i = 0; i < n; ++i) {
    if (P.index != nullptr && i + kAhead < n) {
      prefetch_row<T, true>({table}, B.rows[i + kAhead], row);
    }
    const T* __restrict src = product.data() + i * row;
    T* __restrict dst = table + B.rows[i] * row;
    if (mult == nullptr) {
      copy_row(src, row, dst);
      continue;
    }
    for (idx_t h = 0; h < H; ++h) {
      const T m = mult[h * B.s + i];
#pragma omp simd
      for (idx_t c = 0; c < width; ++c) dst[h * width + c] = m * src[h * width + c];
    }
  }
}

// max_j row[j] over np entries, a multiple of the vector lanes.
template <typename T>
inline T max_row(const T* __restrict row, idx_t np) {
  constexpr idx_t V = 32 / sizeof(T);
  Vec<T> acc = load_vec(row);
  for (idx_t j = V; j < np; j += V) {
    const Vec<T> x = load_vec(row + j);
    acc = acc > x ? acc : x;
  }
  T m = acc[0];
  for (idx_t u = 1; u < V; ++u) m = std::max(m, acc[u]);
  return m;
}

// Sets a score row's padding (entries n to np, past the window) to -inf, so that the row can be
// reduced and exponentiated over whole vectors (its exponentials are 0).
template <typename T>
inline void pad_row(T* __restrict row, idx_t n, idx_t np) {
  for (idx_t j = n; j < np; ++j) row[j] = -std::numeric_limits<T>::infinity();
}

// exp(row - shift) in place over np entries (a multiple of the vector lanes, padded by
// pad_row); returns the sum.
template <typename T>
inline T exp_row(T* __restrict row, idx_t np, T shift) {
#pragma omp simd
  for (idx_t j = 0; j < np; ++j) row[j] = exp_of<T>(row[j] - shift);
  return sum_row<T>(row, nullptr, np);
}

// Per head: S = (scale Q) K^T, P = exp(S - max) row by row, O = P V / rowsum.
template <typename T>
void forward_window(const Problem<T>& P, Buffers<T>& B, idx_t w, T* out, T* lse) {
  const idx_t start = P.ptr[w], n = P.ptr[w + 1] - start, H = P.H, C = P.C, Cv = P.Cv;
  const idx_t np = B.np, s = B.s;
  if (n <= 0) return;
  for (idx_t i = 0; i < n; ++i) B.rows[i] = P.row(start + i);
  load_window<T>(P, B, nullptr, start, n);
  for (idx_t h = 0; h < H; ++h) {
    small_matmul<T>(B.qs.data() + h * s * C, C, B.kt.data() + h * C * np, np, C, B.p.data(), np,
                    n, np, T(1));
    for (idx_t i = 0; i < n; ++i) {
      T* __restrict row = B.p.data() + i * np;
      pad_row(row, n, np);
      const T m = max_row(row, np);
      const T sum = exp_row(row, np, m);
      lse[(start + i) * H + h] = m + std::log(sum);
      B.inv[h * s + i] = T(1) / sum;
    }
    small_matmul<T>(B.p.data(), np, B.vs.data() + h * np * Cv, Cv, n, B.gv.data() + h * Cv,
                    H * Cv, n, Cv, T(1));
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
// for the backward); dQ = scale ds K, dK = ds^T (scale Q), dV = P^T dO (the transposes read in
// place).
template <typename T>
void backward_window(const Problem<T>& P, Buffers<T>& B, const Grads<T>& G, idx_t w) {
  const idx_t start = P.ptr[w], n = P.ptr[w + 1] - start, H = P.H, C = P.C, Cv = P.Cv;
  const idx_t np = B.np, s = B.s;
  if (n <= 0) return;
  for (idx_t i = 0; i < n; ++i) B.rows[i] = P.row(start + i);
  load_window(P, B, G.dout, start, n);
  for (idx_t h = 0; h < H; ++h) {
    const T* qs = B.qs.data() + h * s * C;
    const T* dout = B.dout.data() + h * Cv;  // rows of stride H * Cv
    small_matmul<T>(qs, C, B.kt.data() + h * C * np, np, C, B.p.data(), np, n, np, T(1));
    small_matmul<T>(dout, H * Cv, B.vt.data() + h * Cv * np, np, Cv, B.ds.data(), np, n, np,
                    T(1));
    for (idx_t i = 0; i < n; ++i) {
      T* __restrict p = B.p.data() + i * np;
      T* __restrict ds = B.ds.data() + i * np;
      pad_row(p, n, np);
      exp_row(p, np, G.lse[(start + i) * H + h]);
      const T d = sum_row<T>(p, ds, np);
#pragma omp simd
      for (idx_t j = 0; j < np; ++j) ds[j] = p[j] * (ds[j] - d);
    }
    small_matmul<T>(B.ds.data(), np, B.ks.data() + h * np * C, C, n, B.gq.data() + h * C, H * C,
                    n, C, P.scale);
    small_matmul<T, true>(B.ds.data(), np, qs, C, n, B.gk.data() + h * C, H * C, n, C, T(1));
    small_matmul<T, true>(B.p.data(), np, dout, H * Cv, n, B.gv.data() + h * Cv, H * Cv, n, Cv,
                          T(1));
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
  // windows from 0, in order, covering the index exactly (every output row is then written once
  // or zeroed; outputs may come from the output pool, whose blocks hold old data)
  const int64_t W = ptr.numel() - 1, *offsets = ptr.data_ptr<int64_t>();
  TORCH_CHECK(offsets[0] == 0, "ptr must start at 0");
  for (int64_t w = 0; w < W; ++w) {
    TORCH_CHECK(offsets[w] <= offsets[w + 1], "ptr must be non-decreasing");
  }
  const bool indexed = index.defined() && index.numel() > 0;
  TORCH_CHECK(indexed ? offsets[W] == index.numel() : offsets[W] <= q.size(0),
              "ptr[-1] must be the length of index (without one: at most the rows)");
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
  gtlib::OutputPool& pool = gtlib::output_pool();
  at::Tensor out = pool.empty_like(v);
  at::Tensor lse = pool.empty({L, q.size(1)}, q.options());
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
  gtlib::OutputPool& pool = gtlib::output_pool();
  at::Tensor dq = pool.empty_like(q), dk = pool.empty_like(k), dv = pool.empty_like(v);
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
  gtlib::def_pool_functions(m);
  m.def("forward", &forward, "window attention forward: (out, lse)", pybind11::arg("query"),
        pybind11::arg("key"), pybind11::arg("value"), pybind11::arg("ptr"),
        pybind11::arg("index"), pybind11::arg("scale"));
  m.def("backward", &backward, "window attention backward: grads of (query, key, value)",
        pybind11::arg("grad_out"), pybind11::arg("query"), pybind11::arg("key"),
        pybind11::arg("value"), pybind11::arg("lse"), pybind11::arg("ptr"),
        pybind11::arg("index"), pybind11::arg("scale"));
  m.def("num_threads", &num_threads, "threads a call uses (at::get_num_threads)");
}
