// Errors a collective can end with. Each maps to a Python exception class (bindings).
#pragma once
#include <stdexcept>
#include <string>

namespace far {

// Any fault of a collective: after one, the communicator is aborted on every rank.
struct CommError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Ranks called the same collective with different sizes, dtypes, ops or algorithms.
struct MismatchError : CommError {
  using CommError::CommError;
};
// The collective did not finish within the communicator's timeout.
struct CommTimeoutError : CommError {
  using CommError::CommError;
};
// Use after close(), or after an abort.
struct ClosedError : CommError {
  using CommError::CommError;
};

}  // namespace far
