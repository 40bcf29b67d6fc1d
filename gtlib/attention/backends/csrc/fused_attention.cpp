// Fused CPU kernel of gtlib's sparse attention: softmax attention over a CSR sparsity pattern.
//
// For receiver i, head h and its senders j (edges e, receiver-sorted):
//   dot:       s_e = scale * q_i . (k_j + ek_e)
//   additive:  s_e = scale * att_h . leaky_relu(q_i + k_j + ek_e)
//   s_e += bias_e;  w_e = softmax over the receiver's edges;  o_i = sum_e w_e (v_j + ev_e)
//
// The work is a few sweeps over the edges, each gathering rows of ONE node table (so that the
// table, not two, competes for the last-level cache), parallel over rows of the pattern (OpenMP,
// chunks of balanced edge counts; sender sweeps use the transposed CSR, so nothing is accumulated
// atomically). Per-edge state is [E, H] at most; nothing of size E x H x C is allocated except
// the requested per-edge gradients.
//   forward   F1 receivers x key rows:    scores, softmax -> weights w [E, H], lse [N_dst, H]
//             F2 receivers x value rows:  o_i
//   backward  B1a receivers x value rows: ds_e = w_e (dO_i . (v_j + ev_e) - delta_i) with
//                                         delta_i = sum_e w_e dO_i . (v_j + ev_e) (= dO_i . o_i,
//                                         so o is not kept), grad value_edge = w_e dO_i
//             B1b receivers x key rows:   grads of query, key_edge, att (from ds)
//             B2a senders x dO rows:      grad value_j = sum w_e dO_i
//             B2b senders x query rows:   grad key_j = sum ds_e scale q_i (additive: via the
//                                         pre-activation)
//           run in the order B2a, B1a + B1b, B2b: B2a is the last reader of w, so ds may be
//           written over w (the caller's choice) and the backward allocates no [E, H] block.
// When key and value are one table (GATv2's x_l), F1 + F2 and B1a + B1b each run as one sweep,
// the second body of a receiver reading the rows the first has just cached.
// A receiver without senders, or whose scores are all -inf, gets weights 0, output 0 and
// lse = +inf. float32 uses a vectorized exp and AVX2 head reductions when compiled for them.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GTLIB_AVX2 1
#else
#define GTLIB_AVX2 0
#endif
#include <torch/csrc/utils/pybind.h>

#include "fast_exp.h"
#include "output_pool.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using gtlib::exp_of;
using gtlib::fast_exp;
using idx_t = int64_t;

// Work (edges + rows) per chunk of rows; the chunking depends on the pattern only, so results
// (including reductions over chunks) do not depend on the number of threads.
constexpr double kChunkWork = 16384.0;
constexpr idx_t kMaxChunks = 1 << 16;
// Edges ahead whose rows are prefetched (measured: 6 to 24 alike, 2 and 4 slower).
constexpr idx_t kPrefetch = 8;

template <typename T>
struct Problem {
  const T* q = nullptr;     // [N_dst, H, C]
  const T* k = nullptr;     // [N_src, H, C]
  const T* v = nullptr;     // [N_src, H, Cv]
  const T* ek = nullptr;    // [E, H, C] or null
  const T* ev = nullptr;    // [E, H, Cv] or null
  const T* bias = nullptr;  // [E, H] or null
  const T* att = nullptr;   // [H, C] (additive) or null
  const idx_t* ptr = nullptr;  // [N_dst + 1]
  const idx_t* col = nullptr;  // [E]
  idx_t n_dst = 0, n_src = 0, n_edges = 0, heads = 0, C = 0, Cv = 0;
  bool additive = false;
  T slope = 0, scale = 1;
};

// Per-thread work space.
template <typename T>
struct Scratch {
  std::vector<T> acc;        // [H * Cv]
  std::vector<T> acc_k;      // [H * C]
  std::vector<T> m, l;       // [H]
  std::vector<T> rep, racc;  // [8 H]
  std::vector<T> dots;       // [deg, H] of one receiver (B1a)
};

inline void prefetch_row(const void* p, idx_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (idx_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 1);
}

