// TSan canary: a data race planted on purpose, in the shape kaio's code has (a reaper thread completing
// a request while the submitting thread cancels it). tsan_canary_test.sh runs this binary and, under
// --config=tsan, requires ThreadSanitizer to report the race. If TSan ever stops catching it (the
// instrumentation flags dropped, the runtime not linked, a suppression grown too broad), that test fails.
// Never "fix" this race.
#include <cstdio>
#include <cstring>
#include <thread>

#if defined(__SANITIZE_THREAD__)
#define KAIO_CANARY_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KAIO_CANARY_TSAN 1
#endif
#endif
#ifndef KAIO_CANARY_TSAN
#define KAIO_CANARY_TSAN 0
#endif

// Set by stress/BUILD.bazel from --define=kaio_sanitizer=tsan (that is, --config=tsan).
#ifndef KAIO_CANARY_EXPECT_TSAN
#define KAIO_CANARY_EXPECT_TSAN 0
#endif

#if KAIO_CANARY_TSAN
// Defined by //stress:tsan_suppressions (linked in by --config=tsan); the TSan runtime has a weak
// default that returns "".
extern "C" const char* __tsan_default_suppressions();
#endif

namespace kaio_canary {

struct Request {
  int result = 0;  // The planted bug: a plain int written by two threads with no synchronization.
};

// noinline: each write keeps its own frame in TSan's report, which the test script looks for.
[[gnu::noinline]] void CompleteOnReaper(Request& request) { request.result = 4096; }
[[gnu::noinline]] void CancelOnSubmitter(Request& request) { request.result = -125; }

int Run() {
  Request request;
  std::thread reaper([&request] { CompleteOnReaper(request); });
  std::thread submitter([&request] { CancelOnSubmitter(request); });
  reaper.join();
  submitter.join();
  return request.result;
}

}  // namespace kaio_canary

int main() {
  if (!KAIO_CANARY_TSAN) {
    if (KAIO_CANARY_EXPECT_TSAN) {
      std::printf("KAIO_TSAN_CANARY: ERROR: built with --config=tsan but not instrumented by TSan\n");
      return 2;
    }
    std::printf("KAIO_TSAN_CANARY: SKIP: not a ThreadSanitizer build (use --config=tsan)\n");
    return 0;
  }
#if KAIO_CANARY_TSAN
  const char* suppressions = __tsan_default_suppressions();
  if (suppressions == nullptr || std::strstr(suppressions, "race:moodycamel::") == nullptr) {
    std::printf("KAIO_TSAN_CANARY: ERROR: stress/tsan_suppressions.txt is not compiled in "
                "(--custom_malloc=//stress:tsan_suppressions missing from --config=tsan?)\n");
    return 3;
  }
#endif
  std::printf("KAIO_TSAN_CANARY: running the planted race\n");
  std::fflush(stdout);
  const int result = kaio_canary::Run();
  std::printf("KAIO_TSAN_CANARY: race finished without a TSan report (result %d)\n", result);
  return 0;
}
