// FakeVirtioBackend: a VirtioDeviceBackend for tests of the virtio-mmio
// transport and of guest drivers against it.
//
// Behaviour on a notify: each available chain's readable bytes are copied into
// its writable buffers ("echo"), or, with no readable part, the writable part is
// filled with `fill_byte`; the chain is returned with the number of bytes
// written. Knobs make it hold chains instead (returned later through
// VirtioMmioDevice::WithQueue), refuse chains with writable buffers (as a
// balloon inflate queue would), or refuse a feature set.
//
// Every callback is recorded. Called under the transport's lock only; test only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "vmm-host/virtio_mmio_device.h"
#include "vmm-host/virtqueue.h"

namespace vmm::testing {

class FakeVirtioBackend : public VirtioDeviceBackend {
 public:
  // Not a registered virtio device type (§5), so nobody mistakes it for one.
  static constexpr uint32_t kDeviceId = 0x7e;
  static constexpr uint32_t kConfigBytes = 16;

  struct Knobs {
    uint32_t device_id = kDeviceId;
    uint64_t features = (1u << 0) | (1u << 3);  // Two device-type bits.
    std::vector<uint16_t> queue_max = {256, 64};
    uint32_t config_size = kConfigBytes;
    bool accept_features = true;
    bool hold_chains = false;          // Keep chains; don't return them.
    bool refuse_writable = false;      // Fail any chain with a writable buffer.
    uint8_t fill_byte = 0xa5;
  };

  FakeVirtioBackend() : FakeVirtioBackend(Knobs{}) {}
  explicit FakeVirtioBackend(Knobs knobs) : knobs_(std::move(knobs)), config_(kMaxConfig, 0) {}

  // Set by the test to reach guest memory (echo needs it).
  GuestMemory* memory = nullptr;

  std::string_view name() const override { return "fake-virtio"; }
  uint32_t device_id() const override { return knobs_.device_id; }
  uint64_t device_features() const override { return knobs_.features; }
  uint16_t num_queues() const override { return static_cast<uint16_t>(knobs_.queue_max.size()); }
  uint16_t queue_max_size(uint16_t i) const override { return knobs_.queue_max[i]; }
  uint32_t config_size() const override { return knobs_.config_size; }
  void ReadConfig(uint32_t offset, uint8_t* data, uint32_t size) override {
    config_reads.push_back({offset, size});
    std::copy_n(config_.begin() + offset, size, data);
  }
  void WriteConfig(uint32_t offset, const uint8_t* data, uint32_t size) override {
    config_writes.push_back({offset, size});
    std::copy_n(data, size, config_.begin() + offset);
  }
  bool AcceptFeatures(uint64_t features) override {
    accepted_features.push_back(features);
    return knobs_.accept_features;
  }
  void OnDriverOk(uint64_t features) override { driver_ok_features.push_back(features); }
  void OnReset() override {
    ++resets;
    held.clear();
  }
  void OnQueueNotify(uint16_t queue_index, Virtqueue& queue) override {
    notifies.push_back(queue_index);
    DescriptorChain chain;
    while (queue.Pop(&chain) == Virtqueue::PopStatus::kOk) {
      ++chains_seen;
      if (knobs_.refuse_writable && chain.writable_bytes() != 0) {
        queue.Fail("fake backend refuses writable buffers");
        return;
      }
      if (knobs_.hold_chains) {
        held.push_back(chain.token());
        continue;
      }
      (void)queue.PushUsed(chain, Echo(chain));
    }
  }

  // Echo (or fill) one chain; returns bytes written.
  uint32_t Echo(const DescriptorChain& chain) {
    std::vector<uint8_t> data(chain.readable_bytes());
    chain.ReadReadable(*memory, 0, data.data(), data.size());
    if (data.empty()) data.assign(chain.writable_bytes(), knobs_.fill_byte);
    const uint64_t n = std::min<uint64_t>(data.size(), chain.writable_bytes());
    return static_cast<uint32_t>(chain.WriteWritable(*memory, 0, data.data(), n));
  }

  std::vector<uint8_t>& config() { return config_; }
  Knobs& knobs() { return knobs_; }

  // Observations.
  std::vector<uint16_t> notifies;
  std::vector<uint64_t> accepted_features;
  std::vector<uint64_t> driver_ok_features;
  std::vector<std::pair<uint32_t, uint32_t>> config_reads, config_writes;
  std::vector<ChainToken> held;
  uint64_t chains_seen = 0;
  int resets = 0;

 private:
  static constexpr uint32_t kMaxConfig = VirtioMmioDevice::kMaxConfigBytes;
  Knobs knobs_;
  std::vector<uint8_t> config_;
};

}  // namespace vmm::testing
