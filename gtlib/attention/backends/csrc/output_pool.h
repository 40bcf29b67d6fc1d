// Shared by gtlib's compiled CPU kernels (fused_attention.cpp, window_attention.cpp): a pool that
// reuses the kernels' large outputs across calls (opt-in, GTLIB_OUTPUT_POOL; see
// gtlib/attention/backends/_memory.py).
//
// glibc maps every block above its mmap threshold (at most 32 MB) afresh and unmaps it when freed,
// so each training step faults in every large output page by page (on this project's VM about
// 0.12 s per 512 MB, more when the first writes are scattered) and unmaps it again. With the pool
// on, an output of at least min_bytes (32 MB by default) comes from an idle block of the pool when
// one of a fitting size is there (a block freed by an earlier output: the size, or up to 1/4
// larger), or from a fresh mapping otherwise; its storage gives the block back to the pool when it
// is freed. The pool keeps at most `limit` idle bytes: a block given back beyond that unmaps the
// oldest idle blocks first (so blocks of sizes no longer asked for do not stay). Blocks are mapped
// in whole 2 MB units and advised for transparent huge pages, so a reused block is resident in huge
// pages: no page faults, and scattered rows cost fewer TLB misses. A block is reused only once its
// tensor is freed; a forked child (e.g. a DataLoader worker) unmaps its copy of the idle blocks at
// once, so that the parent's next reuse does not copy them page by page.
// Contents of a reused block are stale: every kernel writes each element of its outputs (the
// kernels check the offsets this relies on).
//
// One pool per process where the toolchain unifies the function-local static of output_pool()
// across shared libraries (GCC's unique symbols: both extensions then share it), one per extension
// otherwise; both work. The class name carries a version: change it whenever the class's layout
// changes, so that extensions built from different versions of this header never share an object
// of another layout.
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
#include <utility>
#include <vector>

namespace gtlib {

class OutputPoolV1 {
 public:
  static constexpr size_t kUnit = size_t(2) << 20;  // mapping granule (a huge page)

  // limit: the most idle bytes kept (0: the pool is off, and its idle blocks are unmapped);
  // min_bytes: the smallest output taken from the pool (smaller ones come from the C library's
  // heap, which reuses blocks under 32 MB by itself).
  void configure(int64_t limit, int64_t min_bytes) {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      limit_ = limit > 0 ? size_t(limit) : 0;
      min_bytes_ = min_bytes > 0 ? size_t(min_bytes) : 0;
      take_oldest_locked(limit_, &drop);
    }
    unmap(drop);
  }

