#!/bin/sh
# Local stand-in for Bazel's coverage report generator (not available offline).
echo "coverage reports are not supported in this offline Bazel set-up" >&2
exit 1
