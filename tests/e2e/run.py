#!/usr/bin/python3
"""Run lbd's end-to-end tests.

    LBD=build/lbd LBD_BACKEND=build/lbd-testbackend tests/e2e/run.py [FILTER ...] [-v] [-x]

FILTER selects tests whose id (module.Class.method) contains it, or matches it
as a glob: `run.py test_reload`, `run.py test_proxy`, `run.py 'test_balance.*weighted*'`.
-x stops at the first failure; -l lists the selected tests without running them.
LBD_KEEP=1 keeps (and prints) the temp directory of each failed test.
Exit status: 0 all passed, 1 a test failed, 2 usage or setup error.
"""
import fnmatch
import os
import shutil
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# No stale bytecode next to the tests (the tree is shared and edited live).
sys.dont_write_bytecode = True


def flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from flatten(t)
        else:
            yield t


def selected(test_id, filters):
    if not filters:
        return True
    for f in filters:
        if f in test_id or fnmatch.fnmatch(test_id, f) or fnmatch.fnmatch(test_id, f"*{f}*"):
            return True
    return False


class Result(unittest.TextTestResult):
    """Like the default verbose result, with each test's duration."""

    def getDescription(self, test):
        return test.id()

    def startTest(self, test):
        self._t0 = time.monotonic()
        super().startTest(test)

    def _took(self):
        return f" ({time.monotonic() - self._t0:.1f}s)"

    def addSuccess(self, test):
        unittest.TestResult.addSuccess(self, test)
        self.stream.writeln("ok" + self._took())
        self.stream.flush()

    def addFailure(self, test, err):
        unittest.TestResult.addFailure(self, test, err)
        self.stream.writeln("FAIL" + self._took())
        self.stream.flush()

    def addError(self, test, err):
        unittest.TestResult.addError(self, test, err)
        self.stream.writeln("ERROR" + self._took())
        self.stream.flush()

    def addSkip(self, test, reason):
        unittest.TestResult.addSkip(self, test, reason)
        self.stream.writeln(f"skipped: {reason}")
        self.stream.flush()

    def addExpectedFailure(self, test, err):
        unittest.TestResult.addExpectedFailure(self, test, err)
        self.stream.writeln("expected failure" + self._took())

    def addUnexpectedSuccess(self, test):
        unittest.TestResult.addUnexpectedSuccess(self, test)
        self.stream.writeln("UNEXPECTED SUCCESS" + self._took())


def private_copy(path, bindir):
    """Run a private copy of a binary: others may rebuild build/ meanwhile."""
    dst = os.path.join(bindir, os.path.basename(path))
    shutil.copy2(path, dst)
    return dst


def main(argv):
    args = [a for a in argv[1:]]
    failfast = "-x" in args
    list_only = "-l" in args
    if "-h" in args or "--help" in args:
        print(__doc__)
        return 0
    filters = [a for a in args if not a.startswith("-")]

    import lbdtest
    for b in (lbdtest.LBD, lbdtest.LBD_BACKEND):
        if not os.access(b, os.X_OK):
            print(f"run.py: {b} is not executable (set LBD / LBD_BACKEND, or run `make`)",
                  file=sys.stderr)
            return 2

    loader = unittest.TestLoader()
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = [t for t in flatten(suite) if selected(t.id(), filters)]
    if loader.errors:
        for e in loader.errors:
            print(e, file=sys.stderr)
    if not tests:
        print(f"run.py: no test matches {filters}", file=sys.stderr)
        return 2
    if list_only:
        for t in tests:
            print(t.id())
        return 0

    bindir = tempfile.mkdtemp(prefix="lbd-e2e-bin-")
    try:
        lbdtest.LbdTestCase.lbd_bin = private_copy(lbdtest.LBD, bindir)
        lbdtest.LbdTestCase.backend_bin = private_copy(lbdtest.LBD_BACKEND, bindir)
        if os.access(lbdtest.LBTOP, os.X_OK):
            lbdtest.LbdTestCase.lbtop_bin = private_copy(lbdtest.LBTOP, bindir)
        for name in ("LBD_B", "LBD_CRASH", "LBD_LAYOUT"):
            if os.access(getattr(lbdtest, name), os.X_OK):
                setattr(lbdtest, name, private_copy(getattr(lbdtest, name), bindir))
        print(f"lbd e2e: {len(tests)} test(s); lbd={lbdtest.LBD} backend={lbdtest.LBD_BACKEND}")
        runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=Result,
                                         failfast=failfast)
        t0 = time.monotonic()
        result = runner.run(unittest.TestSuite(tests))
        took = time.monotonic() - t0
    finally:
        shutil.rmtree(bindir, ignore_errors=True)

    bad = [t.id() for t, _ in result.failures + result.errors]
    bad += [t.id() for t in result.unexpectedSuccesses]
    print("=" * 70)
    print(f"lbd e2e summary: {result.testsRun} run, "
          f"{result.testsRun - len(bad) - len(result.skipped)} passed, "
          f"{len(result.failures)} failed, {len(result.errors)} errors, "
          f"{len(result.skipped)} skipped in {took:.1f}s")
    for tid in bad:
        print(f"  FAILED  {tid}")
    for t, reason in result.skipped:
        print(f"  skipped {t.id()}: {reason}")
    for tid, d in lbdtest.KEPT_DIRS:
        print(f"  kept    {d}  ({tid})")
    if bad and os.environ.get("LBD_KEEP") != "1":
        print("  (LBD_KEEP=1 keeps the temp directories of failed tests)")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
