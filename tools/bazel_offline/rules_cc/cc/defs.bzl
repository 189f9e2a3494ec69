"""Local stand-in for @rules_cc//cc:defs.bzl.

Bazel 4.2.3's own @bazel_tools loads this file. Every rule here is simply
Bazel's built-in (native) rule of the same name, which is what rules_cc did for
Bazel 4 as well. See tools/bazel_offline/README.md.
"""

cc_binary = native.cc_binary
cc_import = native.cc_import
cc_library = native.cc_library
cc_proto_library = native.cc_proto_library
cc_test = native.cc_test
cc_toolchain = native.cc_toolchain
cc_toolchain_suite = native.cc_toolchain_suite
fdo_prefetch_hints = native.fdo_prefetch_hints
fdo_profile = native.fdo_profile
objc_import = native.objc_import
objc_library = native.objc_library