// Boundaries splitting rows [0, rows) into `chunks` ranges of about equal cost ptr + row.
std::vector<idx_t> balanced_bounds(const idx_t* ptr, idx_t rows, int chunks) {
  std::vector<idx_t> bounds(chunks + 1, rows);
  bounds[0] = 0;
  const double total = static_cast<double>(ptr[rows] - ptr[0]) + static_cast<double>(rows);
  for (int c = 1; c < chunks; ++c) {
    const double target = total * c / chunks;
    idx_t lo = bounds[c - 1], hi = rows;
    while (lo < hi) {
      const idx_t mid = lo + (hi - lo) / 2;
      if (static_cast<double>(ptr[mid] - ptr[0]) + static_cast<double>(mid) < target) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    bounds[c] = lo;
  }
  return bounds;
}

// The chunks of rows [0, rows) of a CSR: balanced work, a count that depends on the pattern only.
std::vector<idx_t> row_chunks(const idx_t* ptr, idx_t rows) {
  if (rows <= 0) return {0, 0};
  const double work = static_cast<double>(ptr[rows] - ptr[0]) + static_cast<double>(rows);
  const idx_t wanted = static_cast<idx_t>(std::ceil(work / kChunkWork));
  const int chunks = static_cast<int>(std::clamp<idx_t>(wanted, 1, std::min(rows, kMaxChunks)));
  return balanced_bounds(ptr, rows, chunks);
}

// Runs body(begin, end, thread, chunk) over the chunks of `bounds` (see row_chunks), in parallel
// (dynamic schedule) when there are several; `thread` < threads indexes per-thread scratch.
template <typename Body>
void for_chunks(const std::vector<idx_t>& bounds, int threads, const Body& body) {
  const int chunks = static_cast<int>(bounds.size()) - 1;
  if (threads <= 1 || chunks <= 1 || omp_in_parallel()) {
    for (int c = 0; c < chunks; ++c) {
      if (bounds[c] < bounds[c + 1]) body(bounds[c], bounds[c + 1], 0, c);
    }
    return;
  }
#pragma omp parallel num_threads(std::min(threads, chunks))
  {
    const int tid = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
    for (int c = 0; c < chunks; ++c) {
      if (bounds[c] < bounds[c + 1]) body(bounds[c], bounds[c + 1], tid, c);
    }
  }
}

template <typename Body>
void for_rows(const idx_t* ptr, idx_t rows, int threads, const Body& body) {
  for_chunks(row_chunks(ptr, rows), threads,
             [&](idx_t begin, idx_t end, int tid, int) { body(begin, end, tid); });
}

int num_threads() { return std::max(1, at::get_num_threads()); }

// ----------------------------------------------------------------------------- score helpers
// a . (b + add) over one head's N channels, add optional (N > 0 fixes the count at compile time):
// the dot score q_i . (k_j + ek_e) and dO_i . (v_j + ev_e).
template <typename T, int N>
inline T head_dot(const T* __restrict a, const T* __restrict b, const T* __restrict add,
                  idx_t n_rt) {
  const idx_t n = N > 0 ? N : n_rt;
  T s = 0;
  if (add) {
#pragma omp simd reduction(+ : s)
    for (idx_t c = 0; c < n; ++c) s += a[c] * (b[c] + add[c]);
  } else {
#pragma omp simd reduction(+ : s)
    for (idx_t c = 0; c < n; ++c) s += a[c] * b[c];
  }
  return s;
}

// Score of one head before scale and bias. CK > 0 fixes the channel count at compile time.
template <typename T, int CK, bool ADD>
inline T head_score(const T* __restrict qh, const T* __restrict kh, const T* __restrict ekh,
                    const T* __restrict atth, idx_t C_rt, T slope) {
  if constexpr (!ADD) return head_dot<T, CK>(qh, kh, ekh, C_rt);
  const idx_t C = CK > 0 ? CK : C_rt;
  T s = 0;
  if (ekh) {
#pragma omp simd reduction(+ : s)
    for (idx_t c = 0; c < C; ++c) {
      const T z = qh[c] + kh[c] + ekh[c];
      s += atth[c] * (z > T(0) ? z : z * slope);
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (idx_t c = 0; c < C; ++c) {
      const T z = qh[c] + kh[c];
      s += atth[c] * (z > T(0) ? z : z * slope);
    }
  }
  return s;
}

#if GTLIB_AVX2
// [sum(a0), sum(a1), sum(a2), sum(a3)]
inline __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 r = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
}

// Lanes whose sum is a . (b + b2) over N channels (N a multiple of 8; b2 may be null).
template <int N>
inline __m256 dot_lanes(const float* a, const float* b, const float* b2) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (int c = 0; c < N; c += 8) {
    __m256 y = _mm256_loadu_ps(b + c);
    if (b2) y = _mm256_add_ps(y, _mm256_loadu_ps(b2 + c));
    if ((c / 8) % 2 == 0) {
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), y, acc0);
    } else {
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), y, acc1);
    }
  }
  return _mm256_add_ps(acc0, acc1);
}

// Lanes whose sum is att . leaky_relu(q + k + ek) over N channels.
template <int N>
inline __m256 additive_lanes(const float* q, const float* k, const float* ek, const float* att,
                             __m256 slope) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const __m256 zero = _mm256_setzero_ps();
  for (int c = 0; c < N; c += 8) {
    __m256 z = _mm256_add_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(k + c));
    if (ek) z = _mm256_add_ps(z, _mm256_loadu_ps(ek + c));
    const __m256 act = _mm256_blendv_ps(_mm256_mul_ps(z, slope), z,
                                        _mm256_cmp_ps(z, zero, _CMP_GT_OQ));
    if ((c / 8) % 2 == 0) {
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(att + c), act, acc0);
    } else {
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(att + c), act, acc1);
    }
  }
  return _mm256_add_ps(acc0, acc1);
}
#endif

// Scores of all heads of one edge: out[h] = scale * score_h + bias[e, h].
template <typename T, int CK, bool ADD>
inline void edge_scores(const Problem<T>& P, const T* __restrict qi, const T* __restrict kj,
                        idx_t e, T* __restrict out) {
  const idx_t H = P.heads;
  const idx_t C = CK > 0 ? CK : P.C;
  const T* __restrict ekj = P.ek ? P.ek + e * H * C : nullptr;
  const T* __restrict bias = P.bias ? P.bias + e * H : nullptr;
  idx_t h = 0;
#if GTLIB_AVX2
  if constexpr (std::is_same_v<T, float> && CK > 0 && CK % 8 == 0) {
    const __m128 scale = _mm_set1_ps(P.scale);
    const __m256 slope = _mm256_set1_ps(P.slope);
    for (; h + 4 <= H; h += 4) {
      __m256 lanes[4];
      for (int u = 0; u < 4; ++u) {
        const idx_t o = (h + u) * C;
        if constexpr (ADD) {
          lanes[u] = additive_lanes<CK>(qi + o, kj + o, ekj ? ekj + o : nullptr, P.att + o, slope);
        } else {
          lanes[u] = dot_lanes<CK>(qi + o, kj + o, ekj ? ekj + o : nullptr);
        }
      }
      __m128 s = _mm_mul_ps(reduce4(lanes[0], lanes[1], lanes[2], lanes[3]), scale);
      if (bias) s = _mm_add_ps(s, _mm_loadu_ps(bias + h));
      _mm_storeu_ps(out + h, s);
    }
  }
#endif
  for (; h < H; ++h) {
    T s = head_score<T, CK, ADD>(qi + h * C, kj + h * C, ekj ? ekj + h * C : nullptr,
                                 ADD ? P.att + h * C : nullptr, C, P.slope) *
          P.scale;
    if (bias) s += bias[h];
    out[h] = s;
  }
}

// out[h] = dO_h . (v_j + ev_e) for all heads of one edge.
template <typename T, int CV>
inline void edge_value_dots(const T* __restrict gi, const T* __restrict vj,
                            const T* __restrict evj, idx_t H, idx_t Cv_rt, T* __restrict out) {
  const idx_t Cv = CV > 0 ? CV : Cv_rt;
  idx_t h = 0;
#if GTLIB_AVX2
  if constexpr (std::is_same_v<T, float> && CV > 0 && CV % 8 == 0) {
    for (; h + 4 <= H; h += 4) {
      __m256 lanes[4];
      for (int u = 0; u < 4; ++u) {
        const idx_t o = (h + u) * Cv;
        lanes[u] = dot_lanes<CV>(gi + o, vj + o, evj ? evj + o : nullptr);
      }
      _mm_storeu_ps(out + h, reduce4(lanes[0], lanes[1], lanes[2], lanes[3]));
    }
  }
#endif
  for (; h < H; ++h) {
    out[h] = head_dot<T, CV>(gi + h * Cv, vj + h * Cv, evj ? evj + h * Cv : nullptr, Cv);
  }
}

