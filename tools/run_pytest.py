"""Entry point of every py_test in //tests: runs pytest on the given files.

tests/BUILD makes one py_test per tests/test_*.py file, each calling this
script with that file as its argument. Outside Bazel the same files run with
plain `pytest tests/`.

Under Bazel this script also
  * writes pytest's JUnit XML where Bazel asks for it (XML_OUTPUT_FILE),
  * keeps pytest's and Hypothesis' caches out of the source/runfiles tree,
  * supports sharding (shard_count on a py_test): each shard runs every
    TEST_TOTAL_SHARDS-th collected test.
"""

import os
import sys

# No __pycache__ directories in the runfiles tree (or the source tree behind
# its symlinks); pytest's assertion rewriting honours this too.
sys.dont_write_bytecode = True

import pytest  # noqa: E402  (after dont_write_bytecode on purpose)


class _ShardPlugin:
    """Keeps every total-th collected test, starting at index."""

    def __init__(self, index, total):
        self.index = index
        self.total = total

    def pytest_collection_modifyitems(self, config, items):
        keep, drop = [], []
        for i, item in enumerate(items):
            (keep if i % self.total == self.index else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep


def main(argv):
    args = ["-p", "no:cacheprovider", "-ra"]
    plugins = []

    tmpdir = os.environ.get("TEST_TMPDIR")
    if tmpdir:
        os.environ.setdefault(
            "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tmpdir, "hypothesis"))

    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args.append("--junitxml=" + xml)

    total = int(os.environ.get("TEST_TOTAL_SHARDS", "0") or 0)
    if total > 1:
        index = int(os.environ["TEST_SHARD_INDEX"])
        status_file = os.environ.get("TEST_SHARD_STATUS_FILE")
        if status_file:  # tells Bazel this runner understands sharding
            with open(status_file, "w"):
                pass
        plugins.append(_ShardPlugin(index, total))

    rc = pytest.main(args + list(argv), plugins=plugins)
    if rc == pytest.ExitCode.NO_TESTS_COLLECTED:
        if total > 1:
            return 0  # a shard may legitimately get no test
        print("run_pytest: no tests were collected from %s" % " ".join(argv),
              file=sys.stderr)
    return int(rc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
