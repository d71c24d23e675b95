// posix/startup.h: the process-wide State's start (on the first submission, with Configure()'s
// options or the environment's), its fate at fork() (the child forgets it and starts its own) and
// at exit (never destroyed; KAIO_POSIX_STATS prints its counters), and Submit, the path that
// aio_read, aio_write and aio_fsync share.
//
// Threading: any thread. g_init_mu guards start-up and the configuration below; the pthread_atfork
// handlers hold it across fork(), so a child never starts with it held. Once started, GetState is
// one load.
//
// Memory ordering: StartSlow publishes the new State with a release store of g_state, under
// g_init_mu; GetState loads it with acquire, so a thread that sees the pointer sees the State
// constructed.
//
// Relies on: posix/state.h; kaio/posix_options.h (OptionsFromEnvironment); kaio::Service::Create.
#ifndef KAIO_POSIX_STARTUP_H_
#define KAIO_POSIX_STARTUP_H_

#include <aio.h>

#include <mutex>

#include "kaio/posix_options.h"
#include "posix/records.h"
#include "posix/state.h"

namespace kaio::posix {

// Guards start-up; no global here has a destructor (threads may run while the program exits).
extern std::mutex g_init_mu;
extern bool g_config_failed;        // a malformed option: every submission fails with EINVAL
extern PosixOptions* g_configured;    // Configure()'s options, if any

// The pthread_atfork handlers (registered when the library is loaded): the child forgets the
// parent's State.
void AtforkPrepare();
void AtforkParent();
void AtforkChild();

// The atexit handler of KAIO_POSIX_STATS: the counters, on stderr.
void PrintStatsAtExit();

// Starts the State under g_init_mu (or finds it started). Null when it cannot start, with *error
// EINVAL (a malformed option: every later call fails the same way) or EAGAIN.
State* StartSlow(int* error);
// The State, started on the first call (see StartSlow).
State* GetState(int* error);

// aio_read, aio_write, aio_fsync once their own arguments are checked: 0, or -1 with errno (the
// aiocb then reports the error too).
int Submit(struct aiocb* cb, Op op);

}  // namespace kaio::posix

#endif  // KAIO_POSIX_STARTUP_H_
