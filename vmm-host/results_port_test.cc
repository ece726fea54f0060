#include "vmm-host/results_port.h"

#include <cstring>
#include <string>

#include "gmock/gmock.h"
#include "guest/abi.h"
#include "gtest/gtest.h"
#include "vmm-host/io_bus.h"

namespace vmm {
namespace {

void Outl(IoBus& bus, uint16_t port, uint32_t value) {
  bus.Write(IoBus::Space::kPio, port, reinterpret_cast<const uint8_t*>(&value), 4);
}

// A copy of guest/kernel/proc.cc PublishResult's port sequence: "<proc>.<key>"
// cut at kResultsMaxNameBytes - 1, NUL-padded to a multiple of 4, 4 bytes per
// write; then the value's low and high halves (the high half commits).
void PublishResult(IoBus& bus, const char* proc, const char* key, uint64_t value) {
  char name[guest::kResultsMaxNameBytes];
  uint32_t n = 0;
  for (const char* s = proc; *s && n < sizeof(name) - 1; ++s) name[n++] = *s;
  if (n < sizeof(name) - 1) name[n++] = '.';
  for (const char* s = key; *s && n < sizeof(name) - 1; ++s) name[n++] = *s;
  while (n % 4 != 0) name[n++] = 0;
  for (uint32_t i = 0; i < n; i += 4) {
    uint32_t word;
    std::memcpy(&word, name + i, 4);
    Outl(bus, guest::kResultsNamePort, word);
  }
  Outl(bus, guest::kResultsValueLowPort, static_cast<uint32_t>(value));
  Outl(bus, guest::kResultsValueHighPort, static_cast<uint32_t>(value >> 32));
}

class ResultsPortTest : public ::testing::Test {
 protected:
  void SetUp() override { Make({}); }
  void Make(ResultsPortOptions options) {
    bus_ = std::make_unique<IoBus>();
    port_ = std::make_shared<ResultsPort>(std::move(options));
    ASSERT_TRUE(bus_->Register(IoBus::Space::kPio, ResultsPort::kBasePort,
                               ResultsPort::kRegisterBytes, port_)
                    .ok());
  }
  std::unique_ptr<IoBus> bus_;
  std::shared_ptr<ResultsPort> port_;
};

TEST_F(ResultsPortTest, PortsMatchGuestAbi) {
  EXPECT_EQ(ResultsPort::kBasePort, 0x700);
  EXPECT_EQ(ResultsPort::kBasePort + ResultsPort::kValueLowOffset, guest::kResultsValueLowPort);
  EXPECT_EQ(ResultsPort::kBasePort + ResultsPort::kValueHighOffset, guest::kResultsValueHighPort);
}

TEST_F(ResultsPortTest, CollectsResultsInOrderAsTheKernelWritesThem) {
  PublishResult(*bus_, "memtouch", "pages", 4096);
  PublishResult(*bus_, "memtouch", "checksum_ok", 1);
  PublishResult(*bus_, "fork", "ns_per_fork", 0x123456789abcdefull);
  PublishResult(*bus_, "abc", "d", 7);  // "abc.d" + 3 NULs: two words
  PublishResult(*bus_, "ab", "c", 8);   // "ab.c": exactly one word, no NUL sent
  EXPECT_THAT(port_->results(),
              ::testing::ElementsAre(GuestResult{"memtouch.pages", 4096},
                                     GuestResult{"memtouch.checksum_ok", 1},
                                     GuestResult{"fork.ns_per_fork", 0x123456789abcdefull},
                                     GuestResult{"abc.d", 7}, GuestResult{"ab.c", 8}));
  EXPECT_EQ(port_->Find("memtouch.pages"), 4096u);
  EXPECT_EQ(port_->Find("nope"), std::nullopt);
  EXPECT_EQ(port_->counters().Get(ResultsCounters::kResults), 5u);
}

TEST_F(ResultsPortTest, LongestKernelNameIsKeptWhole) {
  // The kernel cuts "<proc>.<key>" at 31 bytes and pads to 32.
  PublishResult(*bus_, "averyveryverylongprocessname", "andakeytoo", 5);
  const auto results = port_->results();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].name, std::string("averyveryverylongprocessname.andakeytoo").substr(0, 31));
  EXPECT_EQ(port_->counters().Get(ResultsCounters::kNameTruncated), 0u);
}

