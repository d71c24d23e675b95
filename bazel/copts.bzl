"""Compiler flags for kaio's own code (not its dependencies)."""

# Not -Wnull-dereference: gcc 12 raises it from flow analysis inside inlined moodycamel code at -O1
# (TSan builds), where no -isystem can silence it.
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
