// The fault record codec. A record is "far1|<kind>|<rank>|<seq>|<message>": the message is the
// last field, so it may hold any character; the fields before it are never empty.
#include "engine/fault.h"

#include <array>
#include <cerrno>
#include <cstdlib>

namespace far {
namespace {

constexpr const char* kRecordTag = "far1";
// Names on the wire. The first three are also the transport's kinds ("fault" is its error).
constexpr std::array<const char*, kNumFaultKinds> kNames = {"mismatch", "timeout", "fault",
                                                            "aborted", "store_lost", "rejected"};

std::optional<FaultKind> kind_named(const std::string& s) {
  for (int i = 0; i < kNumFaultKinds; ++i)
    if (s == kNames[i]) return static_cast<FaultKind>(i);
  return std::nullopt;
}

// Splits the field that starts at `pos` off `s`; false when no '|' ends it.
bool field(const std::string& s, size_t& pos, std::string* out) {
  const size_t bar = s.find('|', pos);
  if (bar == std::string::npos) return false;
  *out = s.substr(pos, bar - pos);
  pos = bar + 1;
  return true;
}

template <class T>
bool number(const std::string& s, T* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno || *end) return false;
  *out = static_cast<T>(v);
  return true;
}

}  // namespace

const char* fault_kind_name(FaultKind k) { return kNames[static_cast<int>(k)]; }

Fault Fault::of(const CommError& e, int rank, uint64_t seq) {
  const FaultKind k = dynamic_cast<const MismatchError*>(&e)      ? FaultKind::kMismatch
                      : dynamic_cast<const CommTimeoutError*>(&e) ? FaultKind::kTimeout
                                                                  : FaultKind::kError;
  return Fault{k, rank, seq, e.what()};
}

std::string Fault::encode() const {
  // seq as a signed number: kNoSeq is then "-1", like kNoRank.
  return std::string(kRecordTag) + "|" + fault_kind_name(kind) + "|" + std::to_string(rank) + "|" +
         std::to_string(static_cast<int64_t>(seq)) + "|" + message;
}

Fault Fault::decode(const std::string& record) {
  size_t pos = 0;
  std::string tag, kind, rank, seq;
  Fault f;
  if (field(record, pos, &tag) && tag == kRecordTag && field(record, pos, &kind) && field(record, pos, &rank) &&
      field(record, pos, &seq)) {
    const auto k = kind_named(kind);
    int64_t s = 0;
    if (k && number(rank, &f.rank) && number(seq, &s)) {
      f.kind = *k;
      f.seq = static_cast<uint64_t>(s);
      f.message = record.substr(pos);
      return f;
    }
  }
  f = Fault{};
  const size_t bar = record.find('|');
  const auto k = bar == std::string::npos ? std::nullopt : kind_named(record.substr(0, bar));
  f.kind = k.value_or(FaultKind::kError);
  f.message = bar == std::string::npos ? record : record.substr(bar + 1);
  return f;
}

std::exception_ptr Fault::as_exception(const std::string& suffix) const {
  const std::string msg = message + suffix;
  if (is_mismatch()) return std::make_exception_ptr(MismatchError(msg));
  if (kind == FaultKind::kTimeout) return std::make_exception_ptr(CommTimeoutError(msg));
  return std::make_exception_ptr(CommError(msg));
}

void Fault::raise(const std::string& suffix) const { std::rethrow_exception(as_exception(suffix)); }

}  // namespace far
