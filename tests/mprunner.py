"""Runs pure firmware tests (no harness, sockets nor board) under the MicroPython unix port:
`micropython tests/mprunner.py FILE[::TEST]...`. firmware/ goes on sys.path; a minimal `pytest`
stands in (marks and fixtures are no-ops; parametrize, raises); the fixtures `profile` and
`meter` are made as tests/conftest.py makes them. A line per test, a summary, exit 1 on any
failure. (MicroPython has no inspect: a test's argument names are read from its source.)"""

import sys

TESTS = sys.argv[0].rpartition("/")[0] or "."
ROOT = TESTS.rpartition("/")[0] or "."
sys.path.insert(0, ROOT + "/firmware")

PARAMS = {}  # test function: [(argnames, values), ...] of its parametrize marks


class _Mark:
    def parametrize(self, names, values, ids=None, indirect=False):
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]

        def mark(fn):
            PARAMS.setdefault(fn, []).insert(0, (names, values))
            return fn
        return mark

    def __getattr__(self, name):  # mark.slow, mark.board, mark.asyncio(...): nothing here
        def mark(*args, **kw):
            if len(args) == 1 and callable(args[0]) and not kw:
                return args[0]
            return lambda fn: fn
        return mark


class _Raises:
    def __init__(self, kind, match=None):
        self.kind, self.match, self.value = kind, match, None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            raise AssertionError(f"DID NOT RAISE {self.kind!r}")
        if not issubclass(kind, self.kind):
            return False
        if self.match is not None:
            import re
            if not re.search(self.match, str(value)):
                raise AssertionError(f"{str(value)!r} does not match {self.match!r}")
        self.value = value
        return True


class pytest:  # noqa: N801 - stands in for the module
    mark = _Mark()
    raises = _Raises

    @staticmethod
    def fixture(*args, **kw):
        if len(args) == 1 and callable(args[0]):
            return args[0]
        return lambda fn: fn


class _Future:
    annotations = None


sys.modules["pytest"] = pytest
sys.modules["__future__"] = _Future


def fixture(name):
    if name == "profile":
        from app.profile import parse
        path = ROOT + "/boards/emulator.json"
        with open(path) as f:
            return parse(f.read(), path)
    if name == "meter":
        from app.meter import Meter
        m = Meter(fixture("profile"))
        m.boot(1)
        return m
    raise LookupError(f"no fixture {name!r} under MicroPython")


def argnames(source, name):
    """The argument names of `def name(...)` in a test file's source."""
    i = source.index(f"def {name}(") + len(name) + 5
    args = source[i:source.index(")", i)]
    return [a.split(":")[0].split("=")[0].strip() for a in args.split(",") if a.strip()]


def cases(fn):
    """Each parametrize case of `fn` as a dict of argument values."""
    out = [{}]
    for names, values in PARAMS.get(fn, ()):
        grown = []
        for case in out:
            for v in values:
                v = v if len(names) > 1 else (v,)
                c = dict(case)
                for i, n in enumerate(names):
                    c[n] = v[i]
                grown.append(c)
        out = grown
    return out


def run(spec):
    path, _, only = spec.partition("::")
    where, _, modname = path.rpartition("/")
    sys.path.insert(1, where or ".")
    with open(path) as f:
        source = f.read()
    mod = __import__(modname[:-3])
    names = [only] if only else sorted(n for n in dir(mod) if n.startswith("test_"))
    passed = failed = 0
    for name in names:
        fn = getattr(mod, name)
        want = argnames(source, name)
        each = cases(fn)
        for k, case in enumerate(each):
            label = f"{path}::{name}" + (f"[{k}]" if len(each) > 1 else "")
            try:
                args = [case[a] if a in case else fixture(a) for a in want]
                got = fn(*args)
                if hasattr(got, "send"):  # an async test
                    import asyncio
                    asyncio.run(got)
                print("PASSED", label)
                passed += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
                print("FAILED", label)
                sys.print_exception(e)
                failed += 1
    return passed, failed


def main(specs):
    passed = failed = 0
    for spec in specs:
        p, f = run(spec)
        passed, failed = passed + p, failed + f
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


main(sys.argv[1:])
