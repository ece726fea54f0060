// FreeBlockFinder: finds naturally aligned blocks of 2^order consecutive page
// frames in a stream of free frames, as a free list yields them, for free page
// reporting (virtio 1.2 §5.5.6.7). A kernel whose free list is not sorted by
// address still returns frames in runs: pages freed together (an munmap, a
// process exit) were usually allocated together, so they come out of a LIFO list
// as a descending (or ascending) run. The finder keeps one run and no array: O(1)
// state and O(1) work per frame, which matters where guest kernel code is
// emulated (docs/platform.md).
//
// Each frame fed ends in exactly one place: a block (Sink::OnBlock(base_pfn)
// once per block), a leftover that cannot complete an aligned block in this
// stream (Sink::OnLeftover(pfn)), or the current run, which Unwind hands back
// (Sink::OnUnwind(pfn), most recently fed first, so pushing each onto a LIFO list
// restores the list's order).
//
// Freestanding, header-only; single-threaded.
#ifndef GUEST_DRIVER_FREE_BLOCK_FINDER_H_
#define GUEST_DRIVER_FREE_BLOCK_FINDER_H_

#include <cstdint>

namespace guest_driver {

class FreeBlockFinder {
 public:
  explicit FreeBlockFinder(uint32_t order) : block_pages_(uint64_t{1} << order) {}

  uint64_t block_pages() const { return block_pages_; }
  uint64_t run_pages() const { return count_; }

  template <typename Sink>
  void Feed(uint64_t pfn, Sink& sink) {
    if (count_ == 0) {
      Start(pfn);
    } else if (count_ == 1 && (pfn == start_ + 1 || pfn + 1 == start_)) {
      dir_ = pfn > start_ ? 1 : -1;
      ++count_;
    } else if (count_ > 1 && pfn == Last() + static_cast<uint64_t>(static_cast<int64_t>(dir_))) {
      ++count_;
    } else {
      // The run is broken: nothing in it can reach an aligned block any more
      // (a completable prefix would have been emitted already).
      for (uint64_t i = 0; i < count_; ++i) sink.OnLeftover(At(i));
      Start(pfn);
    }
    if (count_ < block_pages_) return;
    const uint64_t low = dir_ < 0 ? Last() : start_;
    if ((low & (block_pages_ - 1)) == 0) {
      sink.OnBlock(low);
      count_ = 0;
      dir_ = 0;
      return;
    }
    // A full window that is not aligned: its oldest frame can never be in an
    // aligned block of this run; slide past it.
    sink.OnLeftover(start_);
    start_ = At(1);
    --count_;
    if (count_ == 1) dir_ = 0;
  }

  // Hands back the frames of the current run, newest first.
  template <typename Sink>
  void Unwind(Sink& sink) {
    for (uint64_t i = count_; i > 0; --i) sink.OnUnwind(At(i - 1));
    count_ = 0;
    dir_ = 0;
  }

 private:
  void Start(uint64_t pfn) {
    start_ = pfn;
    count_ = 1;
    dir_ = 0;
  }
  uint64_t At(uint64_t i) const { return dir_ < 0 ? start_ - i : start_ + i; }
  uint64_t Last() const { return At(count_ - 1); }

  uint64_t block_pages_;
  uint64_t start_ = 0;
  uint64_t count_ = 0;
  int dir_ = 0;  // +1 ascending, -1 descending, 0 for a run of one frame.
};

}  // namespace guest_driver

#endif  // GUEST_DRIVER_FREE_BLOCK_FINDER_H_
