// Shared by gtlib's compiled CPU kernels (fused_attention.cpp, window_attention.cpp): a pool that
// reuses the kernels' large outputs across calls (opt-in, GTLIB_OUTPUT_POOL; see
// gtlib/attention/backends/_memory.py).
//
// glibc maps every block above its mmap threshold (at most 32 MB) afresh and unmaps it when freed,
// so each training step faults in every large output page by page (on this project's VM about
// 0.12 s per 512 MB, more when the first writes are scattered) and unmaps it again. With the pool
// on, an output of at least kMinBytes comes from an idle block of the pool when one of a fitting
// size is there (a block freed by an earlier output), or from a fresh mapping otherwise; its
// storage gives the block back to the pool when it is freed, up to the pool's limit of idle bytes
// (beyond it the block is unmapped). Blocks are mapped in whole 2 MB units and advised for
// transparent huge pages, so a reused block is resident in huge pages: no page faults, and
// scattered rows cost fewer TLB misses. The pool never holds memory in use elsewhere: its idle
// blocks are at most the outputs freed since the last reuse, and release() unmaps them.
// Contents of a reused block are stale: every kernel writes each element of its outputs.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <torch/csrc/utils/pybind.h>

#include <pthread.h>
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <tuple>
#include <vector>

namespace gtlib {

class OutputPool {
 public:
  // smaller outputs come from the C library's heap, which reuses them by itself
  static constexpr size_t kMinBytes = size_t(32) << 20;
  static constexpr size_t kUnit = size_t(2) << 20;  // mapping granule (a huge page)

  // limit: the most idle bytes kept (0: the pool is off, and its idle blocks are unmapped).
  void configure(int64_t limit) {
    std::lock_guard<std::mutex> guard(mutex_);
    limit_ = limit > 0 ? size_t(limit) : 0;
    trim_locked(limit_);
  }

  // An uninitialised tensor like at::empty(sizes, options), from the pool when it is on.
  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    int64_t numel = 1;
    for (int64_t s : sizes) numel *= s;
    const size_t bytes = size_t(numel) * options.dtype().itemsize();
    size_t mapped = (bytes + kUnit - 1) / kUnit * kUnit;
    void* block = nullptr;
    bool pooled = false;
    if (bytes >= kMinBytes) {
      std::lock_guard<std::mutex> guard(mutex_);
      pooled = limit_ > 0;
      if (pooled) {
        block = take_locked(&mapped);
        if (block != nullptr) ++hits_; else ++misses_;
      }
    }
    if (!pooled) return at::empty(sizes, options);
    if (block == nullptr) block = map(mapped);
    return at::from_blob(
        block, sizes, [this, mapped](void* ptr) { give_back(ptr, mapped); }, options);
  }

  // An uninitialised tensor shaped like x: from the pool when x is contiguous (as at::empty_like,
  // which keeps other layouts).
  at::Tensor empty_like(const at::Tensor& x) {
    return x.is_contiguous() ? empty(x.sizes(), x.options()) : at::empty_like(x);
  }

  // Unmaps every idle block.
  void release() {
    std::lock_guard<std::mutex> guard(mutex_);
    trim_locked(0);
  }

  // (pool id, limit, idle bytes, idle blocks, hits, misses); the id tells pools apart (the
  // extensions may share one: GCC makes the static of output_pool() one symbol process-wide)
  std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t> stats() {
    std::lock_guard<std::mutex> guard(mutex_);
    return {int64_t(reinterpret_cast<intptr_t>(this)), int64_t(limit_), int64_t(idle_bytes_),
            int64_t(idle_.size()), hits_, misses_};
  }

  // Held across fork() (pthread_atfork), so that a child never inherits it locked mid-update.
  void lock() { mutex_.lock(); }
  void unlock() { mutex_.unlock(); }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
  };

  // The smallest idle block of *mapped to 5/4 of it (a little slack, so that clouds of slightly
  // different sizes share blocks); its size is written back to *mapped.
  void* take_locked(size_t* mapped) {
    size_t best = idle_.size();
    for (size_t i = 0; i < idle_.size(); ++i) {
      const size_t b = idle_[i].bytes;
      if (b >= *mapped && b <= *mapped + *mapped / 4 && (best == idle_.size() || b < idle_[best].bytes)) {
        best = i;
      }
    }
    if (best == idle_.size()) return nullptr;
    Block block = idle_[best];
    idle_.erase(idle_.begin() + best);
    idle_bytes_ -= block.bytes;
    *mapped = block.bytes;
    return block.ptr;
  }

  static void* map(size_t bytes) {
    void* ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(ptr != MAP_FAILED, "gtlib output pool: could not map ", bytes, " bytes");
#ifdef MADV_HUGEPAGE
    madvise(ptr, bytes, MADV_HUGEPAGE);  // advice only: without huge pages it still works
#endif
    return ptr;
  }

  void give_back(void* ptr, size_t bytes) {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      if (idle_bytes_ + bytes <= limit_) {
        idle_.push_back({ptr, bytes});
        idle_bytes_ += bytes;
        return;
      }
    }
    munmap(ptr, bytes);
  }

  // Unmaps the oldest idle blocks until at most `keep` idle bytes remain.
  void trim_locked(size_t keep) {
    size_t drop = 0;
    while (drop < idle_.size() && idle_bytes_ > keep) {
      munmap(idle_[drop].ptr, idle_[drop].bytes);
      idle_bytes_ -= idle_[drop].bytes;
      ++drop;
    }
    idle_.erase(idle_.begin(), idle_.begin() + drop);
  }

  std::mutex mutex_;
  std::vector<Block> idle_;
  size_t idle_bytes_ = 0;
  size_t limit_ = 0;  // off until configured
  int64_t hits_ = 0, misses_ = 0;
};

// The extension's pool. Never destroyed: outputs may be freed after static destruction at exit.
inline OutputPool& output_pool() {
  static OutputPool* pool = [] {
    auto* p = new OutputPool();
    pthread_atfork([] { output_pool().lock(); }, [] { output_pool().unlock(); },
                   [] { output_pool().unlock(); });
    return p;
  }();
  return *pool;
}

// The pool's functions on an extension module (each extension has its own pool).
inline void def_pool_functions(pybind11::module_& m) {
  m.def("pool_configure", [](int64_t limit) { output_pool().configure(limit); },
        "sets the most idle bytes the output pool keeps (0: off)", pybind11::arg("limit"));
  m.def("pool_release", [] { output_pool().release(); }, "unmaps the pool's idle blocks");
  m.def("pool_stats", [] { return output_pool().stats(); },
        "(pool id, limit, idle bytes, idle blocks, hits, misses)");
}

}  // namespace gtlib
