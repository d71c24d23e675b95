"""Compiler flags for kaio's own code (not its dependencies)."""

# Not -Wnull-dereference: gcc runs it only when optimizing (so never in the default fastbuild, -O0), and
# at -O1 and up (--config=tsan, asan, opt) it reports "potential null pointer dereference" inside
# moodycamel's ConcurrentQueue (ProducerBase::next_prod, dequeue_bulk) once inlined into kaio's code. The
# warning comes from a pass after inlining, so neither system-header status nor -isystem silences it, and
# with -Werror it failed the sanitizer builds of every unit that dequeues with a consumer token.
KAIO_COPTS = [
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
