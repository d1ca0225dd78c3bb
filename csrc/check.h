// Precondition checks shared by the CPU and CUDA modules.
//
// Python validates dtypes, shapes and scalar ranges before calling in; these
// macros re-check what the kernels rely on so that a direct call of the native
// module cannot read or write out of bounds. pybind11 turns
// std::invalid_argument into ValueError and std::out_of_range into IndexError.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#define SEPFL_THROW_(kind, msg)                 \
  do {                                          \
    std::ostringstream sepfl_os_;               \
    sepfl_os_ << msg;                           \
    throw kind(sepfl_os_.str());                \
  } while (0)

// Argument or value problem -> ValueError.
#define SEPFL_CHECK(cond, msg)                                  \
  do {                                                          \
    if (!(cond)) SEPFL_THROW_(std::invalid_argument, msg);      \
  } while (0)

// Index out of range -> IndexError.
#define SEPFL_CHECK_INDEX(cond, msg)                            \
  do {                                                          \
    if (!(cond)) SEPFL_THROW_(std::out_of_range, msg);          \
  } while (0)
