"""The repository's programs, run from its root as `python -m tools.<name>`
or through Bazel as `tools/bazel run //tools:<name>` (see tools/BUILD).

A regular package, not a namespace one, so that `tools` is this directory
whatever other `tools` directories are on `sys.path`.
"""