  // An uninitialised tensor like at::empty(sizes, options), from the pool when it is on.
  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    int64_t numel = 1;
    for (int64_t s : sizes) numel *= s;
    const size_t bytes = size_t(numel) * options.dtype().itemsize();
    size_t mapped = (bytes + kUnit - 1) / kUnit * kUnit;
    void* block = nullptr;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      if (limit_ == 0 || bytes == 0 || bytes < min_bytes_) return at::empty(sizes, options);
      block = take_fitting_locked(&mapped);
      if (block != nullptr) ++hits_; else ++misses_;
    }
    if (block == nullptr) block = map(mapped);
    if (block == nullptr) return at::empty(sizes, options);  // no mapping: the plain way
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
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      take_oldest_locked(0, &drop);
    }
    unmap(drop);
  }

  // (pool id, limit, idle bytes, idle blocks, hits, misses); the id tells pools apart
  std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t> stats() {
    std::lock_guard<std::mutex> guard(mutex_);
    return {int64_t(reinterpret_cast<intptr_t>(this)), int64_t(limit_), int64_t(idle_bytes_),
            int64_t(idle_.size()), hits_, misses_};
  }

  // fork(): the lock is held across it (no child inherits it mid-update), and the child unmaps
  // its copies of the idle blocks.
  void before_fork() { mutex_.lock(); }
  void after_fork_in_parent() { mutex_.unlock(); }
  void after_fork_in_child() {
    for (const Block& block : idle_) munmap(block.ptr, block.bytes);
    idle_.clear();
    idle_bytes_ = 0;
    mutex_.unlock();
  }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
  };

  // The smallest idle block of *mapped to 5/4 of it (a little slack, so that clouds of slightly
  // different sizes share blocks); its size is written back to *mapped.
  void* take_fitting_locked(size_t* mapped) {
    const size_t want = *mapped, most = want + want / 4;
    size_t best = idle_.size();
    for (size_t i = 0; i < idle_.size(); ++i) {
      const size_t b = idle_[i].bytes;
      if (b >= want && b <= most && (best == idle_.size() || b < idle_[best].bytes)) best = i;
    }
    if (best == idle_.size()) return nullptr;
    const Block block = idle_[best];
    idle_.erase(idle_.begin() + best);
    idle_bytes_ -= block.bytes;
    *mapped = block.bytes;
    return block.ptr;
  }

  // Moves the oldest idle blocks to *drop until at most `keep` idle bytes remain.
  void take_oldest_locked(size_t keep, std::vector<Block>* drop) {
    size_t n = 0;
    while (n < idle_.size() && idle_bytes_ > keep) {
      idle_bytes_ -= idle_[n].bytes;
      ++n;
    }
    drop->insert(drop->end(), idle_.begin(), idle_.begin() + n);
    idle_.erase(idle_.begin(), idle_.begin() + n);
  }

  static void* map(size_t bytes) {
    void* ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) return nullptr;
#ifdef MADV_HUGEPAGE
    madvise(ptr, bytes, MADV_HUGEPAGE);  // advice only: without huge pages it still works
#endif
    return ptr;
  }

  static void unmap(const std::vector<Block>& blocks) {
    for (const Block& block : blocks) munmap(block.ptr, block.bytes);
  }

  // A freed output's block: kept idle (the oldest idle blocks unmapped to make room under the
  // limit), or unmapped when the pool is off or the block alone exceeds the limit.
  void give_back(void* ptr, size_t bytes) noexcept {
    std::vector<Block> drop;
    bool keep = false;
    try {
      std::lock_guard<std::mutex> guard(mutex_);
      if (bytes <= limit_) {
        take_oldest_locked(limit_ - bytes, &drop);
        idle_.push_back({ptr, bytes});
        idle_bytes_ += bytes;
        keep = true;
      }
    } catch (...) {  // no memory for the list: the block goes back to the system
      keep = false;
    }
    if (!keep) munmap(ptr, bytes);
    unmap(drop);
  }

  std::mutex mutex_;
  std::vector<Block> idle_;
  size_t idle_bytes_ = 0;
  size_t limit_ = 0;  // off until configured
  size_t min_bytes_ = size_t(32) << 20;
  int64_t hits_ = 0, misses_ = 0;
};

using OutputPool = OutputPoolV1;

// The extension's pool (see the top of the file). Never destroyed: outputs may be freed after
// static destruction at exit.
inline OutputPool& output_pool() {
  static OutputPool* pool = [] {
    auto* p = new OutputPool();
    pthread_atfork([] { output_pool().before_fork(); },
                   [] { output_pool().after_fork_in_parent(); },
                   [] { output_pool().after_fork_in_child(); });
    return p;
  }();
  return *pool;
}

// The pool's functions on an extension module.
inline void def_pool_functions(pybind11::module_& m) {
  m.def("pool_configure",
        [](int64_t limit, int64_t min_bytes) { output_pool().configure(limit, min_bytes); },
        "sets the most idle bytes the output pool keeps (0: off) and the smallest pooled output",
        pybind11::arg("limit"), pybind11::arg("min_bytes"));
  m.def("pool_release", [] { output_pool().release(); }, "unmaps the pool's idle blocks");
  m.def("pool_stats", [] { return output_pool().stats(); },
        "(pool id, limit, idle bytes, idle blocks, hits, misses)");
}

}  // namespace gtlib
