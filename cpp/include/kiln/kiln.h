#pragma once
// kiln's public C++ API.
#include "kiln/autodiff.h"
#include "kiln/cuda.h"
#include "kiln/dtype.h"
#include "kiln/error.h"
#include "kiln/function.h"
#include "kiln/graph.h"
#include "kiln/io.h"
#include "kiln/op.h"
#include "kiln/ops.h"
#include "kiln/shape.h"
#include "kiln/tensor.h"
#include "kiln/threads.h"
