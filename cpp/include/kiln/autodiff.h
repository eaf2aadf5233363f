#pragma once
#include <vector>

#include "kiln/graph.h"

namespace kiln {

// Symbolic reverse-mode differentiation: adds the backward pass for d y / d wrt to y's graph
// and returns one gradient per `wrt` (zeros where y does not depend on it). y must be a
// one-element float tensor unless grad_output (y's shape) is given. The result is an ordinary
// graph: it can be compiled, saved, and differentiated again.
std::vector<Value> grad(const Value& y, const std::vector<Value>& wrt, const Value& grad_output = {});

}  // namespace kiln
