/* An ordinary program using POSIX AIO through glibc's <aio.h>, built without any knowledge of kaio.
 * preload_test.sh runs it twice: as is (glibc's implementation) and with LD_PRELOAD=libkaio_posix.so
 * (kaio's). It exercises every function once; it prints what failed and exits 1, or exits 0.
 * Built twice: plain (aio_read, ...) and with _FILE_OFFSET_BITS=64 (aio_read64, ...).
 * Usage: preload_client <scratch file path> */
#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "preload_client: %s:%d: %s failed (errno %d: %s)\n",      \
              __FILE__, __LINE__, #cond, errno, strerror(errno));               \
      ++failures;                                                               \
    }                                                                           \
  } while (0)

static void wait_done(struct aiocb* cb) {
  const struct aiocb* list[1] = {cb};
  time_t give_up = time(NULL) + 30;
  while (aio_error(cb) == EINPROGRESS && time(NULL) < give_up) {
    struct timespec ts = {1, 0};
    aio_suspend(list, 1, &ts);
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s <scratch file>\n", argv[0]);
    return 2;
  }
  int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) {
    perror("open");
    return 2;
  }
  char out[8192], in[8192];
  for (size_t i = 0; i < sizeof(out); ++i) out[i] = (char)(i * 13 + 1);

  /* aio_write, then aio_fsync, then aio_read of the same bytes. */
  struct aiocb w;
  memset(&w, 0, sizeof(w));
  w.aio_fildes = fd;
  w.aio_buf = out;
  w.aio_nbytes = sizeof(out);
  if (aio_write(&w) != 0) {
    fprintf(stderr, "preload_client: aio_write: %s\n", strerror(errno));
    return 1;
  }
  wait_done(&w);
  CHECK(aio_error(&w) == 0);
  CHECK(aio_return(&w) == (ssize_t)sizeof(out));

  struct aiocb s;
  memset(&s, 0, sizeof(s));
  s.aio_fildes = fd;
  CHECK(aio_fsync(O_SYNC, &s) == 0);
  wait_done(&s);
  CHECK(aio_error(&s) == 0);
  CHECK(aio_return(&s) == 0);

  struct aiocb r;
  memset(&r, 0, sizeof(r));
  r.aio_fildes = fd;
  r.aio_buf = in;
  r.aio_nbytes = sizeof(in);
  CHECK(aio_read(&r) == 0);
  wait_done(&r);
  CHECK(aio_error(&r) == 0);
  CHECK(aio_return(&r) == (ssize_t)sizeof(in));
  CHECK(memcmp(in, out, sizeof(in)) == 0);

  /* lio_listio(LIO_WAIT) of two reads. */
  char a[100], b[100];
  struct aiocb la, lb;
  memset(&la, 0, sizeof(la));
  memset(&lb, 0, sizeof(lb));
  la.aio_fildes = lb.aio_fildes = fd;
  la.aio_buf = a;
  lb.aio_buf = b;
  la.aio_nbytes = lb.aio_nbytes = 100;
  lb.aio_offset = 4096;
  la.aio_lio_opcode = lb.aio_lio_opcode = LIO_READ;
  struct aiocb* list[2] = {&la, &lb};
  CHECK(lio_listio(LIO_WAIT, list, 2, NULL) == 0);
  CHECK(aio_return(&la) == 100 && memcmp(a, out, 100) == 0);
  CHECK(aio_return(&lb) == 100 && memcmp(b, out + 4096, 100) == 0);

  /* aio_cancel of a finished request, and of nothing. */
  CHECK(aio_cancel(fd, &r) == AIO_ALLDONE);
  CHECK(aio_cancel(fd, NULL) == AIO_ALLDONE);

  /* A pipe read that waits, released by a write; aio_suspend with a timeout first. */
  int p[2];
  CHECK(pipe(p) == 0);
  char byte = 0;
  struct aiocb pr;
  memset(&pr, 0, sizeof(pr));
  pr.aio_fildes = p[0];
  pr.aio_buf = &byte;
  pr.aio_nbytes = 1;
  CHECK(aio_read(&pr) == 0);
  const struct aiocb* plist[1] = {&pr};
  struct timespec short_wait = {0, 10 * 1000 * 1000};
  CHECK(aio_suspend(plist, 1, &short_wait) == -1 && errno == EAGAIN);
  CHECK(write(p[1], "k", 1) == 1);
  wait_done(&pr);
  CHECK(aio_return(&pr) == 1 && byte == 'k');

  close(fd);
  unlink(argv[1]);
  if (failures == 0) printf("preload_client: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
