#pragma once
// Allocation of the large outputs the CPU kernels write in full.
//
// A fresh multi-megabyte CPU tensor comes straight from mmap, so the kernel's first write to each
// 4 KiB page is a page fault; in virtual machines a fault costs microseconds, and faulting two
// 64 MiB gradients took longer than computing them. Where the kernel lets a process opt in to
// transparent huge pages (Linux, THP mode "madvise" or "always"), asking for them turns 512
// faults into one. Only the 2 MiB-aligned interior of the tensor is advised; nothing else changes
// (PyTorch does the same for every allocation when THP_MEM_ALLOC_ENABLE=1 is set).
#include <ATen/ATen.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace dmfx {

inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const size_t bytes = out.nbytes();
  if (out.is_cpu() && bytes >= 4 * kHuge) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t last = (begin + bytes) & ~(kHuge - 1);
    // Advice only: on failure (THP disabled, old kernel) the pages are simply small.
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return out;
}

}  // namespace dmfx