// For the additive score, the gradient wrt the pre-activation z = q + k + ek of one head,
// gz[c] = gs * att[c] * leaky_relu'(z[c]): added into acc, stored into store, and
// gs * leaky_relu(z[c]) added into gatt (each when not null). The null checks are template
// arguments: conditional (masked) stores inside the vector loop are slow.
template <typename T, int CK, bool EK, bool ACC, bool STORE, bool GATT>
inline void additive_pre_grad_loop(const T* __restrict qh, const T* __restrict kh,
                                   const T* __restrict ekh, const T* __restrict atth, T gs,
                                   T slope, idx_t C_rt, T* __restrict acc, T* __restrict store,
                                   T* __restrict gatt) {
  const idx_t C = CK > 0 ? CK : C_rt;
#pragma omp simd
  for (idx_t c = 0; c < C; ++c) {
    T z = qh[c] + kh[c];
    if constexpr (EK) z += ekh[c];
    const T pos = z > T(0) ? T(1) : slope;
    const T gz = gs * atth[c] * pos;
    if constexpr (ACC) acc[c] += gz;
    if constexpr (STORE) store[c] = gz;
    if constexpr (GATT) gatt[c] += gs * z * pos;
  }
}

template <typename T, int CK>
inline void additive_pre_grad(const T* __restrict qh, const T* __restrict kh,
                              const T* __restrict ekh, const T* __restrict atth, T gs, T slope,
                              idx_t C_rt, T* __restrict acc, T* __restrict store,
                              T* __restrict gatt) {
  const int which = (ekh ? 1 : 0) | (acc ? 2 : 0) | (store ? 4 : 0) | (gatt ? 8 : 0);
  switch (which) {
#define GTLIB_PRE_GRAD_CASE(W)                                                            \
  case W:                                                                                 \
    return additive_pre_grad_loop<T, CK, (W & 1) != 0, (W & 2) != 0, (W & 4) != 0,        \
                                  (W & 8) != 0>(qh, kh, ekh, atth, gs, slope, C_rt, acc, \
                                                store, gatt);
    GTLIB_PRE_GRAD_CASE(0)
    GTLIB_PRE_GRAD_CASE(1)
    GTLIB_PRE_GRAD_CASE(2)
    GTLIB_PRE_GRAD_CASE(3)
    GTLIB_PRE_GRAD_CASE(4)
    GTLIB_PRE_GRAD_CASE(5)
    GTLIB_PRE_GRAD_CASE(6)
    GTLIB_PRE_GRAD_CASE(7)
    GTLIB_PRE_GRAD_CASE(8)
    GTLIB_PRE_GRAD_CASE(9)
    GTLIB_PRE_GRAD_CASE(10)
    GTLIB_PRE_GRAD_CASE(11)
    GTLIB_PRE_GRAD_CASE(12)
    GTLIB_PRE_GRAD_CASE(13)
    GTLIB_PRE_GRAD_CASE(14)
    GTLIB_PRE_GRAD_CASE(15)
#undef GTLIB_PRE_GRAD_CASE
    default:
      return;
  }
}

// ----------------------------------------------------------------------------- row softmax
// Softmax over the edges of one receiver, in place on its [deg, H] edge-major scores, with
// m[h] the per-head max. Per-head constants are applied in blocks of 8H elements against a
// repeated pattern so that the loops vectorize for any H. Writes lse[h] (+inf when the receiver
// has no finite score, whose weights are then 0).
template <typename T>
void softmax_rows(T* __restrict w, idx_t deg, idx_t H, const T* __restrict m, Scratch<T>& S,
                  T* __restrict lse) {
  const idx_t L = 8 * H, n = deg * H;
  S.rep.resize(L);
  S.racc.resize(L);
  S.l.resize(H);
  T* __restrict rep = S.rep.data();
  T* __restrict racc = S.racc.data();
  T* __restrict l = S.l.data();
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (idx_t x = 0; x < L; ++x) {
    const T mh = m[x % H];
    rep[x] = mh == neg_inf ? T(0) : mh;
    racc[x] = T(0);
  }
  idx_t b = 0;
  for (; b + L <= n; b += L) {
    T* __restrict wb = w + b;
    if constexpr (std::is_same_v<T, float>) {
#pragma omp simd
      for (idx_t x = 0; x < L; ++x) {
        const float p = fast_exp(wb[x] - rep[x]);
        wb[x] = p;
        racc[x] += p;
      }
    } else {
      for (idx_t x = 0; x < L; ++x) {
        const T p = std::exp(wb[x] - rep[x]);
        wb[x] = p;
        racc[x] += p;
      }
    }
  }
  for (idx_t x = 0; b + x < n; ++x) {
    const T p = exp_of(w[b + x] - rep[x]);
    w[b + x] = p;
    racc[x] += p;
  }
  for (idx_t h = 0; h < H; ++h) l[h] = T(0);
  for (idx_t x = 0; x < L; ++x) l[x % H] += racc[x];
  for (idx_t h = 0; h < H; ++h) {
    lse[h] = l[h] > T(0) ? rep[h] + std::log(l[h]) : std::numeric_limits<T>::infinity();
    l[h] = l[h] > T(0) ? T(1) / l[h] : T(0);
  }
  for (idx_t x = 0; x < L; ++x) rep[x] = l[x % H];
  for (b = 0; b + L <= n; b += L) {
    T* __restrict wb = w + b;
#pragma omp simd
    for (idx_t x = 0; x < L; ++x) wb[x] *= rep[x];
  }
  for (idx_t x = 0; b + x < n; ++x) w[b + x] *= rep[x];
}

// ----------------------------------------------------------------------------- forward
// Per-row bodies of the sweeps. Each sweep runs one body over the rows of a CSR (split into
// chunks that depend on the pattern only); when key and value are the same table (GATv2: both
// are x_l[j]), the receiver sweeps run two bodies per receiver back to back (F1 + F2, B1a + B1b),
// so that the second reads the sender rows the first has just brought into the cache: one gather
// of each row instead of two.

