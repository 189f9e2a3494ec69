"""Soak test: the property tests of tests/test_properties.py, many examples.

    python -m tools.soak --examples 500 [--seed S] [--properties a,b]

from the repository root, with the test dependencies installed. Runs every
property (or those named) on `--examples` random examples drawn by Hypothesis
from the seed `--seed` (random if not given; printed at the start, so a run
can be repeated exactly). Unlike the CI tests it does not stop at the first
failure: each example's outcome is counted and the distinct failures
(grouped by exception type and first message line) are printed with one
example description each. Exit status 1 if any example failed.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import sys
import time
import traceback

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import hypothesis  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

# The test modules import their helpers as top-level modules (`import
# graph_generator`), as pytest runs them: tests/conftest.py puts tests/ on
# sys.path for that (and turns oneDNN off before TensorFlow is imported).
from tests import conftest  # noqa: E402,F401  pylint: disable=unused-import
import test_properties  # noqa: E402  (tests/, through conftest)


class _Tally:
    """Outcome counts and distinct failures of one property."""

    def __init__(self):
        self.counts = collections.Counter()
        self.failures = collections.OrderedDict()

    def record_failure(self, error: BaseException, kwargs: dict) -> None:
        message = (str(error).strip().splitlines() or [''])
        # Property failures start with the graph description; the reason is
        # the last line.
        reason = message[-1] if isinstance(error, AssertionError) else (
            message[0])
        # Group by kind of failure: no temporary paths, no numbers.
        reason = re.sub(r'\d+', 'N', re.sub(r'/tmp/\S+', '<tmp>', reason))
        key = '%s: %s' % (type(error).__name__, reason[:160])
        if key not in self.failures:
            self.failures[key] = {
                'count': 0,
                'example': kwargs,
                'traceback': ''.join(traceback.format_exception(
                    type(error), error, error.__traceback__)[-6:]),
            }
        self.failures[key]['count'] += 1


def _describe(kwargs: dict) -> str:
    lines = []
    for name, value in kwargs.items():
        text = value.pretty() if hasattr(value, 'pretty') else repr(value)
        lines.append('    %s = %s' % (name, text.replace('\n', '\n    ')))
    return '\n'.join(lines)


def soak(prop, examples: int, seed: int, verbose: bool) -> _Tally:
    """Runs one property on `examples` examples; returns its tally."""
    tally = _Tally()

    def body(**kwargs):
        tally.counts['run'] += 1
        try:
            outcome = prop.check(**kwargs)
        except Exception as error:  # pylint: disable=broad-except
            tally.counts['failed'] += 1
            tally.record_failure(error, kwargs)
            if verbose:
                print('  FAILED example %d: %s' % (
                    tally.counts['run'], str(error).splitlines()[-1:]))
            return
        tally.counts['passed'] += 1
        if isinstance(outcome, str):
            tally.counts[outcome] += 1

    test = settings(max_examples=examples, derandomize=False, database=None,
                    deadline=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck))(
                        given(**prop.strategies)(body))
    hypothesis.seed(seed)(test)()
    return tally


def main(argv=None) -> int:
    names = [p.name for p in test_properties.PROPERTIES]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--examples', type=int, default=500,
                        help='examples per property (default 500)')
    parser.add_argument('--seed', type=int, default=None,
                        help='Hypothesis seed (default: random, printed)')
    parser.add_argument('--properties', default=','.join(names),
                        help='comma-separated subset of: ' + ', '.join(names))
    parser.add_argument('--verbose', action='store_true',
                        help='print each failing example as it happens')
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    chosen = [p for p in test_properties.PROPERTIES
              if p.name in args.properties.split(',')]
    unknown = set(args.properties.split(',')) - set(names)
    if unknown:
        parser.error('unknown properties: %s' % ', '.join(sorted(unknown)))
    print('soak: seed %d, %d examples per property' % (seed, args.examples))
    print('reproduce: python -m tools.soak --examples %d --seed %d '
          '--properties %s' % (args.examples, seed,
                               ','.join(p.name for p in chosen)),
          flush=True)
    any_failed = False
    summary = []
    for prop in chosen:
        start = time.time()
        print('\n== %s' % prop.name, flush=True)
        tally = soak(prop, args.examples, seed, args.verbose)
        counts = tally.counts
        extra = ', '.join('%s %d' % (k, v) for k, v in sorted(counts.items())
                          if k not in ('run', 'passed', 'failed'))
        line = '%-40s run %4d  passed %4d  failed %4d%s  (%.0f s)' % (
            prop.name, counts['run'], counts['passed'], counts['failed'],
            '  [' + extra + ']' if extra else '', time.time() - start)
        summary.append(line)
        print(line)
        for key, failure in tally.failures.items():
            any_failed = True
            print('\n  %d x %s\n  first example:\n%s\n%s' % (
                failure['count'], key, _describe(failure['example']),
                '    ' + failure['traceback'].replace('\n', '\n    ')))
        sys.stdout.flush()
    print('\n== summary (seed %d)' % seed)
    print('\n'.join(summary))
    return 1 if any_failed else 0


if __name__ == '__main__':
    sys.exit(main())
