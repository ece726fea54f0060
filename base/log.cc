#include "base/log.h"

#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <utility>

namespace base {
namespace {

std::atomic<int> g_min_severity{static_cast<int>(LogSeverity::kInfo)};
std::atomic<int> g_verbosity{0};

std::mutex& SinkMutex() {
  static std::mutex mu;
  return mu;
}
LogSink& Sink() {
  static LogSink sink;
  return sink;
}

char SeverityLetter(LogSeverity severity) {
  switch (severity) {
    case LogSeverity::kDebug: return 'D';
    case LogSeverity::kInfo: return 'I';
    case LogSeverity::kWarning: return 'W';
    case LogSeverity::kError: return 'E';
    case LogSeverity::kFatal: return 'F';
  }
  return '?';
}

const char* Basename(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

}  // namespace

void SetMinLogSeverity(LogSeverity severity) {
  g_min_severity.store(static_cast<int>(severity), std::memory_order_relaxed);
}
LogSeverity MinLogSeverity() {
  return static_cast<LogSeverity>(g_min_severity.load(std::memory_order_relaxed));
}
void SetLogVerbosity(int verbosity) { g_verbosity.store(verbosity, std::memory_order_relaxed); }
int LogVerbosity() { return g_verbosity.load(std::memory_order_relaxed); }

LogSink SetLogSink(LogSink sink) {
  std::lock_guard<std::mutex> lock(SinkMutex());
  return std::exchange(Sink(), std::move(sink));
}

namespace internal {

LogMessage::LogMessage(const char* file, int line, LogSeverity severity)
    : file_(file), line_(line), severity_(severity) {}

LogMessage::~LogMessage() {
  timeval tv;
  gettimeofday(&tv, nullptr);
  tm local;
  localtime_r(&tv.tv_sec, &local);
  char prefix[64];
  std::snprintf(prefix, sizeof(prefix), "%c %02d:%02d:%02d.%06ld ", SeverityLetter(severity_),
                local.tm_hour, local.tm_min, local.tm_sec, static_cast<long>(tv.tv_usec));
  std::string line = prefix;
  line += Basename(file_);
  line += ':';
  line += std::to_string(line_);
  line += "] ";
  line += stream_.str();
  {
    std::lock_guard<std::mutex> lock(SinkMutex());
    if (Sink()) {
      Sink()(severity_, line);
    } else {
      line += '\n';
      // One write(2) per line keeps lines whole even across processes.
      [[maybe_unused]] ssize_t written = ::write(STDERR_FILENO, line.data(), line.size());
    }
  }
  if (severity_ == LogSeverity::kFatal) {
    if (Sink()) {
      // A test sink may swallow the line; make sure a fatal reason is seen.
      line += '\n';
      [[maybe_unused]] ssize_t written = ::write(STDERR_FILENO, line.data(), line.size());
    }
    std::abort();
  }
}

}  // namespace internal
}  // namespace base