// F1 body, receiver i reading the senders' key rows: scores, softmax -> weights w [E, H]
// (receiver-sorted) and lse [N_dst, H].
template <typename T, int CK, bool ADD>
inline void score_row(const Problem<T>& P, idx_t i, T* weights, T* lse, Scratch<T>& S) {
  const idx_t H = P.heads;
  const idx_t C = CK > 0 ? CK : P.C;
  const idx_t rowk = H * C;
  const idx_t E = P.n_edges;
  const idx_t e0 = P.ptr[i], e1 = P.ptr[i + 1];
  const T* __restrict qi = P.q + i * rowk;
  T* __restrict w = weights + e0 * H;
  T* __restrict m = S.m.data();
  for (idx_t h = 0; h < H; ++h) m[h] = -std::numeric_limits<T>::infinity();
  for (idx_t e = e0; e < e1; ++e) {
    if (e + kPrefetch < E) {
      prefetch_row(P.k + P.col[e + kPrefetch] * rowk, rowk * sizeof(T));
      if (P.ek) prefetch_row(P.ek + (e + kPrefetch) * rowk, rowk * sizeof(T));
    }
    T* __restrict we = w + (e - e0) * H;
    edge_scores<T, CK, ADD>(P, qi, P.k + P.col[e] * rowk, e, we);
    for (idx_t h = 0; h < H; ++h) m[h] = we[h] > m[h] ? we[h] : m[h];
  }
  softmax_rows(w, e1 - e0, H, m, S, lse + i * H);
}

// Weighted sums of gathered rows over a CSR (F2 and B2a): for row r of `ptr`,
//   out_r = sum_{t in [ptr[r], ptr[r + 1])} w_e (table[index[t]] + add_e),  e = order[t]
// per head, where e is the receiver-sorted edge of CSR entry t (t itself unless ORDERED) and
// rows are [H, Cv].
template <typename T>
struct GatheredRows {
  const idx_t* ptr = nullptr;    // [rows + 1] the CSR being swept
  idx_t rows = 0;
  const idx_t* index = nullptr;  // [E] the table row each entry gathers
  const idx_t* order = nullptr;  // [E] the receiver-sorted edge of each entry (ORDERED only)
  const T* w = nullptr;          // [E, H] weights, receiver-sorted
  const T* table = nullptr;      // [*, H, Cv] the gathered rows
  const T* add = nullptr;        // [E, H, Cv] per-edge addend, receiver-sorted, or null
  idx_t ld = -1;                 // row stride of table (elements; -1: H * Cv, contiguous)
};

template <typename T, int CV, bool ORDERED>
inline void weighted_row(const Problem<T>& P, const GatheredRows<T>& A, idx_t r, T* acc,
                         T* out) {
  const idx_t H = P.heads;
  const idx_t Cv = CV > 0 ? CV : P.Cv;
  const idx_t rowv = H * Cv;
  const idx_t E = P.n_edges;
  const idx_t ld = A.ld < 0 ? rowv : A.ld;
  std::fill(acc, acc + rowv, T(0));
  for (idx_t t = A.ptr[r]; t < A.ptr[r + 1]; ++t) {
    if (t + kPrefetch < E) {
      const idx_t ahead = ORDERED ? A.order[t + kPrefetch] : t + kPrefetch;
      prefetch_row(A.table + A.index[t + kPrefetch] * ld, rowv * sizeof(T));
      if (ORDERED) __builtin_prefetch(A.w + ahead * H, 0, 1);
      if (A.add) prefetch_row(A.add + ahead * rowv, rowv * sizeof(T));
    }
    const idx_t e = ORDERED ? A.order[t] : t;
    const T* __restrict we = A.w + e * H;
    const T* __restrict xj = A.table + A.index[t] * ld;
    const T* __restrict ae = A.add ? A.add + e * rowv : nullptr;
    for (idx_t h = 0; h < H; ++h) {
      const T p = we[h];
      T* __restrict acch = acc + h * Cv;
      const T* __restrict xh = xj + h * Cv;
      if (ae) {
        const T* __restrict aeh = ae + h * Cv;
#pragma omp simd
        for (idx_t c = 0; c < Cv; ++c) acch[c] += p * (xh[c] + aeh[c]);
      } else {
#pragma omp simd
        for (idx_t c = 0; c < Cv; ++c) acch[c] += p * xh[c];
      }
    }
  }
  std::memcpy(out + r * rowv, acc, rowv * sizeof(T));
}

template <typename T, int CV, bool ORDERED>
void weighted_row_sums(const Problem<T>& P, const GatheredRows<T>& A, T* out, int threads) {
  const idx_t rowv = P.heads * (CV > 0 ? CV : P.Cv);
  std::vector<Scratch<T>> scratch(threads);
  for_rows(A.ptr, A.rows, threads, [&](idx_t begin, idx_t end, int tid) {
    Scratch<T>& S = scratch[tid];
    S.acc.resize(rowv);
    for (idx_t r = begin; r < end; ++r) weighted_row<T, CV, ORDERED>(P, A, r, S.acc.data(), out);
  });
}

// The value rows of the forward: o_i = sum_e w_e (v_j + ev_e).
template <typename T>
GatheredRows<T> value_rows(const Problem<T>& P, const T* weights) {
  return {P.ptr, P.n_dst, P.col, nullptr, weights, P.v, P.ev};
}

// ----------------------------------------------------------------------------- forward
// Sweep F1 over receivers (the weights alone).
template <typename T, int CK, int CV, bool ADD>
struct ForwardWeights {
  static void run(const Problem<T>& P, T* weights, T* lse, int threads) {
    std::vector<Scratch<T>> scratch(threads);
    for_rows(P.ptr, P.n_dst, threads, [&](idx_t begin, idx_t end, int tid) {
      Scratch<T>& S = scratch[tid];
      S.m.resize(P.heads);
      for (idx_t i = begin; i < end; ++i) score_row<T, CK, ADD>(P, i, weights, lse, S);
    });
  }
};

// Sweep F2 over receivers, reading the senders' value rows.
template <typename T, int CK, int CV, bool ADD>
struct ForwardValues {
  static void run(const Problem<T>& P, const T* weights, T* out, int threads) {
    weighted_row_sums<T, CV, false>(P, value_rows(P, weights), out, threads);
  }
};

// F1 and F2 in one sweep when key and value are one table.
template <typename T, int CK, int CV, bool ADD>
struct ForwardShared {
  static void run(const Problem<T>& P, T* weights, T* lse, T* out, int threads) {
    const GatheredRows<T> A = value_rows(P, weights);
    const idx_t rowv = P.heads * (CV > 0 ? CV : P.Cv);
    std::vector<Scratch<T>> scratch(threads);
    for_rows(P.ptr, P.n_dst, threads, [&](idx_t begin, idx_t end, int tid) {
      Scratch<T>& S = scratch[tid];
      S.m.resize(P.heads);
      S.acc.resize(rowv);
      for (idx_t i = begin; i < end; ++i) {
        score_row<T, CK, ADD>(P, i, weights, lse, S);
        weighted_row<T, CV, false>(P, A, i, S.acc.data(), out);
      }
    });
  }
};

