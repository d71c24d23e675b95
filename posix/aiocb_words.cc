// posix/aiocb_words.cc: the pid cache behind the owner word (see aiocb_words.h).
#include "posix/aiocb_words.h"

#include <atomic>

namespace kaio::posix {

std::atomic<int> g_pid{0};

}  // namespace kaio::posix
