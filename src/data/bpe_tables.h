// Internal: the two lookup tables of the byte-level BPE encoder (tokenizer_bpe.cpp), flat and open-addressed so
// that a lookup is one or two cache lines: the merge ranks of token pairs, and the cache of pieces already encoded.
// std::unordered_map cost the encoder about half of its time (a node per entry, a modulo per lookup, a heap
// vector per cached piece).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace ttt::data::detail {

// The bytes of a string of at most 8 bytes packed into a word (distinct strings of one length give distinct
// words), by loads that stay inside the string; for a longer one, its first 8 bytes.
inline uint64_t pack_head(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  if (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    return w;
  }
  if (n >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + n - 4, 4);
    return uint64_t(lo) | uint64_t(hi) << 32;
  }
  if (n == 0) return 0;
  return uint64_t(p[0]) | uint64_t(p[n / 2]) << 8 | uint64_t(p[n - 1]) << 16;
}

// 64-bit hash of a byte string, 8 bytes at a time (keys are short pieces of text; speed over strength). `head`
// is pack_head(s).
inline uint64_t hash_bytes(std::string_view s, uint64_t head) {
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  const size_t n = s.size();
  uint64_t h = (kMul ^ (uint64_t(n) * 0xbf58476d1ce4e5b9ull)) ^ head;
  h *= kMul;
  h ^= h >> 29;
  if (n > 8) {
    // The rest 8 bytes at a time, the last word overlapping the one before it.
    for (size_t i = 8;; i += 8) {
      uint64_t w;
      std::memcpy(&w, s.data() + std::min(i, n - 8), 8);
      h = (h ^ w) * kMul;
      h ^= h >> 29;
      if (i + 8 >= n) break;
    }
  }
  // Final mix so that the low bits (the cache's slot index) depend on every input bit.
  h *= 0x94d049bb133111ebull;
  h ^= h >> 32;
  return h;
}
inline uint64_t hash_bytes(std::string_view s) { return hash_bytes(s, pack_head(s)); }

// The merges of a BPE model: pair (left id, right id) -> (rank, merged id). The first insertion of a pair wins
// (the lowest rank, as the reference keeps it).
class PairRankTable {
 public:
  struct Merge {
    int32_t rank, id;
  };
  // Sized for `pairs` insertions (at most half full).
  void reserve(size_t pairs);
  void insert(int32_t left, int32_t right, Merge m);
  // nullptr when the pair has no merge.
  const Merge* find(int32_t left, int32_t right) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = pair_key(left, right);
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.m.rank < 0) return nullptr;
      if (s.key == key) return &s.m;
    }
  }
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t key;
    Merge m;  // rank < 0: empty
  };
  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  size_t slot_of(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_) & mask_; }
  std::vector<Slot> slots_;
  size_t mask_ = 0, size_ = 0;
  int shift_ = 64;
};

// Pieces already encoded and their ids. Keys and ids live in two arenas; a slot holds the key's hash and where
// its bytes and ids are. Grows from a small table up to `max_entries`; a full cache is emptied and starts over
// (text with more distinct pieces than that keeps its most recent ones).
class PieceCache {
 public:
  explicit PieceCache(size_t max_entries, size_t max_piece_bytes);
  // The ids of `piece` (`head` = pack_head(piece), `h` = hash_bytes(piece, head)), or nullptr; `count`
  // receives their number.
  const int32_t* find(std::string_view piece, uint64_t head, uint64_t h, size_t& count) const {
    for (size_t i = size_t(h) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.id_count == 0) return nullptr;
      if (s.hash == h && s.head == head && s.key_len == piece.size() &&
          (piece.size() <= 8 || std::memcmp(keys_.data() + s.key_offset + 8, piece.data() + 8, piece.size() - 8) == 0)) {
        count = s.id_count;
        return s.id_count == 1 ? &s.ids : ids_.data() + s.ids;
      }
    }
  }
  // Adds `piece` (not present; skipped when longer than max_piece_bytes or without ids).
  void insert(std::string_view piece, uint64_t head, uint64_t h, const int32_t* ids, size_t count);
  size_t size() const { return entries_; }
  size_t capacity() const { return slots_.size(); }
  void clear();

 private:
  // Keys of at most 8 bytes are compared in the slot (head); a single id is held in it (ids), more are in the
  // arena from offset ids. Most lookups touch one slot and nothing else.
  struct Slot {
    uint64_t hash, head;
    uint32_t key_offset;  // the key's bytes in keys_ (only keys longer than 8 bytes are stored)
    int32_t ids;
    uint16_t key_len, id_count;  // id_count 0: empty (a piece has at least one id)
  };
  void grow();
  size_t max_entries_, max_piece_bytes_;
  std::vector<Slot> slots_;
  size_t mask_ = 0, entries_ = 0;
  std::string keys_;
  std::vector<int32_t> ids_;
};

}  // namespace ttt::data::detail
