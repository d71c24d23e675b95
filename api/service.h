// kaio/service.h: the completion service. One per process is typical; it owns the submitter and
// reaper threads, the kernel AIO context and the fallback pool.
//
//   auto service = kaio::Service::Create({.queue_depth = 256});
//   auto requester = kaio::Requester::Create(**service);    // one per thread or core
//
// Threading: every Service method is thread-safe.
// Lifetime: destroy every Requester before the Service. Shutdown() (also run by the destructor)
// stops new submissions (they answer FAILED_PRECONDITION) and waits for every request already
// accepted to complete, because the buffers belong to the callers.
// Errors: Create answers INVALID_ARGUMENT for a bad option and the errno of a failing eventfd or
// pthread call; kernel AIO trouble later (io_setup EAGAIN: fs.aio-max-nr exhausted) is reported on
// stderr with the fix, and requests then run in the blocking pool rather than fail.
#ifndef KAIO_API_SERVICE_H_
#define KAIO_API_SERVICE_H_

#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "kaio/types.h"

namespace kaio {

namespace runtime {
class Engine;
}
namespace core {
class Mailbox;
class Syscalls;
}

class Service {
 public:
  static absl::StatusOr<std::unique_ptr<Service>> Create(const ServiceOptions& options = {});
  // For kaio's own tests: every kernel call goes through `syscalls` (fault injection). It must
  // outlive the service.
  static absl::StatusOr<std::unique_ptr<Service>> CreateWithSyscalls(const ServiceOptions& options,
                                                                     core::Syscalls* syscalls);
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Counters since Create; cheap enough to poll.
  ServiceStats Stats() const;
  // Stops accepting requests and waits for every accepted one to complete. Idempotent.
  void Shutdown();

  // For kaio's own layers (the POSIX facade, tests): the engine behind the service.
  runtime::Engine& engine() { return *engine_; }

 private:
  friend class Requester;
  explicit Service(std::unique_ptr<runtime::Engine> engine);
  // Mailboxes are recycled, never freed while the service runs: a completer may still be inside
  // Deliver() just after the owner saw its completion.
  absl::StatusOr<core::Mailbox*> TakeMailbox();
  void GiveBackMailbox(core::Mailbox* mailbox);

  std::unique_ptr<runtime::Engine> engine_;
  std::mutex mailboxes_mu_;
  std::vector<std::unique_ptr<core::Mailbox>> mailboxes_;
  std::vector<core::Mailbox*> free_mailboxes_;
};

}  // namespace kaio

#endif  // KAIO_API_SERVICE_H_