// ----------------------------------------------------------------------------- backward
template <typename T>
struct Grads {
  const T* dout = nullptr;  // [N_dst, H, Cv] with row stride ld_dout (0: one row, broadcast)
  idx_t ld_dout = 0;
  const T* w = nullptr;     // [E, H] softmax weights of the forward
  T* ds = nullptr;          // [E, H] score gradients (written by B1a, read by B1b and B2b);
                            // may be w itself (each row of w is read before it is overwritten)
  T* q = nullptr;
  T* k = nullptr;
  T* v = nullptr;
  T* ek = nullptr;
  T* ev = nullptr;
  T* att = nullptr;
};

// B1a body, receiver i reading the senders' value rows: ds_e = w_e (dO_i . (v_j + ev_e) -
// delta_i) and the grad of value_edge, w_e dO_i. FlashAttention's delta_i = dO_i . o_i is formed
// as sum_e w_e dO_i . (v_j + ev_e) over the receiver's edges (the same sum, since o_i is
// sum_e w_e (v_j + ev_e)), so the output itself need not be kept for the backward. The dots are
// parked in `dots` ([deg, H]) until delta_i is complete, so ds may overwrite w.
template <typename T, int CK, int CV, bool ADD>
inline void score_grad_row(const Problem<T>& P, const Grads<T>& G, idx_t i, T* delta,
                           std::vector<T>& dots) {
  const idx_t H = P.heads;
  const idx_t Cv = CV > 0 ? CV : P.Cv;
  const idx_t rowv = H * Cv;
  const idx_t E = P.n_edges;
  const idx_t first = P.ptr[i], deg = P.ptr[i + 1] - first;
  const T* __restrict gi = G.dout + i * G.ld_dout;
  for (idx_t h = 0; h < H; ++h) delta[h] = T(0);
  if (G.ds && static_cast<idx_t>(dots.size()) < deg * H) dots.resize(deg * H);
  for (idx_t e = first; e < first + deg; ++e) {
    const T* __restrict we = G.w + e * H;
    if (G.ev) {
      for (idx_t h = 0; h < H; ++h) {
        const T p = we[h];
        const T* __restrict gh = gi + h * Cv;
        T* __restrict o = G.ev + e * rowv + h * Cv;
#pragma omp simd
        for (idx_t c = 0; c < Cv; ++c) o[c] = p * gh[c];
      }
    }
    if (!G.ds) continue;
    if (e + kPrefetch < E) {
      prefetch_row(P.v + P.col[e + kPrefetch] * rowv, rowv * sizeof(T));
      if (P.ev) prefetch_row(P.ev + (e + kPrefetch) * rowv, rowv * sizeof(T));
    }
    T* __restrict de = dots.data() + (e - first) * H;
    edge_value_dots<T, CV>(gi, P.v + P.col[e] * rowv, P.ev ? P.ev + e * rowv : nullptr, H, Cv,
                           de);
    for (idx_t h = 0; h < H; ++h) delta[h] += we[h] * de[h];
  }
  if (!G.ds) return;
  for (idx_t e = first; e < first + deg; ++e) {
    const T* we = G.w + e * H;
    const T* __restrict de = dots.data() + (e - first) * H;
    T* dse = G.ds + e * H;
    for (idx_t h = 0; h < H; ++h) dse[h] = we[h] * (de[h] - delta[h]);
  }
}

// B1b body, receiver i reading the senders' key rows: grads of query (into gq, stored), key_edge
// and att (added into gatt when not null).
template <typename T, int CK, int CV, bool ADD>
inline void query_grad_row(const Problem<T>& P, const Grads<T>& G, idx_t i, T* gq, T* gatt) {
  const idx_t H = P.heads;
  const idx_t C = CK > 0 ? CK : P.C;
  const idx_t rowk = H * C;
  const idx_t E = P.n_edges;
  const T scale = P.scale, slope = P.slope;
  const bool read_keys = G.q || ADD;
  const T* __restrict qi = P.q + i * rowk;
  if (G.q) std::fill(gq, gq + rowk, T(0));
  for (idx_t e = P.ptr[i]; e < P.ptr[i + 1]; ++e) {
    if (read_keys && e + kPrefetch < E) {
      prefetch_row(P.k + P.col[e + kPrefetch] * rowk, rowk * sizeof(T));
      if (P.ek) prefetch_row(P.ek + (e + kPrefetch) * rowk, rowk * sizeof(T));
    }
    const T* __restrict kj = P.k + P.col[e] * rowk;
    const T* __restrict ekj = P.ek ? P.ek + e * rowk : nullptr;
    for (idx_t h = 0; h < H; ++h) {
      const T gs = G.ds[e * H + h] * scale;
      const T* __restrict qh = qi + h * C;
      const T* __restrict kh = kj + h * C;
      const T* __restrict ekh = ekj ? ekj + h * C : nullptr;
      if constexpr (ADD) {
        additive_pre_grad<T, CK>(qh, kh, ekh, P.att + h * C, gs, slope, C,
                                 G.q ? gq + h * C : nullptr,
                                 G.ek ? G.ek + e * rowk + h * C : nullptr,
                                 gatt ? gatt + h * C : nullptr);
      } else {
        if (G.q) {
          T* __restrict gqh = gq + h * C;
          if (ekh) {
#pragma omp simd
            for (idx_t c = 0; c < C; ++c) gqh[c] += gs * (kh[c] + ekh[c]);
          } else {
#pragma omp simd
            for (idx_t c = 0; c < C; ++c) gqh[c] += gs * kh[c];
          }
        }
        if (G.ek) {
          T* __restrict o = G.ek + e * rowk + h * C;
#pragma omp simd
          for (idx_t c = 0; c < C; ++c) o[c] = gs * qh[c];
        }
      }
    }
  }
  if (G.q) std::memcpy(G.q + i * rowk, gq, rowk * sizeof(T));
}