TEST_F(ResultsPortTest, OnResultCallbackSeesEachCommit) {
  std::vector<std::string> seen;
  ResultsPortOptions options;
  options.on_result = [&](const GuestResult& r) { seen.push_back(r.name + "=" + std::to_string(r.value)); };
  Make(std::move(options));
  PublishResult(*bus_, "w", "x", 1);
  PublishResult(*bus_, "w", "y", 2);
  EXPECT_THAT(seen, ::testing::ElementsAre("w.x=1", "w.y=2"));
}

TEST_F(ResultsPortTest, HostileFloodIsCapped) {
  ResultsPortOptions options;
  options.max_results = 100;
  Make(std::move(options));
  for (int i = 0; i < 100000; ++i) PublishResult(*bus_, "flood", "x", i);
  EXPECT_EQ(port_->results().size(), 100u);
  EXPECT_EQ(port_->results().back().value, 99u);
  EXPECT_EQ(port_->counters().Get(ResultsCounters::kDropped), 100000u - 100);
}

TEST_F(ResultsPortTest, HostileNamesAreBounded) {
  // 10,000 name words without a commit: the name stays at kMaxNameBytes.
  for (int i = 0; i < 10000; ++i) Outl(*bus_, guest::kResultsNamePort, 0x41414141);  // "AAAA"
  Outl(*bus_, guest::kResultsValueLowPort, 1);
  Outl(*bus_, guest::kResultsValueHighPort, 0);
  auto results = port_->results();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].name, std::string(ResultsPort::kMaxNameBytes, 'A'));
  EXPECT_EQ(port_->counters().Get(ResultsCounters::kNameTruncated), 1u);

  // Control bytes become '?'.
  Outl(*bus_, guest::kResultsNamePort, 0x0a1b4242);  // "BB\x1b\n"
  Outl(*bus_, guest::kResultsValueHighPort, 0);
  // A commit without a name is dropped; the next record starts clean.
  Outl(*bus_, guest::kResultsValueLowPort, 77);
  Outl(*bus_, guest::kResultsValueHighPort, 0);
  Outl(*bus_, guest::kResultsNamePort, 0x00000000);  // empty name (NUL first)
  Outl(*bus_, guest::kResultsValueHighPort, 0);
  results = port_->results();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[1].name, "BB??");
  EXPECT_EQ(results[1].value, 0u);  // low half reset by the previous commit
  EXPECT_EQ(port_->counters().Get(ResultsCounters::kEmptyName), 2u);
}

TEST_F(ResultsPortTest, NonProtocolAccessesAreCountedAndIgnored) {
  const uint8_t b = 'x';
  bus_->Write(IoBus::Space::kPio, guest::kResultsNamePort, &b, 1);   // outb
  const uint16_t w = 0x4141;
  bus_->Write(IoBus::Space::kPio, guest::kResultsNamePort + 2, reinterpret_cast<const uint8_t*>(&w), 2);
  Outl(*bus_, guest::kResultsValueHighPort, 0);  // commit with no name: dropped
  EXPECT_TRUE(port_->results().empty());
  EXPECT_EQ(port_->counters().Get(ResultsCounters::kBadAccess), 2u);
  uint32_t v = 0xffffffff;
  bus_->Read(IoBus::Space::kPio, guest::kResultsNamePort, reinterpret_cast<uint8_t*>(&v), 4);
  EXPECT_EQ(v, 0u);
}

}  // namespace
}  // namespace vmm
