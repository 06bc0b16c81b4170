#include "data/bpe_tables.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/error.h"

namespace ttt::data::detail {

void PairRankTable::reserve(size_t pairs) {
  size_t n = 16;
  while (n < 2 * pairs) n *= 2;
  slots_.assign(n, Slot{0, {-1, -1}});
  mask_ = n - 1;
  shift_ = 64 - std::countr_zero(n);
  size_ = 0;
}

void PairRankTable::insert(int32_t left, int32_t right, Merge m) {
  TTT_CHECK(m.rank >= 0, "PairRankTable: negative rank " << m.rank);
  if (2 * (size_ + 1) > slots_.size()) {
    // Rehash into a table twice as large.
    std::vector<Slot> old = std::move(slots_);
    reserve(std::max<size_t>(size_ + 1, old.size()));
    for (const Slot& s : old)
      if (s.m.rank >= 0) insert(int32_t(s.key >> 32), int32_t(uint32_t(s.key)), s.m);
  }
  const uint64_t key = pair_key(left, right);
  for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.m.rank < 0) {
      s = Slot{key, m};
      ++size_;
      return;
    }
    if (s.key == key) return;  // the first (lowest-rank) merge of a pair stays
  }
}

PieceCache::PieceCache(size_t max_entries, size_t max_piece_bytes)
    : max_entries_(std::max<size_t>(max_entries, 1)), max_piece_bytes_(std::min<size_t>(max_piece_bytes, 65535)) {
  slots_.assign(1024, Slot{});
  mask_ = slots_.size() - 1;
}

void PieceCache::clear() {
  std::fill(slots_.begin(), slots_.end(), Slot{});
  entries_ = 0;
  keys_.clear();
  ids_.clear();
}

void PieceCache::grow() {
  std::vector<Slot> old(2 * slots_.size(), Slot{});
  old.swap(slots_);
  mask_ = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.id_count == 0) continue;
    size_t i = size_t(s.hash) & mask_;
    while (slots_[i].id_count != 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

void PieceCache::insert(std::string_view piece, uint64_t head, uint64_t h, const int32_t* ids, size_t count) {
  if (piece.size() > max_piece_bytes_ || count == 0 || count > 65535) return;
  if (entries_ >= max_entries_) clear();
  // At most half full: grow while entries may still be added (the table stops at 2 x max_entries slots).
  if (2 * (entries_ + 1) > slots_.size()) grow();
  size_t i = size_t(h) & mask_;
  while (slots_[i].id_count != 0) i = (i + 1) & mask_;
  slots_[i] = Slot{h, head, uint32_t(keys_.size()), count == 1 ? ids[0] : int32_t(ids_.size()), uint16_t(piece.size()),
                   uint16_t(count)};
  if (piece.size() > 8) keys_.append(piece);
  if (count > 1) ids_.insert(ids_.end(), ids, ids + count);
  ++entries_;
}

}  // namespace ttt::data::detail
