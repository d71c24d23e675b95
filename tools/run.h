// Files and external runs for kaio_bench: creating and removing the test files, priming or dropping
// the page cache, and running Debian's fio on the same files as an outside reference.
#ifndef KAIO_TOOLS_RUN_H_
#define KAIO_TOOLS_RUN_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/bench.h"
#include "tools/report.h"

namespace kaio_bench {

// Creates (or reuses, extending when short) the files the workload runs on. Temporary files go in
// --directory, else $TMPDIR, else $BUILD_WORKING_DIRECTORY (bazel run), else the current directory.
// Data is written for real (not sparse: a hole reads as zeros without touching the device), then
// fsync'd.
absl::StatusOr<std::vector<BenchFile>> SetUpFiles(const Options& o, bool verbose);
// Removes the temporary ones. Safe to call twice (and from the SIGINT path).
void RemoveTemporaryFiles(std::vector<BenchFile>& files);
// The filesystem type of `path` ("ext4", "tmpfs"...).
std::string FilesystemType(const std::string& path);

// Buffered runs: loads every file into the page cache (warm) or drops it (cold). No-op for O_DIRECT.
absl::Status PrimeCache(const Options& o, const std::vector<int>& fds);

// Runs `fio` with ioengine=`ioengine` and this workload on these files.
EngineResult RunFio(const Options& o, const std::vector<BenchFile>& files, const std::string& ioengine);

}  // namespace kaio_bench

#endif  // KAIO_TOOLS_RUN_H_
