#pragma once
#include <stdexcept>
#include <string>

namespace kiln {

// Every user-facing failure: bad shapes, bad feeds, bad files. Python maps it to kiln.Error.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

}  // namespace kiln
