#include "vmm-host/serial.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "base/log.h"

namespace vmm {
namespace {

// Appends `line` to `out` with control bytes (and bytes >= 0x7f) escaped as \xNN,
// so that guest output echoed to the operator's terminal cannot carry escape
// sequences. Tabs pass through.
void AppendEscaped(std::string_view line, std::string* out) {
  for (char c : line) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= 0x20 && u < 0x7f) || u == '\t') {
      out->push_back(c);
    } else {
      absl::StrAppendFormat(out, "\\x%02x", u);
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Serial>> Serial::Create(SerialOptions options) {
  std::FILE* log = nullptr;
  if (!options.log_path.empty()) {
    log = std::fopen(options.log_path.c_str(), "wb");
    if (log == nullptr) {
      return absl::UnavailableError(absl::StrFormat("serial: cannot open log file %s: %s",
                                                    options.log_path, std::strerror(errno)));
    }
  }
  return std::unique_ptr<Serial>(new Serial(std::move(options), log));
}

Serial::Serial(SerialOptions options, std::FILE* log) : options_(std::move(options)), log_(log) {}

Serial::~Serial() {
  Flush();
  absl::MutexLock lock(&mu_);
  if (log_ != nullptr) std::fclose(log_);
  log_ = nullptr;
}

void Serial::Read(uint64_t offset, uint8_t* data, uint32_t size) {
  std::memset(data, 0, size);
  if (size == 0) return;
  absl::MutexLock lock(&mu_);
  // Guest input: offset < kRegisterBytes is guaranteed by the bus (the range is
  // 8 ports); ReadRegisterLocked still treats anything else as a zero register.
  data[0] = ReadRegisterLocked(offset);
}

void Serial::Write(uint64_t offset, const uint8_t* data, uint32_t size) {
  if (size == 0) return;
  absl::MutexLock lock(&mu_);
  WriteRegisterLocked(offset, data[0]);
}

uint8_t Serial::IirLocked() const {
  const uint8_t fifo = (fcr_ & kFcrFifoEnable) ? kIirFifoEnabled : 0;
  // Priority per the datasheet: receive data before transmitter empty.
  if ((ier_ & kIerRxAvailable) && !input_.empty()) return fifo | kIirRxAvailable;
  if (ier_ & kIerThrEmpty) return fifo | kIirThrEmpty;
  return fifo | kIirNoInterrupt;
}

uint8_t Serial::ReadRegisterLocked(uint64_t offset) {
  const bool dlab = (lcr_ & kLcrDlab) != 0;
  switch (offset) {
    case kRegData: {
      if (dlab) return dll_;
      if (input_.empty()) return 0;
      const uint8_t byte = input_.front();
      input_.pop_front();
      return byte;
    }
    case kRegIer:
      return dlab ? dlm_ : ier_;
    case kRegIirFcr:
      return IirLocked();
    case kRegLcr:
      return lcr_;
    case kRegMcr:
      return mcr_;
    case kRegLsr:
      return kLsrThre | kLsrTemt | (input_.empty() ? 0 : kLsrDataReady);
    case kRegMsr:
      if (mcr_ & kMcrLoop) {
        // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
        return static_cast<uint8_t>(((mcr_ & 0x01) ? kMsrDsr : 0) | ((mcr_ & 0x02) ? kMsrCts : 0) |
                                    ((mcr_ & 0x04) ? kMsrRi : 0) | ((mcr_ & 0x08) ? kMsrDcd : 0));
      }
      return kMsrDcd | kMsrDsr | kMsrCts;
    case kRegScr:
      return scr_;
    default:
      return 0;
  }
}

void Serial::WriteRegisterLocked(uint64_t offset, uint8_t value) {
  const bool dlab = (lcr_ & kLcrDlab) != 0;
  switch (offset) {
    case kRegData:
      if (dlab) {
        dll_ = value;
      } else if (mcr_ & kMcrLoop) {
        PushInputLocked(value);
      } else {
        TransmitLocked(value);
      }
      break;
    case kRegIer:
      if (dlab) {
        dlm_ = value;
      } else {
        ier_ = value & 0x0f;
      }
      break;
    case kRegIirFcr:
      // FCR bits 1 and 2 clear the FIFOs; they are self-clearing.
      if (value & 0x02) input_.clear();
      fcr_ = value & 0xc9;
      break;
    case kRegLcr:
      lcr_ = value;
      break;
    case kRegMcr:
      mcr_ = value & 0x1f;
      break;
    case kRegScr:
      scr_ = value;
      break;
    default:  // LSR and MSR are read-only.
      break;
  }
}

void Serial::PushInputLocked(uint8_t byte) {
  if (input_.size() >= options_.input_capacity_bytes) {
    counters_.Inc(SerialCounters::kInputDropped);
    return;
  }
  input_.push_back(byte);
  counters_.Inc(SerialCounters::kBytesIn);
}

size_t Serial::QueueInput(std::string_view bytes) {
  absl::MutexLock lock(&mu_);
  size_t taken = 0;
  for (char c : bytes) {
    if (input_.size() >= options_.input_capacity_bytes) {
      counters_.Add(SerialCounters::kInputDropped, bytes.size() - taken);
      break;
    }
    input_.push_back(static_cast<uint8_t>(c));
    ++taken;
  }
  counters_.Add(SerialCounters::kBytesIn, taken);
  return taken;
}

void Serial::TransmitLocked(uint8_t byte) {
  counters_.Inc(SerialCounters::kBytesOut);
  if (byte == '\n') {
    EmitLineLocked(/*cut=*/false);
    return;
  }
  line_.push_back(static_cast<char>(byte));
  // Guest input: a guest that never ends its line must not grow host memory.
  if (line_.size() >= kMaxLineBytes) EmitLineLocked(/*cut=*/true);
}

void Serial::EmitLineLocked(bool cut) {
  std::string_view line = line_;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  counters_.Inc(cut ? SerialCounters::kLinesCut : SerialCounters::kLinesOut);

  if (log_ != nullptr) {
    // Flushed per line so the file is complete even if the VMM dies.
    if (std::fwrite(line.data(), 1, line.size(), log_) != line.size() ||
        std::fputc('\n', log_) == EOF || std::fflush(log_) != 0) {
      if (counters_.Get(SerialCounters::kLogWriteErrors) == 0) {
        LOG(ERROR) << "serial[" << options_.vm_name << "]: writing " << options_.log_path
                   << " failed: " << std::strerror(errno);
      }
      counters_.Inc(SerialCounters::kLogWriteErrors);
    }
  }
  if (options_.echo_stdout) {
    std::string out;
    out.reserve(line.size() + options_.vm_name.size() + 4);
    out += '[';
    out += options_.vm_name;
    out += "] ";
    AppendEscaped(line, &out);
    out += '\n';
    // One fwrite per line: stdio locks the stream per call, so lines of
    // different VMs never interleave.
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
  }
  if (options_.tail_bytes > 0) {
    tail_.append(line);
    tail_ += '\n';
    if (tail_.size() > 2 * options_.tail_bytes) tail_.erase(0, tail_.size() - options_.tail_bytes);
  }
  if (options_.on_line) options_.on_line(line);
  line_.clear();
}

void Serial::Flush() {
  absl::MutexLock lock(&mu_);
  if (!line_.empty()) EmitLineLocked(/*cut=*/false);
}

std::string Serial::Tail() const {
  absl::MutexLock lock(&mu_);
  if (tail_.size() <= options_.tail_bytes) return tail_;
  return tail_.substr(tail_.size() - options_.tail_bytes);
}

uint16_t Serial::divisor() const {
  absl::MutexLock lock(&mu_);
  return static_cast<uint16_t>(dll_ | (dlm_ << 8));
}

SerialCounters Serial::counters() const { return counters_; }

}  // namespace vmm
