#include "cli/args.h"

#include <sstream>
#include <type_traits>

namespace ttt::cli {

Args& Args::value(const std::string& name, const std::string& help, const std::string& def) {
  specs_[name] = Spec{true, help, def};
  order_.push_back(name);
  return *this;
}
Args& Args::flag(const std::string& name, const std::string& help) {
  specs_[name] = Spec{false, help, ""};
  order_.push_back(name);
  return *this;
}

void Args::parse() {
  for (size_t i = 0; i < argv_.size(); ++i) {
    std::string a = argv_[i];
    if (a == "-h" || a == "--help") {
      help_ = true;
      continue;
    }
    TTT_CHECK(a.rfind("--", 0) == 0, "ttt " << command_ << ": unexpected argument '" << a << "'\n" << usage());
    std::string name = a.substr(2), val;
    bool inline_val = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      val = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_val = true;
    }
    auto it = specs_.find(name);
    TTT_CHECK(it != specs_.end(), "ttt " << command_ << ": unknown flag --" << name << "\n" << usage());
    if (it->second.takes_value) {
      if (!inline_val) {
        TTT_CHECK(i + 1 < argv_.size(), "ttt " << command_ << ": flag --" << name << " needs a value");
        val = argv_[++i];
      }
      values_[name] = val;
    } else {
      TTT_CHECK(!inline_val, "ttt " << command_ << ": flag --" << name << " takes no value");
      values_[name] = "1";
    }
  }
}

bool Args::has(const std::string& name) const { return values_.count(name) > 0; }

std::string Args::str(const std::string& name) const {
  auto it = specs_.find(name);
  TTT_CHECK(it != specs_.end(), "internal: flag --" << name << " was not declared");
  auto v = values_.find(name);
  return v != values_.end() ? v->second : it->second.def;
}

namespace {

// `s` as a whole number of type T (std::stoll / std::stod on all of it); throws on anything else.
template <class T>
T parse_whole(const std::string& s) {
  size_t pos = 0;
  T v;
  if constexpr (std::is_integral_v<T>) v = T(std::stoll(s, &pos));
  else v = T(std::stod(s, &pos));
  TTT_CHECK(pos == s.size(), "");
  return v;
}

// The comma-separated items of `s`, each a whole number.
template <class T>
std::vector<T> parse_list(const std::string& s) {
  std::vector<T> out;
  size_t begin = 0;
  while (true) {
    const size_t comma = s.find(',', begin);
    out.push_back(parse_whole<T>(s.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin)));
    if (comma == std::string::npos) return out;
    begin = comma + 1;
  }
}

// The flag's value read by `parse`; anything it rejects is an error naming the flag and what it expects.
template <class T>
T parse_flag(const std::string& command, const std::string& name, const std::string& value, const char* expects,
             T (*parse)(const std::string&)) {
  try {
    return parse(value);
  } catch (...) {
    TTT_FAIL("ttt " << command << ": --" << name << " expects " << expects << ", got '" << value << "'");
  }
}

}  // namespace

int64_t Args::i64(const std::string& name) const {
  return parse_flag(command_, name, str(name), "an integer", parse_whole<int64_t>);
}
double Args::f64(const std::string& name) const {
  return parse_flag(command_, name, str(name), "a number", parse_whole<double>);
}
std::vector<int64_t> Args::i64_list(const std::string& name) const {
  return parse_flag(command_, name, str(name), "a comma-separated list of integers", parse_list<int64_t>);
}
std::vector<double> Args::f64_list(const std::string& name) const {
  return parse_flag(command_, name, str(name), "a comma-separated list of numbers", parse_list<double>);
}

bool Args::on(const std::string& name) const { return has(name) && !specs_.at(name).takes_value; }

std::string Args::usage() const {
  std::ostringstream os;
  os << "usage: ttt " << command_ << " [flags]\n";
  for (auto& n : order_) {
    const Spec& s = specs_.at(n);
    os << "  --" << n << (s.takes_value ? " VALUE" : "") << "\n      " << s.help;
    if (s.takes_value && !s.def.empty()) os << " (default: " << s.def << ")";
    os << "\n";
  }
  return os.str();
}

}  // namespace ttt::cli
