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

#include "absl/status/statusor.h"
#include "kaio/types.h"

namespace kaio {

namespace runtime {
class Engine;
class MailboxPool;
class ServiceAccess;
}
namespace core {
class Syscalls;
}

class Service {
 public:
  static absl::StatusOr<std::unique_ptr<Service>> Create(const ServiceOptions& options = {});
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Counters since Create; cheap enough to poll.
  ServiceStats Stats() const;
  // Stops accepting requests and waits for every accepted one to complete. Idempotent.
  void Shutdown();

 private:
  friend class Requester;
  friend class runtime::ServiceAccess;  // kaio's own layers and tests (runtime/service_access.h)
  static absl::StatusOr<std::unique_ptr<Service>> CreateWithSyscalls(const ServiceOptions& options,
                                                                     core::Syscalls* syscalls);
  explicit Service(std::unique_ptr<runtime::Engine> engine);

  std::unique_ptr<runtime::Engine> engine_;
  std::unique_ptr<runtime::MailboxPool> mailboxes_;  // outlives engine_ (see ~Service)
};

}  // namespace kaio

#endif  // KAIO_API_SERVICE_H_
