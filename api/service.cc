#include "kaio/service.h"

#include <cstdio>
#include <cstdlib>

#include "runtime/client.h"
#include "runtime/engine.h"

namespace kaio {

absl::StatusOr<std::unique_ptr<Service>> Service::Create(const ServiceOptions& options) {
  return CreateWithSyscalls(options, nullptr);
}

absl::StatusOr<std::unique_ptr<Service>> Service::CreateWithSyscalls(const ServiceOptions& options,
                                                                      core::Syscalls* syscalls) {
  absl::StatusOr<std::unique_ptr<runtime::Engine>> engine = runtime::Engine::Create(options, syscalls);
  if (!engine.ok()) return engine.status();
  return std::unique_ptr<Service>(new Service(*std::move(engine)));
}

Service::Service(std::unique_ptr<runtime::Engine> engine)
    : engine_(std::move(engine)), mailboxes_(std::make_unique<runtime::MailboxPool>(*engine_)) {}

Service::~Service() {
  Shutdown();
  if (size_t alive = engine_->registered_sinks(); alive != 0) {
    // Their mailboxes die with the service: going on would be a use-after-free later.
    std::fprintf(stderr, "kaio: Service destroyed while %zu Requester(s) (or the POSIX facade) still use it; "
                 "destroy every Requester first\n", alive);
    std::abort();
  }
  engine_.reset();  // joins the threads; no Deliver() can run after this
  mailboxes_.reset();
}

ServiceStats Service::Stats() const { return engine_->Stats(); }

void Service::Shutdown() { engine_->Shutdown(); }

}  // namespace kaio
