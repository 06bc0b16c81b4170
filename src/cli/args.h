// Command-line flags: "--name value" or "--name=value"; boolean flags take no value.
// Every flag a command reads must be declared, so unknown flags are reported.
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"

namespace ttt::cli {

class Args {
 public:
  // argv holds only the command's own arguments (after "ttt <command> [<sub>]").
  Args(std::vector<std::string> argv, std::string command) : argv_(std::move(argv)), command_(std::move(command)) {}

  // Declare flags before parse(). Value flags take one argument; switches take none.
  Args& value(const std::string& name, const std::string& help, const std::string& def = "");
  Args& flag(const std::string& name, const std::string& help);
  void parse();  // throws ttt::Error on an unknown flag or a missing value

  bool has(const std::string& name) const;  // given on the command line
  std::string str(const std::string& name) const;  // value or default
  int64_t i64(const std::string& name) const;
  double f64(const std::string& name) const;
  // Comma-separated lists ("1024,4096", "0,0.5,1"): at least one item, each a whole integer / number.
  std::vector<int64_t> i64_list(const std::string& name) const;
  std::vector<double> f64_list(const std::string& name) const;
  bool on(const std::string& name) const;  // switch given
  std::string usage() const;
  bool help_requested() const { return help_; }

 private:
  struct Spec {
    bool takes_value;
    std::string help, def;
  };
  std::vector<std::string> argv_;
  std::string command_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::string> values_;
  bool help_ = false;
};

}  // namespace ttt::cli
