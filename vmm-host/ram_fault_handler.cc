#include "vmm-host/ram_fault_handler.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/log.h"

namespace vmm {
namespace {

absl::Status Unavailable(int error_number, std::string_view what) {
  return absl::UnavailableError(absl::StrCat("userfaultfd: ", absl::string_view(what.data(), what.size()), ": ",
                                             std::strerror(error_number)));
}

bool HasNoMemory(GfnState state) {
  return state == GfnState::kBallooned || state == GfnState::kZero || state == GfnState::kUnbacked;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RamFaultHandler>> RamFaultHandler::Create(FrameTable* table) {
  CHECK(table != nullptr);
  // Kernel faults (KVM's own access to guest pages) must reach the handler,
  // so no UFFD_USER_MODE_ONLY: this needs CAP_SYS_PTRACE or
  // vm.unprivileged_userfaultfd=1.
  const int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (uffd < 0) return Unavailable(errno, "cannot open one");
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_MISSING_SHMEM;
  if (ioctl(uffd, UFFDIO_API, &api) != 0) {
    const int err = errno;
    close(uffd);
    return Unavailable(err, "UFFDIO_API with MISSING faults on shared memory");
  }
  const int stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd < 0) {
    const int err = errno;
    close(uffd);
    return absl::ErrnoToStatus(err, "eventfd for the userfaultfd thread");
  }
  std::unique_ptr<RamFaultHandler> h(new RamFaultHandler(table, uffd, stop_fd));
  h->thread_ = std::thread([raw = h.get()] { raw->Run(); });
  table->RegisterInvalidationListener(h.get());
  return h;
}

RamFaultHandler::RamFaultHandler(FrameTable* table, int uffd, int stop_fd)
    : table_(table), uffd_(uffd), stop_fd_(stop_fd) {
  for (const RamMapping& m : table->Mappings()) {
    Range r;
    r.mapping = m;
    r.first_gfn = m.gpa.value() >> base::kPageShift;
    r.registered.assign((m.size_bytes + kChunkBytes - 1) / kChunkBytes, false);
    ranges_.push_back(std::move(r));
  }
}

RamFaultHandler::~RamFaultHandler() {
  table_->UnregisterInvalidationListener(this);
  const uint64_t one = 1;
  if (write(stop_fd_, &one, sizeof(one)) != sizeof(one)) {
    LOG(ERROR) << "userfaultfd: cannot signal the fault thread: " << std::strerror(errno);
  }
  if (thread_.joinable()) thread_.join();
  // Closing drops every registration and wakes whatever still waits.
  close(uffd_);
  close(stop_fd_);
}

void RamFaultHandler::InvalidateGfns(base::Gfn first, uint64_t count, InvalidationReason reason) {
  // Only a discard leaves a hole for a later touch to fall into.
  if (reason != InvalidationReason::kDiscard || count == 0) return;
  for (Range& r : ranges_) {
    const uint64_t pages = r.mapping.size_bytes >> base::kPageShift;
    const uint64_t lo = std::max(first.value(), r.first_gfn);
    const uint64_t hi = std::min(first.value() + count, r.first_gfn + pages);
    if (lo >= hi) continue;
    const uint64_t first_chunk = ((lo - r.first_gfn) << base::kPageShift) / kChunkBytes;
    const uint64_t last_chunk = (((hi - r.first_gfn) << base::kPageShift) - 1) / kChunkBytes;
    for (uint64_t c = first_chunk; c <= last_chunk; ++c) {
      if (r.registered[c]) continue;
      const uint64_t offset = c * kChunkBytes;
      uffdio_register reg{};
      reg.range.start = reinterpret_cast<uint64_t>(r.mapping.host) + offset;
      reg.range.len = std::min(kChunkBytes, r.mapping.size_bytes - offset);
      reg.mode = UFFDIO_REGISTER_MODE_MISSING;
      if (ioctl(uffd_, UFFDIO_REGISTER, &reg) != 0) {
        // The discard goes on; touches of this chunk stay unseen (as
        // without a handler), which is logged and counted, never fatal.
        counters_.Inc(RamFaultCounters::kRegisterErrors);
        LOG(ERROR) << "vm '" << table_->vm_name() << "': UFFDIO_REGISTER of 2 MiB chunk " << c << " at gpa 0x"
                   << std::hex << (r.mapping.gpa.value() + offset) << std::dec << ": " << std::strerror(errno);
        continue;
      }
      if (!(reg.ioctls & (uint64_t{1} << _UFFDIO_ZEROPAGE))) {
        LOG(WARNING) << "userfaultfd: this kernel offers no UFFDIO_ZEROPAGE on shared memory";
      }
      r.registered[c] = true;
      counters_.Inc(RamFaultCounters::kChunksRegistered);
    }
  }
}

std::optional<base::Gfn> RamFaultHandler::GfnAt(uint64_t address) const {
  for (const Range& r : ranges_) {
    const uint64_t host = reinterpret_cast<uint64_t>(r.mapping.host);
    if (address >= host && address - host < r.mapping.size_bytes) {
      return base::Gfn(r.first_gfn + ((address - host) >> base::kPageShift));
    }
  }
  return std::nullopt;
}

void RamFaultHandler::Run() {
  pollfd fds[2] = {{uffd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  uffd_msg msgs[16];
  while (true) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      LOG(ERROR) << "userfaultfd: poll: " << std::strerror(errno);
      return;
    }
    if (fds[1].revents != 0) return;
    const ssize_t n = read(uffd_, msgs, sizeof(msgs));
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      LOG(ERROR) << "userfaultfd: read: " << std::strerror(errno);
      return;
    }
    for (size_t i = 0; i < static_cast<size_t>(n) / sizeof(uffd_msg); ++i) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      Serve(msgs[i].arg.pagefault.address, (msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0);
    }
  }
}

void RamFaultHandler::Serve(uint64_t address, bool write) {
  counters_.Inc(RamFaultCounters::kFaults);
  const uint64_t page = address & ~base::kPageMask;
  if (const std::optional<base::Gfn> gfn = GfnAt(page)) {
    // A page with no memory behind it is backed again: the table says so
    // (and counts the touch) before the guest can see the page.
    if (HasNoMemory(table_->Lookup(*gfn).state())) {
      if (table_->MakeAvailable(gfn->value(), write) == mmu::BackingStatus::kReady) {
        counters_.Inc(RamFaultCounters::kRepopulated);
      }
    }
  }
  uffdio_zeropage zero{};
  zero.range.start = page;
  zero.range.len = base::kPageSize;
  for (int attempt = 0; attempt < 100; ++attempt) {
    if (ioctl(uffd_, UFFDIO_ZEROPAGE, &zero) == 0) {
      counters_.Inc(RamFaultCounters::kZeroFills);
      return;
    }
    if (errno != EAGAIN) break;  // EAGAIN: the mapping is changing; again
  }
  if (errno == EEXIST) {
    // Another fault on the same page was served first: only wake this one.
    uffdio_range range{page, base::kPageSize};
    if (ioctl(uffd_, UFFDIO_WAKE, &range) == 0) {
      counters_.Inc(RamFaultCounters::kWakes);
      return;
    }
  }
  counters_.Inc(RamFaultCounters::kErrors);
  LOG(ERROR) << "vm '" << table_->vm_name() << "': userfaultfd: cannot map a zero page at host 0x" << std::hex
             << page << std::dec << ": " << std::strerror(errno);
  // Wake the thread anyway: it faults again, and the next try may succeed.
  uffdio_range range{page, base::kPageSize};
  (void)ioctl(uffd_, UFFDIO_WAKE, &range);
}

}  // namespace vmm
