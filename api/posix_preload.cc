// glibc's POSIX AIO names, forwarding to kaio's implementation. Linked only into the preloadable
// shared object //api:kaio_posix (libkaio_posix.so): loaded with LD_PRELOAD, these definitions come
// before libc's in symbol lookup, so an unmodified program's aio_* calls (versioned references such
// as aio_read64@GLIBC_2.34 included: an unversioned definition satisfies them) reach kaio.
//
// On LP64 glibc struct aiocb64 is struct aiocb by another name (posix/aiocb_words.h checks the
// layouts), so the 64 twins share the implementation.
#include <aio.h>

#include "kaio/posix.h"

#define KAIO_EXPORT __attribute__((visibility("default")))

extern "C" {

KAIO_EXPORT int aio_read(struct aiocb* aiocbp) __THROW { return kaio_aio_read(aiocbp); }
KAIO_EXPORT int aio_write(struct aiocb* aiocbp) __THROW { return kaio_aio_write(aiocbp); }
KAIO_EXPORT int aio_fsync(int op, struct aiocb* aiocbp) __THROW { return kaio_aio_fsync(op, aiocbp); }
KAIO_EXPORT int aio_error(const struct aiocb* aiocbp) __THROW { return kaio_aio_error(aiocbp); }
KAIO_EXPORT ssize_t aio_return(struct aiocb* aiocbp) __THROW { return kaio_aio_return(aiocbp); }
KAIO_EXPORT int aio_cancel(int fildes, struct aiocb* aiocbp) __THROW { return kaio_aio_cancel(fildes, aiocbp); }
KAIO_EXPORT int aio_suspend(const struct aiocb* const list[], int nent, const struct timespec* timeout) {
  return kaio_aio_suspend(list, nent, timeout);
}
KAIO_EXPORT int lio_listio(int mode, struct aiocb* const list[], int nent, struct sigevent* sig) __THROW {
  return kaio_lio_listio(mode, list, nent, sig);
}

KAIO_EXPORT int aio_read64(struct aiocb64* aiocbp) __THROW {
  return kaio_aio_read(reinterpret_cast<struct aiocb*>(aiocbp));
}
KAIO_EXPORT int aio_write64(struct aiocb64* aiocbp) __THROW {
  return kaio_aio_write(reinterpret_cast<struct aiocb*>(aiocbp));
}
KAIO_EXPORT int aio_fsync64(int op, struct aiocb64* aiocbp) __THROW {
  return kaio_aio_fsync(op, reinterpret_cast<struct aiocb*>(aiocbp));
}
KAIO_EXPORT int aio_error64(const struct aiocb64* aiocbp) __THROW {
  return kaio_aio_error(reinterpret_cast<const struct aiocb*>(aiocbp));
}
KAIO_EXPORT ssize_t aio_return64(struct aiocb64* aiocbp) __THROW {
  return kaio_aio_return(reinterpret_cast<struct aiocb*>(aiocbp));
}
KAIO_EXPORT int aio_cancel64(int fildes, struct aiocb64* aiocbp) __THROW {
  return kaio_aio_cancel(fildes, reinterpret_cast<struct aiocb*>(aiocbp));
}
KAIO_EXPORT int aio_suspend64(const struct aiocb64* const list[], int nent, const struct timespec* timeout) __THROW {
  return kaio_aio_suspend(reinterpret_cast<const struct aiocb* const*>(list), nent, timeout);
}
KAIO_EXPORT int lio_listio64(int mode, struct aiocb64* const list[], int nent, struct sigevent* sig) __THROW {
  return kaio_lio_listio(mode, reinterpret_cast<struct aiocb* const*>(list), nent, sig);
}

}  // extern "C"
