// posix/records.cc: a POSIX request's opcode for the engine (see records.h).
#include "posix/records.h"

#include <libaio.h>

namespace kaio::posix {

short IoOpcode(Op op) {
  switch (op) {
    case Op::kRead:
      return IO_CMD_PREAD;
    case Op::kWrite:
      return IO_CMD_PWRITE;
    case Op::kFsync:
      return IO_CMD_FSYNC;
    case Op::kFdsync:
      return IO_CMD_FDSYNC;
    case Op::kNone:
      break;
  }
  return IO_CMD_NOOP;
}

}  // namespace kaio::posix
