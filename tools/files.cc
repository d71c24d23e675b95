#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/run.h"

namespace kaio_bench {
namespace {

constexpr size_t kChunk = size_t{1} << 20;

std::string TempDirectory(const Options& o) {
  if (!o.directory.empty()) return o.directory;
  if (const char* t = std::getenv("TMPDIR"); t != nullptr && *t != '\0') return t;
  if (const char* b = std::getenv("BUILD_WORKING_DIRECTORY"); b != nullptr && *b != '\0') return b;
  return ".";
}

// Writes [from, size) with non-zero pseudo-random data and syncs it.
absl::Status Fill(int fd, const std::string& path, uint64_t from, uint64_t size) {
  if (from >= size) return absl::OkStatus();
  // Allocate up front (fewer extents, and a full disk fails here rather than mid-way).
  if (int rc = posix_fallocate(fd, static_cast<off_t>(from), static_cast<off_t>(size - from)); rc != 0 && rc != EOPNOTSUPP) {
    return absl::ErrnoToStatus(rc, absl::StrCat("allocating ", size, " bytes for ", path));
  }
  std::vector<uint64_t> chunk(kChunk / sizeof(uint64_t));
  uint64_t x = 0x9e3779b97f4a7c15ULL ^ from;
  for (uint64_t& v : chunk) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = x | 1;
  }
  for (uint64_t off = from; off < size;) {
    // Make every 4 KiB block distinct.
    for (size_t b = 0; b < kChunk / 4096; ++b) chunk[b * 512] = off + b * 4096 + 1;
    size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, size - off));
    ssize_t w = pwrite(fd, chunk.data(), n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("writing ", path));
    }
    off += static_cast<uint64_t>(w);
  }
  if (fdatasync(fd) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("fdatasync ", path));
  return absl::OkStatus();
}

}  // namespace

std::string FilesystemType(const std::string& path) {
  struct statfs s;
  if (statfs(path.c_str(), &s) != 0) return "?";
  switch (static_cast<unsigned long>(s.f_type)) {
    case EXT4_SUPER_MAGIC: return "ext4";
    case TMPFS_MAGIC: return "tmpfs";
    case XFS_SUPER_MAGIC: return "xfs";
    case BTRFS_SUPER_MAGIC: return "btrfs";
    case OVERLAYFS_SUPER_MAGIC: return "overlayfs";
    case NFS_SUPER_MAGIC: return "nfs";
    case F2FS_SUPER_MAGIC: return "f2fs";
    default: return absl::StrFormat("fs-0x%lx", static_cast<unsigned long>(s.f_type));
  }
}

absl::StatusOr<std::vector<BenchFile>> SetUpFiles(const Options& o, bool verbose) {
  std::vector<BenchFile> files;
  const int64_t start = NowNs();
  bool wrote = false;
  auto fail = [&](absl::Status s) {
    RemoveTemporaryFiles(files);
    return s;
  };
  for (int i = 0; i < o.nrfiles; ++i) {
    BenchFile f;
    int fd;
    if (!o.filenames.empty()) {
      f.path = o.filenames[static_cast<size_t>(i)];
      fd = open(f.path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) return fail(absl::ErrnoToStatus(errno, absl::StrCat("opening ", f.path)));
    } else {
      std::string tmpl = absl::StrCat(TempDirectory(o), "/kaio_bench.XXXXXX");
      std::vector<char> name(tmpl.begin(), tmpl.end());
      name.push_back('\0');
      fd = mkostemp(name.data(), O_CLOEXEC);
      if (fd < 0) {
        return fail(absl::ErrnoToStatus(errno, absl::StrCat("creating a temporary file like ", tmpl,
                                                            " (choose another place with --directory)")));
      }
      f.path = name.data();
      f.temporary = true;
    }
    files.push_back(f);
    struct stat st;
    if (fstat(fd, &st) != 0) {
      close(fd);
      return fail(absl::ErrnoToStatus(errno, absl::StrCat("stat ", f.path)));
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
      close(fd);
      return fail(absl::InvalidArgumentError(absl::StrCat(f.path, " is not a regular file")));
    }
    uint64_t have = static_cast<uint64_t>(st.st_size);
    if (S_ISREG(st.st_mode) && have < o.size) {
      if (verbose && !wrote) {
        std::fprintf(stderr, "kaio_bench: writing %d x %llu MiB of test data in %s ...\n", o.nrfiles,
                     static_cast<unsigned long long>(o.size >> 20), f.path.c_str());
      }
      wrote = true;
      absl::Status s = Fill(fd, f.path, have & ~uint64_t{kChunk - 1}, o.size);
      if (!s.ok()) {
        close(fd);
        return fail(s);
      }
    }
    close(fd);
    if (o.direct) {
      int dfd = open(f.path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
      if (dfd < 0) {
        int err = errno;
        return fail(absl::ErrnoToStatus(
            err, absl::StrCat("opening ", f.path, " with O_DIRECT on ", FilesystemType(f.path),
                              err == EINVAL ? ": this filesystem does not support O_DIRECT; use --direct=0 or "
                                              "--directory on a disk filesystem"
                                            : "")));
      }
      close(dfd);
    }
  }
  if (verbose && wrote) {
    std::fprintf(stderr, "kaio_bench: test data written in %.1f s\n", static_cast<double>(NowNs() - start) / 1e9);
  }
  return files;
}

void RemoveTemporaryFiles(std::vector<BenchFile>& files) {
  for (BenchFile& f : files) {
    if (f.temporary && !f.path.empty()) {
      unlink(f.path.c_str());
      f.temporary = false;
    }
  }
}

absl::Status PrimeCache(const Options& o, const std::vector<int>& fds) {
  if (o.direct) return absl::OkStatus();
  std::vector<char> buf(kChunk);
  for (int fd : fds) {
    if (o.cache_warm) {
      // Written back first: every engine then starts on clean cached pages. A write run left the next
      // engine its dirty pages, and the same buffered randwrite row measured 208k or 91k IOPS for
      // kaio depending on how much writeback was due (BENCHMARKS.md session 14).
      fdatasync(fd);
      for (uint64_t off = 0; off < o.size; off += kChunk) {
        if (pread(fd, buf.data(), kChunk, static_cast<off_t>(off)) < 0) {
          return absl::ErrnoToStatus(errno, "reading the file into the page cache");
        }
      }
    } else {
      fdatasync(fd);
      if (int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); rc != 0) {
        return absl::ErrnoToStatus(rc, "dropping the file from the page cache");
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kaio_bench
