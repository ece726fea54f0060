// A small logging facility.
//
//   LOG(INFO) << "vm " << name << " started";
//   LOG(ERROR) << status;
//   VLOG(2) << "walk " << gva;        // only when the verbosity is >= 2
//
// A message is formatted into a buffer on the calling thread and handed to the
// current sink as one line, so lines from different threads never interleave.
// The default sink writes "L hh:mm:ss.uuuuuu file:line] text" to stderr. Tests
// and the VMM (per-VM log files) may install their own sink.
//
// Thread safety: every function here may be called from any thread.
#pragma once

#include <functional>
#include <sstream>
#include <string_view>

namespace base {

enum class LogSeverity : int { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kFatal = 4 };

// Messages below this severity are dropped. Default: kInfo.
void SetMinLogSeverity(LogSeverity severity);
LogSeverity MinLogSeverity();

// VLOG(n) messages are emitted when n <= the verbosity. Default: 0.
void SetLogVerbosity(int verbosity);
int LogVerbosity();

// Receives each finished line (without a trailing newline).
using LogSink = std::function<void(LogSeverity, std::string_view line)>;
// Installs a sink and returns the previous one. An empty function restores the
// default stderr sink.
LogSink SetLogSink(LogSink sink);

namespace internal {

// Collects one message and emits it on destruction. A kFatal message aborts
// the process after emitting.
class LogMessage {
 public:
  LogMessage(const char* file, int line, LogSeverity severity);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;

  std::ostream& stream() { return stream_; }

 private:
  const char* file_;
  int line_;
  LogSeverity severity_;
  std::ostringstream stream_;
};

// Lets the LOG macros be used as a statement while the message is not built
// when the severity is filtered out.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

inline bool LogEnabled(LogSeverity severity) {
  return severity == LogSeverity::kFatal || severity >= MinLogSeverity();
}

}  // namespace internal
}  // namespace base

#define BASE_LOG_SEVERITY_DEBUG ::base::LogSeverity::kDebug
#define BASE_LOG_SEVERITY_INFO ::base::LogSeverity::kInfo
#define BASE_LOG_SEVERITY_WARNING ::base::LogSeverity::kWarning
#define BASE_LOG_SEVERITY_ERROR ::base::LogSeverity::kError
#define BASE_LOG_SEVERITY_FATAL ::base::LogSeverity::kFatal

#define LOG(severity)                                                       \
  !::base::internal::LogEnabled(BASE_LOG_SEVERITY_##severity)               \
      ? (void)0                                                             \
      : ::base::internal::LogVoidify() &                                    \
            ::base::internal::LogMessage(__FILE__, __LINE__,                \
                                         BASE_LOG_SEVERITY_##severity)      \
                .stream()

#define VLOG(level)                                                         \
  ((level) > ::base::LogVerbosity())                                        \
      ? (void)0                                                             \
      : ::base::internal::LogVoidify() &                                    \
            ::base::internal::LogMessage(__FILE__, __LINE__,                \
                                         ::base::LogSeverity::kDebug)       \
                .stream()