// The receiver sweeps of the backward: B1a then B1b (SCORES, QUERY), or both per receiver
// (SHARED). The grad of att is one partial sum per chunk, added in chunk order (deterministic).
template <typename T, int CK, int CV, bool ADD>
void receiver_grads(const Problem<T>& P, const Grads<T>& G, int threads, bool scores, bool query,
                    bool shared) {
  const idx_t H = P.heads;
  const idx_t rowk = H * (CK > 0 ? CK : P.C);
  const std::vector<idx_t> bounds = row_chunks(P.ptr, P.n_dst);
  const idx_t chunks = static_cast<idx_t>(bounds.size()) - 1;
  std::vector<T> gatt_chunks(ADD && G.att && query ? chunks * rowk : 0, T(0));
  std::vector<Scratch<T>> scratch(threads);
  auto sweep = [&](bool do_scores, bool do_query) {
    for_chunks(bounds, threads, [&](idx_t begin, idx_t end, int tid, int chunk) {
      Scratch<T>& S = scratch[tid];
      S.l.resize(H);
      S.acc_k.resize(rowk);
      T* gatt = gatt_chunks.empty() ? nullptr : gatt_chunks.data() + chunk * rowk;
      for (idx_t i = begin; i < end; ++i) {
        if (do_scores) score_grad_row<T, CK, CV, ADD>(P, G, i, S.l.data(), S.dots);
        if (do_query) query_grad_row<T, CK, CV, ADD>(P, G, i, S.acc_k.data(), gatt);
      }
    });
  };
  if (shared && scores && query) {
    sweep(true, true);
  } else {
    if (scores) sweep(true, false);
    if (query) sweep(false, true);
  }
  if (!gatt_chunks.empty()) {
    std::fill(G.att, G.att + rowk, T(0));
    for (idx_t chunk = 0; chunk < chunks; ++chunk) {
      for (idx_t c = 0; c < rowk; ++c) G.att[c] += gatt_chunks[chunk * rowk + c];
    }
  }
}

// Sweeps B1a and B1b over receivers (one sweep when key and value are one table).
template <typename T, int CK, int CV, bool ADD>
struct BackwardReceivers {
  static void run(const Problem<T>& P, const Grads<T>& G, int threads, bool scores, bool query,
                  bool shared) {
    receiver_grads<T, CK, CV, ADD>(P, G, threads, scores, query, shared);
  }
};

// The pattern compressed by sender.
template <typename T>
struct Transposed {
  const idx_t* ptr = nullptr;        // [N_src + 1]
  const idx_t* receivers = nullptr;  // [E] sender-sorted
  const idx_t* order = nullptr;      // [E] receiver-sorted position of each sender-sorted edge
};

// Sweep B2a, over senders, reading the receivers' output-gradient rows: grad_v_j = sum w dO_i.
template <typename T, int CK, int CV, bool ADD>
struct BackwardValue {
  static void run(const Problem<T>& P, const Grads<T>& G, const Transposed<T>& TR, int threads) {
    weighted_row_sums<T, CV, true>(
        P, {TR.ptr, P.n_src, TR.receivers, TR.order, G.w, G.dout, nullptr, G.ld_dout}, G.v,
        threads);
  }
};

// Sweep B2b, over senders, reading the receivers' query rows: grad_k_j = sum ds scale q_i
// (additive: the pre-activation gradient).
template <typename T, int CK, int CV, bool ADD>
struct BackwardKey {
  static void run(const Problem<T>& P, const Grads<T>& G, const Transposed<T>& TR, int threads) {
    const idx_t H = P.heads;
    const idx_t C = CK > 0 ? CK : P.C;
    const idx_t rowk = H * C;
    const idx_t E = P.n_edges;
    const T scale = P.scale, slope = P.slope;
    std::vector<Scratch<T>> scratch(threads);
    for_rows(TR.ptr, P.n_src, threads, [&](idx_t begin, idx_t end, int tid) {
      Scratch<T>& S = scratch[tid];
      S.acc_k.resize(rowk);
      T* __restrict gk = S.acc_k.data();
      for (idx_t j = begin; j < end; ++j) {
        const T* __restrict kj = P.k + j * rowk;
        std::fill(gk, gk + rowk, T(0));
        for (idx_t t = TR.ptr[j]; t < TR.ptr[j + 1]; ++t) {
          if (t + kPrefetch < E) {
            const idx_t on = TR.order[t + kPrefetch];
            prefetch_row(P.q + TR.receivers[t + kPrefetch] * rowk, rowk * sizeof(T));
            __builtin_prefetch(G.ds + on * H, 0, 1);
            if (ADD && P.ek) prefetch_row(P.ek + on * rowk, rowk * sizeof(T));
          }
          const T* __restrict qi = P.q + TR.receivers[t] * rowk;
          const idx_t e = TR.order[t];
          const T* __restrict dse = G.ds + e * H;
          for (idx_t h = 0; h < H; ++h) {
            const T gs = dse[h] * scale;
            const T* __restrict qh = qi + h * C;
            if constexpr (ADD) {
              additive_pre_grad<T, CK>(qh, kj + h * C, P.ek ? P.ek + e * rowk + h * C : nullptr,
                                       P.att + h * C, gs, slope, C, gk + h * C, nullptr, nullptr);
            } else {
              T* __restrict gkh = gk + h * C;
#pragma omp simd
              for (idx_t c = 0; c < C; ++c) gkh[c] += gs * qh[c];
            }
          }
        }
        if (G.k == G.v) {  // key and value are one input: its gradient is the sum
          T* __restrict out = G.k + j * rowk;
#pragma omp simd
          for (idx_t c = 0; c < rowk; ++c) out[c] += gk[c];
        } else {
          std::memcpy(G.k + j * rowk, gk, rowk * sizeof(T));
        }
      }
    });
  }
};

// ----------------------------------------------------------------------------- dispatch
template <template <typename, int, int, bool> class K, typename T, typename... A>
void dispatch(const Problem<T>& P, A&&... args) {
  // fixed channel counts for float32 (the fast path); float64 uses the runtime-size loops
  // one score channel (GAT's static score as the additive one) with the usual value widths
  if (std::is_same_v<T, float> && P.C == 1 && P.additive) {
    switch (P.Cv) {
      case 16:
        return K<T, 1, 16, true>::run(P, args...);
      case 32:
        return K<T, 1, 32, true>::run(P, args...);
      case 64:
        return K<T, 1, 64, true>::run(P, args...);
      default:
        break;
    }
  }
  if (std::is_same_v<T, float> && P.C == P.Cv) {
    switch (P.C) {
      case 16:
        return P.additive ? K<T, 16, 16, true>::run(P, args...)
                          : K<T, 16, 16, false>::run(P, args...);
      case 32:
        return P.additive ? K<T, 32, 32, true>::run(P, args...)
                          : K<T, 32, 32, false>::run(P, args...);
      case 64:
        return P.additive ? K<T, 64, 64, true>::run(P, args...)
                          : K<T, 64, 64, false>::run(P, args...);
      default:
        break;
    }
  }
  return P.additive ? K<T, 0, 0, true>::run(P, args...) : K<T, 0, 0, false>::run(P, args...);
}

