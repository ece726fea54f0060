#include "vmm-host/kvm_hypervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/check.h"
#include "base/log.h"
#include "base/status.h"
#include "vmm-host/kvm_abi.h"

namespace vmm {
namespace {

absl::Status ErrnoError(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// The signal used to kick a vCPU thread out of KVM_RUN. Its handler does
// nothing; the interrupted ioctl returns EINTR, and immediate_exit makes a
// KVM_RUN that had not started yet return at once.
constexpr int kKickSignal = SIGUSR1;

void InstallKickHandlerOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa = {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    CHECK_EQ(sigaction(kKickSignal, &sa, nullptr), 0);
  });
}

bool ReadFirstLine(const std::string& path, std::string* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::getline(in, *out);
  return true;
}

// Segment descriptors in the kvm_segment form for the boot GDT (Linux layout:
// 0x10 kernel code 64-bit, 0x18 kernel data; 0x40 TSS).
kvm_segment CodeSegment() {
  kvm_segment s = {};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = 0x10;
  s.type = 0xb;  // execute/read, accessed
  s.present = 1;
  s.dpl = 0;
  s.db = 0;
  s.s = 1;
  s.l = 1;
  s.g = 1;
  return s;
}
kvm_segment DataSegment() {
  kvm_segment s = {};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = 0x18;
  s.type = 0x3;  // read/write, accessed
  s.present = 1;
  s.dpl = 0;
  s.db = 1;
  s.s = 1;
  s.l = 0;
  s.g = 1;
  return s;
}

class KvmVcpu final : public Vcpu {
 public:
  KvmVcpu(int index, int fd, kvm_run* run, int mmap_size)
      : index_(index), fd_(fd), run_(run), mmap_size_(mmap_size) {}
  ~KvmVcpu() override {
    if (run_ != nullptr) munmap(run_, mmap_size_);
    if (stats_fd_ >= 0) close(stats_fd_);
    if (fd_ >= 0) close(fd_);
  }

  int index() const override { return index_; }

  absl::StatusOr<VcpuExit> Run() override {
    thread_ = pthread_self();
    thread_known_.store(true, std::memory_order_release);
    VcpuExit exit;
    if (ioctl(fd_, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        run_->immediate_exit = 0;
        exit.reason = ExitReason::kInterrupted;
        return exit;
      }
      if (errno == EFAULT) {
        // docs/platform.md: a guest write to a host page mapped read-only or not at
        // all fails KVM_RUN with EFAULT and no address.
        exit.reason = ExitReason::kInternalError;
        exit.description = "KVM_RUN failed with EFAULT (guest access to unmapped host memory)";
        return exit;
      }
      return ErrnoError("KVM_RUN");
    }
    switch (run_->exit_reason) {
      case KVM_EXIT_IO:
        exit.reason = ExitReason::kIo;
        exit.io.port = run_->io.port;
        exit.io.size = run_->io.size;
        exit.io.is_write = run_->io.direction == KVM_EXIT_IO_OUT;
        exit.io.count = run_->io.count;
        exit.io.data = reinterpret_cast<uint8_t*>(run_) + run_->io.data_offset;
        break;
      case KVM_EXIT_MMIO:
        exit.reason = ExitReason::kMmio;
        exit.mmio.gpa = run_->mmio.phys_addr;
        exit.mmio.size = static_cast<uint8_t>(run_->mmio.len);
        exit.mmio.is_write = run_->mmio.is_write;
        exit.mmio.data = run_->mmio.data;
        break;
      case KVM_EXIT_HLT:
        exit.reason = ExitReason::kHlt;
        break;
      case KVM_EXIT_SHUTDOWN:
        exit.reason = ExitReason::kShutdown;
        exit.description = "triple fault (KVM_EXIT_SHUTDOWN)";
        break;
      case KVM_EXIT_INTERNAL_ERROR: {
        exit.reason = ExitReason::kInternalError;
        exit.detail = run_->internal.suberror;
        std::string data;
        for (uint32_t i = 0; i < run_->internal.ndata && i < 16; ++i) {
          absl::StrAppendFormat(&data, " 0x%x", run_->internal.data[i]);
        }
        exit.description = absl::StrFormat("KVM internal error, suberror %u%s%s",
                                           run_->internal.suberror,
                                           run_->internal.suberror == KVM_INTERNAL_ERROR_EMULATION
                                               ? " (instruction emulation failed)"
                                               : "",
                                           data.empty() ? "" : absl::StrCat(", data", data));
        break;
      }
      case KVM_EXIT_FAIL_ENTRY:
        exit.reason = ExitReason::kFailEntry;
        exit.detail = run_->fail_entry.hardware_entry_failure_reason;
        exit.description = absl::StrFormat("VM entry failed, hardware reason 0x%x",
                                           run_->fail_entry.hardware_entry_failure_reason);
        break;
      case KVM_EXIT_SYSTEM_EVENT:
        exit.reason = ExitReason::kSystemEvent;
        exit.detail = run_->system_event.type;
        exit.description = absl::StrFormat("system event %u", run_->system_event.type);
        break;
      case KVM_EXIT_INTR:
        exit.reason = ExitReason::kInterrupted;
        break;
      default:
        exit.reason = ExitReason::kUnknown;
        exit.detail = run_->exit_reason;
        exit.description = absl::StrFormat("unhandled KVM exit reason %u", run_->exit_reason);
        break;
    }
    return exit;
  }

