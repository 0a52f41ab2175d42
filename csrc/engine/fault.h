// A fault as a value: what every rank's error for a failed collective is made from. Ranks share
// faults through the store as records (encode / decode are the only codec), and a fault becomes
// the exception its kind names (raise / as_exception), so that every rank raises the same class
// with the same message.
#pragma once
#include <cstdint>
#include <exception>
#include <optional>
#include <string>

#include "common/errors.h"

namespace far {

enum class FaultKind : uint8_t {
  kMismatch,   // ranks made different calls                      -> MismatchError
  kTimeout,    // a deadline passed (ours or NCCL's watchdog's)    -> CommTimeoutError
  kError,      // a transport or library failed on some rank       -> CommError
  kAborted,    // a rank aborted (abort(), or destroyed mid-call)  -> CommError
  kStoreLost,  // the store stopped answering                      -> CommError
  kRejected,   // a rank rejected the call the others made         -> MismatchError
};
constexpr int kNumFaultKinds = 6;
const char* fault_kind_name(FaultKind k);

struct Fault {
  static constexpr int kNoRank = -1;
  static constexpr uint64_t kNoSeq = ~uint64_t(0);

  FaultKind kind = FaultKind::kError;
  int rank = kNoRank;     // the rank that found it
  uint64_t seq = kNoSeq;  // the collective it ended (kNoSeq: none in particular)
  std::string message;    // what the user reads

  // The kind of a collective's own error: by its class (MismatchError, CommTimeoutError, else kError).
  static Fault of(const CommError& e, int rank, uint64_t seq);
  // The record published in the store. Every field round-trips, messages with '|' or newlines too.
  std::string encode() const;
  // A record made by encode(), or the transport's "<kind>|<message>" (transport/nccl.h), where
  // rank and seq are unknown (an unknown kind reads as kError; text without '|' is all message).
  static Fault decode(const std::string& record);

  bool is_mismatch() const { return kind == FaultKind::kMismatch || kind == FaultKind::kRejected; }
  // The exception this fault is on every rank, its message followed by `suffix` (a rank report).
  std::exception_ptr as_exception(const std::string& suffix = "") const;
  [[noreturn]] void raise(const std::string& suffix = "") const;

  bool operator==(const Fault& o) const {
    return kind == o.kind && rank == o.rank && seq == o.seq && message == o.message;
  }
  bool operator!=(const Fault& o) const { return !(*this == o); }
};

// Why the op in progress must stop, as the watchdog found it.
enum class FailState : uint8_t {
  kNone,
  kDeadline,   // this rank's deadline passed
  kPeerAbort,  // a fault record is in the store
  kStoreLost,  // the store stopped answering
  kRejected,   // a peer rejected this very call
};

}  // namespace far