// ----------------------------------------------------------------------------- checks
void check_float(const at::Tensor& x, const char* name, const at::Tensor& like) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), name, " must have dtype ",
              like.scalar_type(), ", got ", x.scalar_type());
}

void check_shape(const at::Tensor& x, const char* name, std::vector<int64_t> shape) {
  TORCH_CHECK(x.sizes() == at::IntArrayRef(shape), name, " must have shape ",
              at::IntArrayRef(shape), ", got ", x.sizes());
}

void check_index(const at::Tensor& x, const char* name, int64_t size) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kLong && x.is_contiguous() &&
                  x.dim() == 1 && x.size(0) == size,
              name, " must be a contiguous CPU int64 tensor of size ", size);
}

struct Inputs {
  at::Tensor q, k, v, ek, ev, bias, att, ptr, col;
};

template <typename T>
Problem<T> make_problem(const Inputs& in, bool additive, double slope, double scale) {
  Problem<T> P;
  P.q = in.q.data_ptr<T>();
  P.k = in.k.data_ptr<T>();
  P.v = in.v.data_ptr<T>();
  P.ek = in.ek.defined() ? in.ek.data_ptr<T>() : nullptr;
  P.ev = in.ev.defined() ? in.ev.data_ptr<T>() : nullptr;
  P.bias = in.bias.defined() ? in.bias.data_ptr<T>() : nullptr;
  P.att = in.att.defined() ? in.att.data_ptr<T>() : nullptr;
  P.ptr = in.ptr.data_ptr<idx_t>();
  P.col = in.col.data_ptr<idx_t>();
  P.n_dst = in.q.size(0);
  P.n_src = in.k.size(0);
  P.n_edges = in.col.size(0);
  P.heads = in.q.size(1);
  P.C = in.q.size(2);
  P.Cv = in.v.size(2);
  P.additive = additive;
  P.slope = static_cast<T>(slope);
  P.scale = static_cast<T>(scale);
  return P;
}

Inputs check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const std::optional<at::Tensor>& ek, const std::optional<at::Tensor>& ev,
                    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& att,
                    const at::Tensor& ptr, const at::Tensor& col, bool additive) {
  Inputs in{q, k, v, ek.value_or(at::Tensor()), ev.value_or(at::Tensor()),
            bias.value_or(at::Tensor()), att.value_or(at::Tensor()), ptr, col};
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "query must be float32 or float64, got ", q.scalar_type());
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "query, key, value must be 3-D");
  const int64_t nd = q.size(0), ns = k.size(0), H = q.size(1), C = q.size(2), Cv = v.size(2);
  check_float(q, "query", q);
  check_float(k, "key", q);
  check_float(v, "value", q);
  check_shape(k, "key", {ns, H, C});
  check_shape(v, "value", {ns, H, Cv});
  check_index(ptr, "ptr", nd + 1);
  const int64_t E = col.numel();
  check_index(col, "col", E);
  // every edge of one receiver exactly: the sweeps write each output element once (outputs may
  // come from the output pool, whose blocks hold old data)
  const int64_t* offsets = ptr.data_ptr<int64_t>();
  TORCH_CHECK(offsets[0] == 0 && offsets[nd] == E, "ptr must run from 0 to the ", E,
              " edges, got ", offsets[0], " and ", offsets[nd]);
  for (int64_t i = 0; i < nd; ++i) {
    TORCH_CHECK(offsets[i] <= offsets[i + 1], "ptr must be non-decreasing");
  }
  if (in.ek.defined()) {
    check_float(in.ek, "key_edge", q);
    check_shape(in.ek, "key_edge", {E, H, C});
  }
  if (in.ev.defined()) {
    check_float(in.ev, "value_edge", q);
    check_shape(in.ev, "value_edge", {E, H, Cv});
  }
  if (in.bias.defined()) {
    check_float(in.bias, "bias", q);
    check_shape(in.bias, "bias", {E, H});
  }
  TORCH_CHECK(!additive || in.att.defined(), "the additive score needs att [H, C]");
  if (in.att.defined()) {
    check_float(in.att, "att", q);
    check_shape(in.att, "att", {H, C});
  }
  return in;
}

// Whether key and value are one table (GATv2's x_l): the receiver sweeps then read each sender
// row once for both.
bool shared_table(const Inputs& in) {
  return in.k.data_ptr() == in.v.data_ptr() && in.k.sizes() == in.v.sizes();
}

// ----------------------------------------------------------------------------- entry points
// Returns (out [N_dst, H, Cv] or undefined, lse [N_dst, H], weights [E, H]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& ek, const std::optional<at::Tensor>& ev,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& att,
    const at::Tensor& ptr, const at::Tensor& col, bool additive, double slope, double scale,
    bool need_out) {
  const Inputs in = check_inputs(q, k, v, ek, ev, bias, att, ptr, col, additive);
  const int64_t nd = q.size(0), H = q.size(1), Cv = v.size(2), E = col.numel();
  gtlib::OutputPool& pool = gtlib::output_pool();
  at::Tensor out = need_out ? pool.empty({nd, H, Cv}, q.options()) : at::Tensor();
  at::Tensor lse = pool.empty({nd, H}, q.options());
  at::Tensor weights = pool.empty({E, H}, q.options());
  const int threads = num_threads();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gtlib_fused_forward", [&] {
    using T = scalar_t;
    const Problem<T> P = make_problem<T>(in, additive, slope, scale);
    if (need_out && shared_table(in)) {
      dispatch<ForwardShared>(P, weights.data_ptr<T>(), lse.data_ptr<T>(), out.data_ptr<T>(),
                              threads);
    } else {
      dispatch<ForwardWeights>(P, weights.data_ptr<T>(), lse.data_ptr<T>(), threads);
      if (need_out) {
        dispatch<ForwardValues>(P, weights.data_ptr<T>(), out.data_ptr<T>(), threads);
      }
    }
  });
  return {out, lse, weights};
}

