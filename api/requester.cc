// kaio::Requester: a thin wrapper around one runtime::Client (runtime/client.h), which does the
// work (its mailbox, taken from the service's pool, included).
#include "kaio/requester.h"

#include "runtime/client.h"
#include "runtime/engine.h"

namespace kaio {

absl::StatusOr<std::unique_ptr<Requester>> Requester::Create(Service& service, const RequesterOptions& options) {
  absl::StatusOr<std::unique_ptr<runtime::Client>> client =
      runtime::Client::Create(*service.engine_, *service.mailboxes_, options.inline_io);
  if (!client.ok()) return client.status();
  return std::unique_ptr<Requester>(new Requester(*std::move(client)));
}

Requester::Requester(std::unique_ptr<runtime::Client> client) : client_(std::move(client)) {}

// The client waits for every outstanding request, then gives its mailbox back.
Requester::~Requester() = default;

absl::StatusOr<Ticket> Requester::Read(int fd, void* buf, size_t length, int64_t offset, uint64_t tag) {
  return client_->Read(fd, buf, length, offset, tag);
}
absl::StatusOr<Ticket> Requester::Write(int fd, const void* buf, size_t length, int64_t offset, uint64_t tag) {
  return client_->Write(fd, buf, length, offset, tag);
}
absl::StatusOr<Ticket> Requester::Readv(int fd, const struct iovec* iov, int iovcnt, int64_t offset, uint64_t tag) {
  return client_->Readv(fd, iov, iovcnt, offset, tag);
}
absl::StatusOr<Ticket> Requester::Writev(int fd, const struct iovec* iov, int iovcnt, int64_t offset, uint64_t tag) {
  return client_->Writev(fd, iov, iovcnt, offset, tag);
}
absl::StatusOr<Ticket> Requester::Fsync(int fd, uint64_t tag) { return client_->Fsync(fd, tag); }
absl::StatusOr<Ticket> Requester::Fdatasync(int fd, uint64_t tag) { return client_->Fdatasync(fd, tag); }
void Requester::Flush() { client_->Flush(); }
size_t Requester::Poll(absl::Span<Completion> out) { return client_->Poll(out); }
size_t Requester::Wait(absl::Span<Completion> out, size_t min_count, absl::Duration timeout) {
  return client_->Wait(out, min_count, timeout);
}
absl::Status Requester::WaitAll(absl::Span<const Ticket> tickets, absl::Duration timeout) {
  return client_->WaitAll(tickets, timeout);
}
absl::StatusOr<size_t> Requester::WaitAny(absl::Span<const Ticket> tickets, absl::Duration timeout) {
  return client_->WaitAny(tickets, timeout);
}
int Requester::Error(Ticket ticket) const { return client_->Error(ticket); }
int64_t Requester::Return(Ticket ticket) { return client_->Return(ticket); }
absl::StatusOr<CancelResult> Requester::Cancel(Ticket ticket) { return client_->Cancel(ticket); }
CancelResult Requester::CancelAll(int fd) { return client_->CancelAll(fd); }
int Requester::NotifyFd() { return client_->NotifyFd(); }
uint64_t Requester::in_flight() const { return client_->in_flight(); }

}  // namespace kaio
