"""Compiler flags for kaio's own code (not its dependencies)."""

KAIO_COPTS = [
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wshadow",
    "-Wnon-virtual-dtor",
    "-Wcast-align",
    "-Wunused",
    "-Woverloaded-virtual",
    "-Wnull-dereference",
    "-Wimplicit-fallthrough",
]