  void Kick() override {
    // immediate_exit covers the window before the thread enters KVM_RUN; the
    // signal interrupts a running KVM_RUN.
    run_->immediate_exit = 1;
    if (thread_known_.load(std::memory_order_acquire)) pthread_kill(thread_, kKickSignal);
  }

  absl::Status SetLongModeEntry(const LongModeEntry& e) override {
    kvm_sregs sregs;
    if (ioctl(fd_, KVM_GET_SREGS, &sregs) < 0) return ErrnoError("KVM_GET_SREGS");
    sregs.cs = CodeSegment();
    sregs.ds = sregs.es = sregs.ss = DataSegment();
    sregs.fs = sregs.gs = DataSegment();
    kvm_segment tss = {};
    tss.base = e.tss_base;
    tss.limit = 0x67;
    tss.selector = 0x40;
    tss.type = 0xb;  // 64-bit TSS, busy
    tss.present = 1;
    tss.s = 0;
    sregs.tr = tss;
    kvm_segment ldt = {};
    ldt.type = 0x2;
    ldt.present = 1;
    ldt.unusable = 0;
    sregs.ldt = ldt;
    sregs.gdt.base = e.gdt_base;
    sregs.gdt.limit = e.gdt_limit;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    // docs/platform.md: CR0 0x80050033 (PG|AM|WP|NE|ET|MP|PE), CR4 PAE|OSFXSR,
    // EFER 0xD01 (NXE|LMA|LME|SCE).
    sregs.cr0 = 0x80050033;
    sregs.cr3 = e.cr3;
    sregs.cr4 = 0x220;
    sregs.efer = 0xd01;
    if (ioctl(fd_, KVM_SET_SREGS, &sregs) < 0) return ErrnoError("KVM_SET_SREGS");
    kvm_regs regs = {};
    regs.rip = e.rip;
    regs.rdi = e.rdi;
    regs.rsp = e.rsp;
    regs.rflags = 0x2;
    if (ioctl(fd_, KVM_SET_REGS, &regs) < 0) return ErrnoError("KVM_SET_REGS");
    return absl::OkStatus();
  }

