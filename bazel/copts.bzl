"""Compiler flags for kaio's own code (not its dependencies)."""

# Not -Wnull-dereference: gcc runs it only when optimizing (so never in the default fastbuild, -O0), and
# at -O1 and up (--config=tsan, asan, opt) it reports "potential null pointer dereference" inside
# moodycamel's ConcurrentQueue (ProducerBase::next_prod, dequeue_bulk) once inlined into kaio's code. The
# warning comes from a pass after inlining, so neither system-header status nor -isystem silences it, and
# with -Werror it failed the sanitizer builds of every unit that dequeues with a consumer token.
_WARNINGS = [
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wshadow",
    "-Wnon-virtual-dtor",
    "-Wcast-align",
    "-Wunused",
    "-Woverloaded-virtual",
    "-Wimplicit-fallthrough",
]

# Deliberately broken builds for stress/planted_bugs_check.sh (see core/planted_bug.h): with
# --define=kaio_planted_bug=NAME our code compiles with that bug planted. Label() so the settings
# resolve inside @kaio when another workspace builds us.
# The order gives each its number in core/planted_bug.h's PlantedBugKind.
KAIO_PLANTED_BUGS = ["double_completion", "lost_completion", "leaked_slot", "misdirected_write"]

# -fno-semantic-interposition: in a shared object (libkaio_posix.so, a shared libkaio) the compiler
# otherwise assumes any function with default visibility may be replaced at load time, so it inlines
# nothing defined in a .cc, not even within its own unit (PoolQueue::LaneOf called an out-of-line
# Direct(int)). Nothing may replace kaio's own functions (api/posix.lds keeps them local); the aio_*
# exports still interpose glibc's, which is a matter for the program's references, not ours. Measured:
# a signalled buffered aio_write under the preload 2,763 -> 2,670 instructions (callgrind,
# tools/posix_sigbench.cc --rw=randwrite --iodepth=1). No effect on the static (non-PIC) binaries.
_CODEGEN = ["-fno-semantic-interposition"]

KAIO_COPTS = _WARNINGS + _CODEGEN + select(dict(
    [(str(Label("//bazel:planted_" + name)), ["-DKAIO_PLANTED_BUG=%d" % (i + 1)]) for i, name in enumerate(KAIO_PLANTED_BUGS)] +
    [("//conditions:default", [])],
))


# For units that include absl/flags/flag.h (the command-line tools): Abseil 20220623's CommandLineFlag has
# virtual functions and a protected non-virtual destructor, which -Wnon-virtual-dtor reports in every such
# unit (Abseil is built from source here, so its headers are not system headers).
KAIO_FLAGS_COPTS = KAIO_COPTS + ["-Wno-non-virtual-dtor"]
