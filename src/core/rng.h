// Seeded, platform-independent RNG (xoshiro256**), with a serializable state so that
// training can resume bit-identically.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

namespace ttt {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed) {
    uint64_t x = seed;
    for (auto& s : state_) s = splitmix(x);
    has_spare_ = false;
  }
  uint64_t next_u64() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return n ? next_u64() % n : 0; }
  // Standard normal (Box-Muller; the spare value is part of the state).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * M_PI * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * M_PI * u2);
  }

  // Serialization: 4 state words, spare flag and spare value bits.
  std::array<uint64_t, 6> save() const {
    uint64_t spare_bits;
    static_assert(sizeof(double) == 8);
    __builtin_memcpy(&spare_bits, &spare_, 8);
    return {state_[0], state_[1], state_[2], state_[3], uint64_t(has_spare_), spare_bits};
  }
  void load(const std::array<uint64_t, 6>& s) {
    for (int i = 0; i < 4; ++i) state_[size_t(i)] = s[size_t(i)];
    has_spare_ = s[4] != 0;
    __builtin_memcpy(&spare_, &s[5], 8);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t splitmix(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  std::array<uint64_t, 4> state_{};
  bool has_spare_ = false;
  double spare_ = 0;
};

}  // namespace ttt
