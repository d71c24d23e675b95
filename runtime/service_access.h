// ServiceAccess: how kaio's own layers (the POSIX facade, tests, the fuzzer, benchmarks) reach what
// kaio::Service keeps private: the engine behind it, and a service whose kernel calls go through
// a Syscalls of the caller's (fault injection). Not part of the API: api/ exposes neither.
#ifndef KAIO_RUNTIME_SERVICE_ACCESS_H_
#define KAIO_RUNTIME_SERVICE_ACCESS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "core/syscalls.h"
#include "kaio/service.h"
#include "runtime/engine.h"

namespace kaio::runtime {

class ServiceAccess {
 public:
  static Engine& EngineOf(Service& service) { return *service.engine_; }
  // Every kernel call goes through `syscalls` (nullptr: the real ones), which must outlive the
  // service.
  static absl::StatusOr<std::unique_ptr<Service>> CreateWithSyscalls(const ServiceOptions& options,
                                                                     core::Syscalls* syscalls) {
    return Service::CreateWithSyscalls(options, syscalls);
  }
};

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_SERVICE_ACCESS_H_
