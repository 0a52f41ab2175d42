// Errors a collective can end with, and the argument errors the front door raises. Each maps to
// a Python exception class (bindings) and to torch's error types (backend).
#pragma once
#include <stdexcept>
#include <string>

namespace far {

// Any fault of a collective: after one, the communicator is aborted on every rank.
struct CommError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Ranks called the same collective with different kinds, sizes, dtypes, ops or roots, or some
// rank rejected a call the others made.
struct MismatchError : CommError {
  using CommError::CommError;
};
// The collective did not finish within the communicator's timeout.
struct CommTimeoutError : CommError {
  using CommError::CommError;
};
// Use after close(), after an abort, or in a forked child.
struct ClosedError : CommError {
  using CommError::CommError;
};

// A call rejected on this rank before any data moved. `type` picks the Python class.
struct ArgError : std::invalid_argument {
  enum Type { kType, kValue, kNotImplemented };
  ArgError(Type t, const std::string& what) : std::invalid_argument(what), type(t) {}
  Type type;
};
inline ArgError type_error(const std::string& w) { return ArgError(ArgError::kType, w); }
inline ArgError value_error(const std::string& w) { return ArgError(ArgError::kValue, w); }
inline ArgError not_implemented(const std::string& w) { return ArgError(ArgError::kNotImplemented, w); }

}  // namespace far
