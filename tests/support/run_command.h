// Runs a shell command and collects its exit status and combined output: the
// CLI tests drive the real `vmm` binary this way.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace vmm::testing {

struct CommandResult {
  int status = -1;  // the exit status, or -1 if it did not exit normally
  std::string out;  // stdout and stderr
};

inline CommandResult RunCommand(const std::string& command) {
  const std::string cmd = command + " 2>&1";
  CommandResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace vmm::testing