  absl::StatusOr<VcpuRegisters> GetRegisters() override {
    kvm_regs regs;
    kvm_sregs sregs;
    if (ioctl(fd_, KVM_GET_REGS, &regs) < 0) return ErrnoError("KVM_GET_REGS");
    if (ioctl(fd_, KVM_GET_SREGS, &sregs) < 0) return ErrnoError("KVM_GET_SREGS");
    VcpuRegisters r;
    r.rax = regs.rax; r.rbx = regs.rbx; r.rcx = regs.rcx; r.rdx = regs.rdx;
    r.rsi = regs.rsi; r.rdi = regs.rdi; r.rbp = regs.rbp; r.rsp = regs.rsp;
    r.r8 = regs.r8; r.r9 = regs.r9; r.r10 = regs.r10; r.r11 = regs.r11;
    r.r12 = regs.r12; r.r13 = regs.r13; r.r14 = regs.r14; r.r15 = regs.r15;
    r.rip = regs.rip; r.rflags = regs.rflags;
    r.cr0 = sregs.cr0; r.cr2 = sregs.cr2; r.cr3 = sregs.cr3; r.cr4 = sregs.cr4;
    r.efer = sregs.efer;
    r.cs = sregs.cs.selector; r.ss = sregs.ss.selector; r.ds = sregs.ds.selector;
    r.tr = sregs.tr.selector;
    r.gdt_base = sregs.gdt.base; r.gdt_limit = sregs.gdt.limit;
    r.idt_base = sregs.idt.base; r.idt_limit = sregs.idt.limit;
    return r;
  }

  absl::StatusOr<BackendStats> Stats() override {
    if (stats_fd_ < 0) {
      stats_fd_ = ioctl(fd_, KVM_GET_STATS_FD, 0);
      if (stats_fd_ < 0) return absl::UnimplementedError("KVM_GET_STATS_FD not supported");
    }
    return ReadKvmBinaryStats(stats_fd_);
  }

  absl::Status SetCpuid(const uint8_t* supported) {
    // Copy the supported leaves and give each vCPU its own initial APIC ID
    // (CPUID.1:EBX[31:24] and CPUID.0BH:EDX), as hardware does.
    kvm_abi::Cpuid2Header header;
    std::memcpy(&header, supported, sizeof(header));
    const size_t bytes = sizeof(header) + header.nent * sizeof(kvm_cpuid_entry2);
    std::vector<uint8_t> storage(supported, supported + bytes);
    auto* entries = reinterpret_cast<kvm_cpuid_entry2*>(storage.data() + sizeof(header));
    for (uint32_t i = 0; i < header.nent; ++i) {
      kvm_cpuid_entry2& entry = entries[i];
      if (entry.function == 1) {
        entry.ebx = (entry.ebx & 0x00ffffff) | (static_cast<uint32_t>(index_) << 24);
      } else if (entry.function == 0xb || entry.function == 0x1f) {
        entry.edx = static_cast<uint32_t>(index_);
      }
    }
    if (ioctl(fd_, kvm_abi::kSetCpuid2, storage.data()) < 0) return ErrnoError("KVM_SET_CPUID2");
    return absl::OkStatus();
  }

 private:
  int index_;
  int fd_;
  kvm_run* run_;
  int mmap_size_;
  int stats_fd_ = -1;
  pthread_t thread_{};
  std::atomic<bool> thread_known_{false};
};

class KvmVm final : public Vm {
 public:
  KvmVm(const KvmHypervisor& hv, int fd) : hv_(hv), fd_(fd) {}
  ~KvmVm() override {
    if (stats_fd_ >= 0) close(stats_fd_);
    if (fd_ >= 0) close(fd_);
  }

