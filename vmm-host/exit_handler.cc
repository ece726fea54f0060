#include "vmm-host/exit_handler.h"

namespace vmm {

ExitAction HandleExit(const VcpuExit& exit, IoBus& bus, VcpuCounters& counters) {
  switch (exit.reason) {
    case ExitReason::kIo: {
      counters.exits.Inc(ExitCounters::kIo);
      // `rep ins/outs` arrive as one exit with count items of size bytes.
      uint8_t* data = exit.io.data;
      for (uint32_t i = 0; i < exit.io.count; ++i, data += exit.io.size) {
        if (exit.io.is_write) {
          bus.Write(IoBus::Space::kPio, exit.io.port, data, exit.io.size, &counters.bus);
        } else {
          bus.Read(IoBus::Space::kPio, exit.io.port, data, exit.io.size, &counters.bus);
        }
      }
      return ExitAction::kContinue;
    }
    case ExitReason::kMmio:
      counters.exits.Inc(ExitCounters::kMmio);
      if (exit.mmio.is_write) {
        bus.Write(IoBus::Space::kMmio, exit.mmio.gpa, exit.mmio.data, exit.mmio.size, &counters.bus);
      } else {
        bus.Read(IoBus::Space::kMmio, exit.mmio.gpa, exit.mmio.data, exit.mmio.size, &counters.bus);
      }
      return ExitAction::kContinue;
    case ExitReason::kHlt:
      counters.exits.Inc(ExitCounters::kHlt);
      return ExitAction::kHalted;
    case ExitReason::kInterrupted:
      counters.exits.Inc(ExitCounters::kInterrupted);
      return ExitAction::kInterrupted;
    case ExitReason::kShutdown:
      counters.exits.Inc(ExitCounters::kShutdown);
      return ExitAction::kGuestFailed;
    case ExitReason::kInternalError:
      counters.exits.Inc(ExitCounters::kInternalError);
      return ExitAction::kGuestFailed;
    case ExitReason::kFailEntry:
      counters.exits.Inc(ExitCounters::kFailEntry);
      return ExitAction::kGuestFailed;
    case ExitReason::kSystemEvent:
      counters.exits.Inc(ExitCounters::kSystemEvent);
      return ExitAction::kGuestFailed;
    case ExitReason::kUnknown:
      counters.exits.Inc(ExitCounters::kUnknown);
      return ExitAction::kGuestFailed;
  }
  counters.exits.Inc(ExitCounters::kUnknown);
  return ExitAction::kGuestFailed;
}

}  // namespace vmm
