// Serial: a 16550A UART subset on the bus (COM1, ports 0x3f8..0x3ff), enough for
// a polling guest console driver and for Linux's 8250 probe.
//
// Modelled registers (offsets from the base port; National PC16550D datasheet):
//   0  DLAB=0: THR (write: transmit a byte) / RBR (read: next received byte)
//      DLAB=1: DLL (divisor latch, low byte)
//   1  DLAB=0: IER (low 4 bits)              DLAB=1: DLM (divisor latch, high byte)
//   2  read: IIR (pending interrupt; FIFO bits when FCR enabled them), write: FCR
//   3  LCR (bit 7 is DLAB)
//   4  MCR (low 5 bits; bit 4 is loopback: transmitted bytes come back as input
//      and MSR reflects the MCR outputs)
//   5  LSR: THRE|TEMT always (the transmitter never backs up), DR while input
//      is pending. Read-only.
//   6  MSR: DCD|DSR|CTS (a null-modem cable that is always ready), no deltas
//   7  SCR (scratch)
// No interrupt is raised (the guest polls); IIR still reports what would be
// pending so that a driver that checks it sees a consistent UART.
//
// Output: transmitted bytes are assembled into lines ('\n' ends one; a trailing
// '\r' is dropped). Each line goes, in this order and under one lock, to the
// per-VM log file, to stdout as "[vm0] text" when echo is on (control bytes
// escaped so a guest cannot drive the operator's terminal), to an in-memory tail
// of the last `tail_bytes` bytes of output, and to the line callback. A guest
// that never sends '\n' cannot grow the line buffer without bound: a line is cut
// at kMaxLineBytes and counted.
//
// Input: QueueInput appends host bytes to a bounded receive FIFO (overflow is
// dropped and counted); the guest reads them from RBR.
//
// Thread safety: every method may be called from any thread. Bus accesses come
// from vCPU threads. The line callback runs with the Serial's lock held, on the
// writing vCPU's thread: it must not call back into this Serial.
#pragma once

#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/counters.h"
#include "vmm-host/io_bus.h"

namespace vmm {

#define VMM_SERIAL_COUNTERS(X)         \
  X(BytesOut, bytes_out)               \
  X(LinesOut, lines_out)               \
  X(LinesCut, lines_cut)               \
  X(BytesIn, bytes_in)                 \
  X(InputDropped, input_dropped)       \
  X(LogWriteErrors, log_write_errors)
BASE_DEFINE_COUNTERS(SerialCounters, VMM_SERIAL_COUNTERS);

struct SerialOptions {
  // Prefix for stdout echo ("vm0" gives "[vm0] text").
  std::string vm_name = "vm";
  // Log file, created or truncated. Empty: no file.
  std::string log_path;
  // Echo each completed line to stdout.
  bool echo_stdout = false;
  // How much of the most recent output to keep in memory (Tail()).
  size_t tail_bytes = 64 * 1024;
  // Receive FIFO bound for QueueInput.
  size_t input_capacity_bytes = 4096;
  // Called for each completed line (without the newline), under the lock.
  std::function<void(std::string_view line)> on_line;
};

class Serial final : public BusDevice {
 public:
  static constexpr uint16_t kCom1Port = 0x3f8;
  static constexpr uint64_t kRegisterBytes = 8;
  static constexpr size_t kMaxLineBytes = 4096;

  // Register offsets and bits (PC16550D).
  static constexpr uint64_t kRegData = 0;  // THR/RBR, DLL when DLAB
  static constexpr uint64_t kRegIer = 1;   // DLM when DLAB
  static constexpr uint64_t kRegIirFcr = 2;
  static constexpr uint64_t kRegLcr = 3;
  static constexpr uint64_t kRegMcr = 4;
  static constexpr uint64_t kRegLsr = 5;
  static constexpr uint64_t kRegMsr = 6;
  static constexpr uint64_t kRegScr = 7;
  static constexpr uint8_t kLcrDlab = 0x80;
  static constexpr uint8_t kLsrDataReady = 0x01;
  static constexpr uint8_t kLsrThre = 0x20;
  static constexpr uint8_t kLsrTemt = 0x40;
  static constexpr uint8_t kMcrLoop = 0x10;
  static constexpr uint8_t kIerRxAvailable = 0x01;
  static constexpr uint8_t kIerThrEmpty = 0x02;
  static constexpr uint8_t kIirNoInterrupt = 0x01;
  static constexpr uint8_t kIirThrEmpty = 0x02;
  static constexpr uint8_t kIirRxAvailable = 0x04;
  static constexpr uint8_t kIirFifoEnabled = 0xc0;
  static constexpr uint8_t kFcrFifoEnable = 0x01;
  static constexpr uint8_t kMsrCts = 0x10;
  static constexpr uint8_t kMsrDsr = 0x20;
  static constexpr uint8_t kMsrRi = 0x40;
  static constexpr uint8_t kMsrDcd = 0x80;

  // Opens (creates or truncates) the log file. Fails if it cannot be opened.
  static absl::StatusOr<std::unique_ptr<Serial>> Create(SerialOptions options);
  ~Serial() override;  // Emits a pending partial line, closes the file.
  Serial(const Serial&) = delete;
  Serial& operator=(const Serial&) = delete;

  // BusDevice. Any width is accepted; each access touches one register, with
  // the low byte of `data` (wider reads return the register in byte 0, zeros above).
  std::string_view name() const override { return "serial"; }
  void Read(uint64_t offset, uint8_t* data, uint32_t size) override;
  void Write(uint64_t offset, const uint8_t* data, uint32_t size) override;

  // Host -> guest bytes (a console on stdin, a test). Returns how many fit.
  size_t QueueInput(std::string_view bytes);

  // Emits the pending partial line, if any (VM shutdown, error reports).
  void Flush();

  // The last `tail_bytes` bytes of completed lines, each ending in '\n' (the
  // first may be cut at the front). Call Flush first to include a partial line.
  std::string Tail() const;
  // 16550 divisor latch (DLM:DLL) as the guest programmed it.
  uint16_t divisor() const;
  SerialCounters counters() const;

 private:
  explicit Serial(SerialOptions options, std::FILE* log);

  void TransmitLocked(uint8_t byte) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EmitLineLocked(bool cut) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint8_t ReadRegisterLocked(uint64_t offset) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteRegisterLocked(uint64_t offset, uint8_t value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint8_t IirLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PushInputLocked(uint8_t byte) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SerialOptions options_;
  mutable absl::Mutex mu_;
  std::FILE* log_ ABSL_GUARDED_BY(mu_) = nullptr;

  // UART registers.
  uint8_t ier_ ABSL_GUARDED_BY(mu_) = 0;
  uint8_t lcr_ ABSL_GUARDED_BY(mu_) = 0x03;  // 8N1, as firmware leaves it
  uint8_t mcr_ ABSL_GUARDED_BY(mu_) = 0x08;  // OUT2
  uint8_t fcr_ ABSL_GUARDED_BY(mu_) = 0;
  uint8_t scr_ ABSL_GUARDED_BY(mu_) = 0;
  uint8_t dll_ ABSL_GUARDED_BY(mu_) = 0x0c;  // 9600 baud
  uint8_t dlm_ ABSL_GUARDED_BY(mu_) = 0;

  std::deque<uint8_t> input_ ABSL_GUARDED_BY(mu_);
  std::string line_ ABSL_GUARDED_BY(mu_);
  std::string tail_ ABSL_GUARDED_BY(mu_);  // Trimmed to tail_bytes when it grows past 2x.
  SerialCounters counters_;                // Written under mu_ only.
};

}  // namespace vmm
