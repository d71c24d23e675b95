// kaio_digest FILE...: prints the FNV-1a 64 digest of each file, read through kaio.
#include <fcntl.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <memory>

#include "digest.h"
#include "kaio/requester.h"
#include "kaio/service.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: kaio_digest FILE...\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<kaio::Service>> service = kaio::Service::Create();
  if (!service.ok()) {
    std::fprintf(stderr, "kaio_digest: %s\n", service.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<kaio::Requester>> requester = kaio::Requester::Create(**service);
  if (!requester.ok()) {
    std::fprintf(stderr, "kaio_digest: %s\n", requester.status().ToString().c_str());
    return 1;
  }
  int status = 0;
  for (int i = 1; i < argc; ++i) {
    int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      std::perror(argv[i]);
      status = 1;
      continue;
    }
    absl::StatusOr<uint64_t> digest = consumer::DigestFile(**requester, fd);
    close(fd);
    if (!digest.ok()) {
      std::fprintf(stderr, "%s: %s\n", argv[i], digest.status().ToString().c_str());
      status = 1;
      continue;
    }
    std::printf("%016" PRIx64 "  %s\n", *digest, argv[i]);
  }
  kaio::ServiceStats stats = (*service)->Stats();
  std::fprintf(stderr, "kaio_digest: %" PRIu64 " reads, %" PRIu64 " io_submit calls\n", stats.requests_completed,
               stats.io_submit_calls);
  return status;
}
