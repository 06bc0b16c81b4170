// SentencePiece models through Debian's libsentencepiece (built when CMake finds it: TTT_HAVE_SENTENCEPIECE).
#include "core/error.h"
#include "data/tokenizer_impl.h"

#if TTT_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace ttt::data::detail {

#if TTT_HAVE_SENTENCEPIECE

namespace {

// "<0xAB>" -> the byte 0xAB (SentencePiece's byte-fallback pieces).
int byte_piece_value(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  return std::stoi(piece.substr(3, 2), nullptr, 16);
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& path, int64_t eot_override) : path_(path) {
    const auto status = sp_.Load(path);
    TTT_CHECK(status.ok(), "tokenizer file '" << path << "' is neither a Hugging Face tokenizer.json nor a SentencePiece "
                                              << "model (" << status.ToString() << ")");
    vocab_ = uint32_t(sp_.GetPieceSize());
    if (eot_override >= 0) {
      TTT_CHECK(uint64_t(eot_override) < vocab_, "tokenizer file '" << path << "': --eot-token " << eot_override
                                                                    << " is outside the vocabulary [0, " << vocab_ << ")");
      eot_ = int32_t(eot_override);
    } else {
      eot_ = sp_.eos_id();
      TTT_CHECK(eot_ >= 0 && uint64_t(eot_) < vocab_,
                "tokenizer file '" << path << "': the model has no </s> (eos) piece; give --eot-token ID");
    }
    pieces_.resize(vocab_);
    for (uint32_t id = 0; id < vocab_; ++id) {
      const std::string& piece = sp_.IdToPiece(int(id));
      std::string& text = pieces_[id];
      if (sp_.IsControl(int(id))) {
        text = piece;
      } else if (sp_.IsByte(int(id))) {
        const int b = byte_piece_value(piece);
        text = b >= 0 ? std::string(1, char(b)) : piece;
      } else if (sp_.IsUnknown(int(id))) {
        text = " \xe2\x81\x87 ";  // what SentencePiece decodes <unk> to
      } else {
        // U+2581 (LOWER ONE EIGHTH BLOCK) stands for a space.
        for (size_t i = 0; i < piece.size();) {
          if (piece.compare(i, 3, "\xe2\x96\x81") == 0) {
            text.push_back(' ');
            i += 3;
          } else {
            text.push_back(piece[i++]);
          }
        }
      }
    }
  }

  std::string kind() const override { return "sentencepiece"; }
  uint32_t vocab_size() const override { return vocab_; }
  int32_t eot_id() const override { return eot_; }
  std::vector<int32_t> encode(std::string_view text, bool) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(absl::string_view(text.data(), text.size()), &ids);
    TTT_CHECK(status.ok(), "SentencePiece '" << path_ << "' cannot encode the text: " << status.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::vector<int> keep;
    keep.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      TTT_CHECK(ids[i] >= 0 && uint64_t(ids[i]) < vocab_, "decode: token " << ids[i] << " at position " << i
                                                                         << " is outside the sentencepiece vocabulary [0, "
                                                                         << vocab_ << ")");
      if (!(skip_special && is_special(ids[i]))) keep.push_back(ids[i]);
    }
    return sp_.DecodeIds(keep);
  }
  std::string token_bytes(int32_t id) const override {
    TTT_CHECK(id >= 0 && uint64_t(id) < vocab_,
              "token id " << id << " is outside the vocabulary [0, " << vocab_ << ") of '" << path_ << "'");
    return pieces_[size_t(id)];
  }
  bool is_special(int32_t id) const override { return id == eot_ || sp_.IsControl(id); }
  std::vector<std::pair<int32_t, std::string>> special_tokens() const override {
    std::vector<std::pair<int32_t, std::string>> out;
    for (uint32_t id = 0; id < vocab_; ++id)
      if (sp_.IsControl(int(id))) out.emplace_back(int32_t(id), sp_.IdToPiece(int(id)));
    return out;
  }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
  uint32_t vocab_ = 0;
  int32_t eot_ = -1;
  std::vector<std::string> pieces_;
};

}  // namespace

bool sentencepiece_available() { return true; }

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& path, int64_t eot_override) {
  return std::make_unique<SentencePieceTokenizer>(path, eot_override);
}

#else

bool sentencepiece_available() { return false; }

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& path, int64_t) {
  TTT_FAIL("tokenizer file '" << path << "': this build has no SentencePiece (install libsentencepiece-dev and rebuild)");
}

#endif

}  // namespace ttt::data::detail
