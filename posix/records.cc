// posix/records.cc: a POSIX request's operation in the engine's terms (see records.h).
#include "posix/records.h"

namespace kaio::posix {

core::IoOp IoOpcode(Op op) {
  switch (op) {
    case Op::kRead:
      return core::IoOp::kRead;
    case Op::kWrite:
      return core::IoOp::kWrite;
    case Op::kFsync:
      return core::IoOp::kFsync;
    case Op::kFdsync:
      return core::IoOp::kFdsync;
    case Op::kNone:
      break;
  }
  return core::IoOp::kNone;
}

}  // namespace kaio::posix
