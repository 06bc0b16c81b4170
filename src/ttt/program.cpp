#include "ttt/program.h"

#include <algorithm>
#include <sstream>

#include "core/error.h"

namespace ttt::engine {

void Program::validate() const {
  TTT_CHECK(num_tokens > 0, "program over " << num_tokens << " tokens");
  for (size_t i = 0; i < ops.size(); ++i) {
    const auto& op = ops[i];
    if (op.kind == OpKind::Reset) continue;
    TTT_CHECK(0 <= op.begin && op.begin < op.end && op.end <= num_tokens,
              "program op " << i << " has range [" << op.begin << "," << op.end << ") outside [0," << num_tokens
                            << ") or empty");
  }
}

std::string Program::to_string() const {
  std::ostringstream os;
  for (size_t i = 0; i < ops.size(); ++i) {
    const auto& op = ops[i];
    if (i) os << "; ";
    if (op.kind == OpKind::Reset) os << "reset";
    else os << (op.kind == OpKind::Apply ? "apply " : "update ") << op.begin << " " << op.end;
  }
  return os.str();
}

int64_t Program::num_updates() const {
  return std::count_if(ops.begin(), ops.end(), [](const ProgramOp& o) { return o.kind != OpKind::Apply; });
}

Program causal_program(int64_t n, int64_t chunk, int64_t reset_every) {
  TTT_CHECK(n > 0, "causal program over " << n << " tokens");
  TTT_CHECK(chunk > 0, "chunk size must be positive, got " << chunk);
  TTT_CHECK(reset_every >= 0, "reset interval must be non-negative, got " << reset_every);
  Program p;
  p.num_tokens = n;
  const int64_t shard = reset_every > 0 ? reset_every : n;
  for (int64_t s0 = 0; s0 < n; s0 += shard) {
    if (s0 > 0) p.ops.push_back({OpKind::Reset, 0, 0});
    const int64_t s1 = std::min(n, s0 + shard);
    for (int64_t c0 = s0; c0 < s1; c0 += chunk) {
      const int64_t c1 = std::min(s1, c0 + chunk);
      p.ops.push_back({OpKind::Apply, c0, c1});
      if (c1 < s1) p.ops.push_back({OpKind::Update, c0, c1});
    }
  }
  return p;
}

Program chain_span_program(int64_t n, int64_t chunk, bool continues) {
  Program p = causal_program(n, chunk);
  if (continues) p.ops.push_back({OpKind::Update, (n - 1) / chunk * chunk, n});
  return p;
}

Program bidirectional_program(int64_t n, int64_t chunk) {
  TTT_CHECK(n > 0, "bidirectional program over " << n << " tokens");
  TTT_CHECK(chunk > 0, "chunk size must be positive, got " << chunk);
  Program p;
  p.num_tokens = n;
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t c1 = std::min(n, c0 + chunk);
    p.ops.push_back({OpKind::Update, c0, c1});
    p.ops.push_back({OpKind::Apply, c0, c1});
  }
  return p;
}

Program parse_program(const std::string& text, int64_t n) {
  Program p;
  p.num_tokens = n;
  std::string norm = text;
  std::replace(norm.begin(), norm.end(), '\n', ';');
  std::istringstream all(norm);
  std::string item;
  while (std::getline(all, item, ';')) {
    std::istringstream is(item);
    std::string word;
    if (!(is >> word)) continue;
    if (word == "reset") {
      p.ops.push_back({OpKind::Reset, 0, 0});
    } else if (word == "apply" || word == "update") {
      int64_t b, e;
      TTT_CHECK(bool(is >> b >> e), "program: '" << item << "' needs a begin and an end token");
      p.ops.push_back({word == "apply" ? OpKind::Apply : OpKind::Update, b, e});
    } else {
      TTT_FAIL("program: unknown operation '" << word << "' (expected apply, update or reset)");
    }
    std::string extra;
    TTT_CHECK(!(is >> extra), "program: unexpected '" << extra << "' in '" << item << "'");
  }
  TTT_CHECK(!p.ops.empty(), "program is empty");
  p.validate();
  return p;
}

}  // namespace ttt::engine