  absl::Status Init() {
    // Intel needs a TSS region below 4 GiB for real-mode emulation; we never
    // use real mode, but the address must not collide with RAM or MMIO.
    if (ioctl(fd_, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0 && errno != ENOTTY && errno != EINVAL) {
      return ErrnoError("KVM_SET_TSS_ADDR");
    }
    if (ioctl(fd_, KVM_CREATE_IRQCHIP, 0) < 0) return ErrnoError("KVM_CREATE_IRQCHIP");
    return absl::OkStatus();
  }

  absl::Status MapRam(base::Gpa gpa, uint64_t size, uint8_t* host) override {
    if ((gpa.value() | size | reinterpret_cast<uintptr_t>(host)) & base::kPageMask) {
      return absl::InvalidArgumentError("guest RAM range is not page-aligned");
    }
    kvm_userspace_memory_region region = {};
    region.slot = next_slot_;
    region.flags = 0;
    region.guest_phys_addr = gpa.value();
    region.memory_size = size;
    region.userspace_addr = reinterpret_cast<uintptr_t>(host);
    if (ioctl(fd_, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
      return ErrnoError("KVM_SET_USER_MEMORY_REGION");
    }
    ++next_slot_;
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Vcpu>> CreateVcpu(int index) override {
    const int vcpu_fd = ioctl(fd_, KVM_CREATE_VCPU, index);
    if (vcpu_fd < 0) return ErrnoError(absl::StrCat("KVM_CREATE_VCPU ", index));
    void* run = mmap(nullptr, hv_.vcpu_mmap_size(), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd, 0);
    if (run == MAP_FAILED) {
      absl::Status s = ErrnoError("mmap kvm_run");
      close(vcpu_fd);
      return s;
    }
    auto vcpu = std::make_unique<KvmVcpu>(index, vcpu_fd, static_cast<kvm_run*>(run),
                                          hv_.vcpu_mmap_size());
    TRY(vcpu->SetCpuid(hv_.supported_cpuid()));
    if (tsc_khz_ == 0) {
      const int khz = ioctl(vcpu_fd, KVM_GET_TSC_KHZ, 0);
      if (khz > 0) tsc_khz_ = static_cast<uint64_t>(khz);
    }
    InstallKickHandlerOnce();
    return vcpu;
  }

  absl::Status SetIrqLine(uint32_t gsi, bool level) override {
    kvm_irq_level irq = {};
    irq.irq = gsi;
    irq.level = level ? 1 : 0;
    if (ioctl(fd_, KVM_IRQ_LINE, &irq) < 0) return ErrnoError("KVM_IRQ_LINE");
    return absl::OkStatus();
  }

  uint64_t TscKhz() const override { return tsc_khz_; }

  absl::StatusOr<BackendStats> Stats() override {
    if (stats_fd_ < 0) {
      stats_fd_ = ioctl(fd_, KVM_GET_STATS_FD, 0);
      if (stats_fd_ < 0) return absl::UnimplementedError("KVM_GET_STATS_FD not supported");
    }
    return ReadKvmBinaryStats(stats_fd_);
  }

 private:
  const KvmHypervisor& hv_;
  int fd_;
  uint32_t next_slot_ = 0;
  uint64_t tsc_khz_ = 0;
  int stats_fd_ = -1;
};

}  // namespace

std::string DetectKvmPagingMode(bool* is_pvm) {
  *is_pvm = access("/sys/module/kvm_pvm", F_OK) == 0;
  if (*is_pvm) return "host shadow (pvm)";
  std::string value;
  if (ReadFirstLine("/sys/module/kvm_intel/parameters/ept", &value)) {
    return (value == "Y" || value == "1") ? "ept" : "shadow";
  }
  if (ReadFirstLine("/sys/module/kvm_amd/parameters/npt", &value)) {
    return (value == "Y" || value == "1") ? "npt" : "shadow";
  }
  return "unknown";
}

absl::StatusOr<BackendStats> ReadKvmBinaryStats(int stats_fd) {
  kvm_stats_header header;
  if (pread(stats_fd, &header, sizeof(header), 0) != static_cast<ssize_t>(sizeof(header))) {
    return ErrnoError("read KVM stats header");
  }
  // Each descriptor is followed by a name of header.name_size bytes.
  const size_t desc_size = sizeof(kvm_abi::StatsDesc) + header.name_size;
  std::vector<uint8_t> descs(desc_size * header.num_desc);
  if (pread(stats_fd, descs.data(), descs.size(), header.desc_offset) !=
      static_cast<ssize_t>(descs.size())) {
    return ErrnoError("read KVM stats descriptors");
  }
  BackendStats out;
  for (uint32_t i = 0; i < header.num_desc; ++i) {
    kvm_abi::StatsDesc d;
    std::memcpy(&d, descs.data() + i * desc_size, sizeof(d));
    const kvm_abi::StatsDesc* desc = &d;
    std::vector<uint64_t> values(desc->size);
    const ssize_t bytes = static_cast<ssize_t>(values.size() * sizeof(uint64_t));
    if (pread(stats_fd, values.data(), bytes, header.data_offset + desc->offset) != bytes) {
      return ErrnoError("read KVM stats data");
    }
    uint64_t sum = 0;
    for (uint64_t v : values) sum += v;
    const char* name = reinterpret_cast<const char*>(descs.data() + i * desc_size) + sizeof(d);
    out.push_back({std::string(name, strnlen(name, header.name_size)), sum});
  }
  return out;
}

absl::StatusOr<std::unique_ptr<KvmHypervisor>> KvmHypervisor::Create(const std::string& device_path) {
  std::unique_ptr<KvmHypervisor> hv(new KvmHypervisor());
  hv->kvm_fd_ = open(device_path.c_str(), O_RDWR | O_CLOEXEC);
  if (hv->kvm_fd_ < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return absl::UnavailableError(absl::StrCat(
          device_path, " does not exist: this host has no KVM (load kvm_intel or kvm_amd)"));
    }
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(absl::StrCat(
          "no permission to open ", device_path,
          ": run as root or join the kvm group"));
    }
    return absl::UnavailableError(absl::StrCat("cannot open ", device_path, ": ",
                                               std::strerror(err)));
  }
  const int version = ioctl(hv->kvm_fd_, KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION) {
    return absl::FailedPreconditionError(
        absl::StrCat("KVM API version ", version, ", expected ", KVM_API_VERSION));
  }
  for (int cap : {KVM_CAP_IRQCHIP, KVM_CAP_USER_MEMORY, KVM_CAP_EXT_CPUID, KVM_CAP_IMMEDIATE_EXIT}) {
    if (ioctl(hv->kvm_fd_, KVM_CHECK_EXTENSION, cap) <= 0) {
      return absl::FailedPreconditionError(absl::StrCat("KVM lacks capability ", cap));
    }
  }
  hv->vcpu_mmap_size_ = ioctl(hv->kvm_fd_, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (hv->vcpu_mmap_size_ <= 0) return ErrnoError("KVM_GET_VCPU_MMAP_SIZE");
  // docs/platform.md: without KVM_SET_CPUID2 every leaf reads zero. KVM answers
  // E2BIG while the buffer is too small.
  for (uint32_t nent = 128; nent <= 4096; nent *= 2) {
    const size_t bytes = sizeof(kvm_abi::Cpuid2Header) + nent * sizeof(kvm_cpuid_entry2);
    hv->cpuid_storage_ = std::make_unique<uint8_t[]>(bytes);
    std::memset(hv->cpuid_storage_.get(), 0, bytes);
    const kvm_abi::Cpuid2Header header = {nent, 0};
    std::memcpy(hv->cpuid_storage_.get(), &header, sizeof(header));
    if (ioctl(hv->kvm_fd_, kvm_abi::kGetSupportedCpuid, hv->cpuid_storage_.get()) == 0) break;
    if (errno != E2BIG) return ErrnoError("KVM_GET_SUPPORTED_CPUID");
    hv->cpuid_storage_.reset();
  }
  if (!hv->cpuid_storage_) return absl::InternalError("KVM_GET_SUPPORTED_CPUID: too many entries");
  hv->paging_mode_ = DetectKvmPagingMode(&hv->is_pvm_);
  return hv;
}

KvmHypervisor::~KvmHypervisor() {
  if (kvm_fd_ >= 0) close(kvm_fd_);
}

absl::StatusOr<std::unique_ptr<Vm>> KvmHypervisor::CreateVm(const VmSetup& /*setup*/) {
  const int vm_fd = ioctl(kvm_fd_, KVM_CREATE_VM, 0);
  if (vm_fd < 0) return ErrnoError("KVM_CREATE_VM");
  auto vm = std::make_unique<KvmVm>(*this, vm_fd);
  TRY(vm->Init());
  return vm;
}

}  // namespace vmm