// needs: which of (query, key, value, key_edge, value_edge, bias, att) need a gradient.
std::vector<at::Tensor> backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& ek, const std::optional<at::Tensor>& ev,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& att,
    const at::Tensor& ptr, const at::Tensor& col, const std::optional<at::Tensor>& ptr_t,
    const std::optional<at::Tensor>& receivers_t, const std::optional<at::Tensor>& order,
    const at::Tensor& weights, bool additive, double slope, double scale,
    std::vector<bool> needs, bool overwrite_weights, bool key_is_value) {
  TORCH_CHECK(needs.size() == 7, "needs must hold 7 flags");
  const Inputs in = check_inputs(q, k, v, ek, ev, bias, att, ptr, col, additive);
  const int64_t nd = q.size(0), ns = k.size(0), H = q.size(1), Cv = v.size(2), E = col.numel();
  check_shape(grad_out, "grad_out", {nd, H, Cv});
  TORCH_CHECK(grad_out.device().is_cpu() && grad_out.scalar_type() == q.scalar_type(),
              "grad_out must be a CPU tensor of dtype ", q.scalar_type());
  // rows [H, Cv] contiguous, any row stride (0: an expanded gradient, one row read for all)
  TORCH_CHECK(nd == 0 || (grad_out.stride(0) >= 0 && grad_out.select(0, 0).is_contiguous()),
              "grad_out must have contiguous [H, Cv] rows");
  check_float(weights, "weights", q);
  check_shape(weights, "weights", {E, H});
  const bool need_q = needs[0], need_k = needs[1], need_v = needs[2];
  const bool need_ek = needs[3] && in.ek.defined(), need_ev = needs[4] && in.ev.defined();
  const bool need_bias = needs[5] && in.bias.defined(), need_att = needs[6] && additive;
  gtlib::OutputPool& pool = gtlib::output_pool();
  at::Tensor gq = need_q ? pool.empty_like(q) : at::Tensor();
  // key and value one input (the caller's word; same rows checked): one gradient, the sum, B2b
  // adding into B2a's rows and returned as the value's (the key's left undefined)
  const bool merge_kv = key_is_value && need_k && need_v && shared_table(in);
  at::Tensor gk = need_k && !merge_kv ? pool.empty_like(k) : at::Tensor();
  at::Tensor gv = need_v ? pool.empty_like(v) : at::Tensor();
  at::Tensor gek = need_ek ? pool.empty_like(in.ek) : at::Tensor();
  at::Tensor gev = need_ev ? pool.empty_like(in.ev) : at::Tensor();
  at::Tensor gbias = need_bias ? pool.empty_like(in.bias) : at::Tensor();
  at::Tensor gatt = need_att ? pool.empty_like(in.att) : at::Tensor();
  const bool need_ds = need_q || need_k || need_ek || need_bias || need_att;
  // the grad of bias is the score gradient itself; otherwise the score gradients may take the
  // weights' place (the caller's choice: nothing reads these weights afterwards)
  at::Tensor ds;
  if (need_bias) {
    ds = gbias;
  } else if (need_ds) {
    ds = overwrite_weights ? weights : pool.empty({E, H}, q.options());
  }
  TORCH_CHECK(weights.is_contiguous(), "weights must be contiguous");
  if (need_k || need_v) {
    TORCH_CHECK(ptr_t.has_value() && receivers_t.has_value() && order.has_value(),
                "the key and value gradients need the transposed CSR");
    check_index(*ptr_t, "ptr_t", ns + 1);
    check_index(*receivers_t, "receivers_t", E);
    check_index(*order, "order", E);
  }
  const int threads = num_threads();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gtlib_fused_backward", [&] {
    using T = scalar_t;
    const Problem<T> P = make_problem<T>(in, additive, slope, scale);
    Grads<T> G;
    G.dout = grad_out.data_ptr<T>();
    G.ld_dout = grad_out.stride(0);
    G.w = weights.data_ptr<T>();
    G.ds = need_ds ? ds.data_ptr<T>() : nullptr;
    G.q = need_q ? gq.data_ptr<T>() : nullptr;
    G.k = merge_kv ? gv.data_ptr<T>() : (need_k ? gk.data_ptr<T>() : nullptr);
    G.v = need_v ? gv.data_ptr<T>() : nullptr;
    G.ek = need_ek ? gek.data_ptr<T>() : nullptr;
    G.ev = need_ev ? gev.data_ptr<T>() : nullptr;
    G.att = need_att ? gatt.data_ptr<T>() : nullptr;
    Transposed<T> TR;
    if (need_k || need_v) {
      TR.ptr = ptr_t->data_ptr<idx_t>();
      TR.receivers = receivers_t->data_ptr<idx_t>();
      TR.order = order->data_ptr<idx_t>();
    }
    // B2a reads the weights, so it runs before B1a (which may overwrite them with ds)
    if (need_v) dispatch<BackwardValue>(P, G, TR, threads);
    dispatch<BackwardReceivers>(P, G, threads, need_ds || need_ev,
                                need_q || need_ek || need_att, shared_table(in));
    if (need_k) dispatch<BackwardKey>(P, G, TR, threads);
  });
  return {gq, gk, gv, gek, gev, gbias, gatt};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gtlib fused CPU sparse attention (OpenMP)";
  gtlib::def_pool_functions(m);
  m.def("forward", &forward, "fused sparse attention forward: (out, lse, weights)",
        pybind11::arg("query"), pybind11::arg("key"), pybind11::arg("value"),
        pybind11::arg("key_edge"), pybind11::arg("value_edge"), pybind11::arg("bias"),
        pybind11::arg("att"), pybind11::arg("ptr"), pybind11::arg("col"),
        pybind11::arg("additive"), pybind11::arg("negative_slope"), pybind11::arg("scale"),
        pybind11::arg("need_out"));
  m.def("backward", &backward,
        "fused sparse attention backward: grads of (query, key, value, key_edge, value_edge, "
        "bias, att)",
        pybind11::arg("grad_out"), pybind11::arg("query"), pybind11::arg("key"),
        pybind11::arg("value"), pybind11::arg("key_edge"), pybind11::arg("value_edge"),
        pybind11::arg("bias"), pybind11::arg("att"), pybind11::arg("ptr"), pybind11::arg("col"),
        pybind11::arg("ptr_t"), pybind11::arg("receivers_t"), pybind11::arg("order"),
        pybind11::arg("weights"), pybind11::arg("additive"),
        pybind11::arg("negative_slope"), pybind11::arg("scale"), pybind11::arg("needs"),
        pybind11::arg("overwrite_weights"), pybind11::arg("key_is_value"));
  m.def("num_threads", &num_threads, "threads a call uses (at::get_num_threads)");
}
