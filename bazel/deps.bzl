"""kaio's external dependencies, provided offline from Debian packages.

A consumer calls kaio_deps() from its WORKSPACE. Each repository is skipped when the WORKSPACE already
defines one of the same name, so a consumer's own Abseil or GoogleTest wins. scripts/setup.sh installs the
Debian packages these point at (and unpacks Abseil's source package, so TSan builds instrument it).
"""

def _maybe(rule, name, **kwargs):
    if name not in native.existing_rules():
        rule(name = name, **kwargs)

def _rules_cc_shim_impl(ctx):
    # Debian's bazel-rules-cc is too new for Bazel 4.2.3; the native rules are all kaio needs.
    ctx.file("WORKSPACE", "workspace(name = \"rules_cc\")\n")
    ctx.file("BUILD", "")
    ctx.file("cc/BUILD", "")
    ctx.file("cc/defs.bzl", "\n".join([
        "cc_library = native.cc_library",
        "cc_binary = native.cc_binary",
        "cc_test = native.cc_test",
        "cc_import = native.cc_import",
        "cc_proto_library = native.cc_proto_library",
        "cc_toolchain = native.cc_toolchain",
        "cc_toolchain_suite = native.cc_toolchain_suite",
        "objc_library = native.objc_library",
        "",
    ]))

_rules_cc_shim = repository_rule(implementation = _rules_cc_shim_impl, local = True)

def _coverage_tools_stub_impl(ctx):
    # Test analysis needs these two labels to exist; kaio does not run Bazel coverage offline.
    ctx.file("WORKSPACE", "workspace(name = \"remote_coverage_tools\")\n")
    ctx.file("stub.sh", "#!/bin/sh\necho 'coverage tools are not available offline' >&2\nexit 1\n", executable = True)
    ctx.file("BUILD", "\n".join([
        "package(default_visibility = [\"//visibility:public\"])",
        "sh_binary(name = \"coverage_report_generator\", srcs = [\"stub.sh\"])",
        "sh_binary(name = \"lcov_merger\", srcs = [\"stub.sh\"])",
        "",
    ]))

_coverage_tools_stub = repository_rule(implementation = _coverage_tools_stub_impl, local = True)

def _platforms_copy_impl(ctx):
    # Debian's bazel-platforms 0.0.2 lacks @platforms//cpu:wasm32/wasm64, which Abseil names.
    src = ctx.path(ctx.attr.path)
    for top in ["BUILD", "WORKSPACE"]:
        ctx.symlink(src.get_child(top), top)
    ctx.symlink(src.get_child("os"), "os")
    cpu_build = ctx.read(src.get_child("cpu").get_child("BUILD"))
    for extra in ["wasm32", "wasm64"]:
        if "\"%s\"" % extra not in cpu_build:
            cpu_build += "\nconstraint_value(name = \"%s\", constraint_setting = \":cpu\")\n" % extra
    ctx.file("cpu/BUILD", cpu_build)

_platforms_copy = repository_rule(
    implementation = _platforms_copy_impl,
    attrs = {"path": attr.string(default = "/usr/share/bazel/tools/platforms")},
    local = True,
)

def kaio_deps(third_party_dir = "/opt/kaio-deps"):
    """Defines every repository kaio needs, unless the WORKSPACE already has it."""
    _maybe(_rules_cc_shim, "rules_cc")
    _maybe(_coverage_tools_stub, "remote_coverage_tools")
    _maybe(_platforms_copy, "platforms")
    _maybe(native.local_repository, "bazel_skylib", path = "/usr/share/bazel/tools/skylib")
    _maybe(native.local_repository, "rules_java", path = "/usr/share/bazel/rules/java")
    _maybe(native.local_repository, "com_google_absl", path = third_party_dir + "/abseil")
    _maybe(
        native.new_local_repository,
        "com_google_googletest",
        path = "/usr/src/googletest",
        build_file = str(Label("//third_party:googletest.BUILD")),
    )
    _maybe(
        native.new_local_repository,
        "libaio",
        path = "/usr/include",
        build_file = str(Label("//third_party:libaio.BUILD")),
    )
    _maybe(
        native.new_local_repository,
        "liburing",
        path = "/usr/include",
        build_file = str(Label("//third_party:liburing.BUILD")),
    )
    _maybe(
        native.new_local_repository,
        "moodycamel_concurrentqueue",
        path = "/usr/include",
        build_file = str(Label("//third_party:concurrentqueue.BUILD")),
    )
    _maybe(
        native.new_local_repository,
        "nlohmann_json",
        path = "/usr/include",
        build_file = str(Label("//third_party:nlohmann_json.BUILD")),
    )
    _maybe(
        native.new_local_repository,
        "com_github_google_benchmark",
        path = "/usr/include/benchmark",
        build_file = str(Label("//third_party:benchmark.BUILD")),
    )
