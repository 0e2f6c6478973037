"""The checker of assert-based benchmarks (HumanEval, MBPP): runs INSIDE the sandbox, in the
candidate's own process, as every anchor harness runs these tests.

``benchmarks.program`` is this file's source plus ``main()``; the solution, the prompt and the
tests arrive on stdin as JSON (``benchmarks.program_input``), so the test text is in no file the
program can open. ``main`` reads them, leaves an empty stdin, then makes forging the
verdict as hard as running in one process allows:

- a guard (an audit hook, installed first and impossible to remove from Python) refuses what
  reaches the checker's memory from the candidate: frame objects (``sys._getframe``,
  ``tb_frame``, ``gi_frame``, ``sys._current_frames``, trace and profile functions), the
  garbage collector's object lists, ``ctypes``, other audit hooks, ``/proc`` and new
  processes. The tests, the checker's state and the sandbox's pass nonce are reachable only
  through those, so the candidate can neither read the expected values nor print the nonce;
- the solution and the tests are compiled and run separately: the tests are compiled after the
  solution's module code ran, into a copy of its namespace, so ``check`` and its constants are
  in no namespace or code object the candidate holds;
- ``builtins`` and every module the tests import are snapshotted before the solution runs and
  restored after it (patching ``abs`` or ``math.isclose`` undoes itself), then verified after
  the tests;
- every function the solution defines is called by the tests through a wrapper that turns its
  result into plain data (``int``, ``float``, ``str``, containers: subclasses become their base
  type); a result of a class with Python-level methods fails, so an object whose ``__eq__`` is
  always true cannot pass a comparison. Names the prompt defines (HumanEval's ``poly``,
  ``encode_cyclic``) are the prompt's own in the tests, and a solution's names that shadow a
  builtin (``abs = ...``), other than the entry point, are not seen there: a completion
  cannot redefine what a test uses to check it.

What an in-process program can still do is in README ("Verdicts an in-process program cannot
forge"). Only the standard library is used.
"""

import builtins
import json
import os
import re
import sys
import types

_GUARDED_EVENTS = {
    "sys._current_frames",
    "sys.settrace",
    "sys.setprofile",
    "sys.addaudithook",
    "sys.monitoring.register_callback",
    "gc.get_objects",
    "gc.get_referrers",
    "gc.get_referents",
    "subprocess.Popen",
    "os.system",
    "os.fork",
    "os.forkpty",
    "os.posix_spawn",
    "os.spawn",
    "os.exec",
    "pty.spawn",
}
_FRAME_ATTRIBUTES = {"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_code", "gi_code", "cr_code", "ag_code"}
_PYTHON_CALLABLES = (types.FunctionType, staticmethod, classmethod, property)
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement


def _guard(event, args):
    """The audit hook: refuses, for the rest of the process, what reaches the checker's memory."""
    if event == "sys._getframe":
        raise ValueError("the judge does not let a program inspect the call stack")  # what namedtuple expects
    if event == "object.__getattr__" and args[1] in _FRAME_ATTRIBUTES:
        raise AttributeError(f"the judge does not let a program read {args[1]}")
    if event.startswith("ctypes.") and event not in ("ctypes.dlopen", "ctypes.dlsym"):  # `import ctypes` works
        raise RuntimeError(f"{event}: not allowed by the judge")
    if event in _GUARDED_EVENTS or event.startswith(("_xxsubinterpreters.", "_interpreters.")):
        raise RuntimeError(f"{event}: not allowed by the judge")
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path == "/proc" or path.startswith(("/proc/", "/dev/fd")):
            raise PermissionError(f"{path}: not allowed by the judge")


def _python_level(kind: type) -> list[str]:
    """The classes of ``kind``'s MRO that hold methods written in Python (or callables of Python classes)."""
    found = []
    for klass in kind.__mro__:
        for value in vars(klass).values():
            if isinstance(value, _PYTHON_CALLABLES) or type(value).__flags__ & _HEAPTYPE:
                found.append(klass.__qualname__)
                break
    return found


def _plain(value):
    """``value`` as plain data built from the builtin types only: its comparisons are the builtins'."""
    kind = type(value)
    if value is None or kind in (bool, int, float, complex, str, bytes):
        return value
    for base in (list, tuple):
        if isinstance(value, base):
            return base(_plain(v) for v in base.__iter__(value))
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in dict.items(value)}
    for base in (set, frozenset):
        if isinstance(value, base):
            return base(_plain(v) for v in base.__iter__(value))
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, complex)):
        raise TypeError(f"returned a {kind.__qualname__}, a subclass of {kind.__mro__[1].__name__}")
    if python_level := _python_level(kind):
        where = python_level[0]
        raise TypeError(f"returned a {kind.__qualname__} (methods of {where} written in Python), not plain data")
    return value  # a C type's own comparisons (numpy scalars, iterators, Decimal)


def _sanitized(function):
    def call(*args, **kwargs):
        return _plain(function(*args, **kwargs))

    return call


def _test_modules(test: str) -> list[str]:
    """The modules the tests import (``import a, b`` and ``from a import x`` at any indent)."""
    names = []
    for source, plain in re.findall(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w., ]+))", test, re.M):
        names += [source] if source else [n.split(" as ")[0].strip() for n in plain.split(",") if n.strip()]
    return names


def _snapshot(modules: list[types.ModuleType]) -> dict:
    return {id(m): (m, dict(vars(m))) for m in modules}


def _restore(snapshot: dict) -> list[str]:
    """Put every snapshotted module's names back; the names that had changed."""
    changed = []
    for module, names in snapshot.values():
        current = vars(module)
        for key in [k for k in current if k not in names]:
            changed.append(f"{module.__name__}.{key}")
            del current[key]
        for key, value in names.items():
            if current.get(key, _restore) is not value:
                changed.append(f"{module.__name__}.{key}")
                current[key] = value
    return changed


def main() -> None:
    """Run the solution, then the tests; returns normally only if every test passed."""
    spec = json.loads(sys.stdin.read() or "null")
    if not isinstance(spec, dict):
        raise SystemExit("no solution and tests on stdin (run through benchmarks.program_input)")
    empty, writer = os.pipe()  # stdin now reads as empty: the spec is in no descriptor either
    os.close(writer)
    os.dup2(empty, 0)
    os.close(empty)
    solution_code = compile(spec["solution"], "solution.py", "exec")
    modules = {}
    for name in _test_modules(spec["test"]):
        try:
            __import__(name)
        except ImportError:  # not an import after all (a line of a string); the tests will say
            continue
        modules[name] = sys.modules[name]
    snapshot = _snapshot([builtins, *modules.values()])
    prompt_names = {}
    if spec["prompt"]:
        prompt_ns = {"__name__": __name__, "__builtins__": builtins}
        try:
            exec(compile(spec["prompt"], "prompt.py", "exec"), prompt_ns)
            prompt_names = {k: v for k, v in prompt_ns.items() if not k.startswith("__") and k != spec["entry_point"]}
        except Exception:  # a prompt that does not run alone: its names come from the solution
            prompt_names = {}
    sys.addaudithook(_guard)

    namespace = {"__name__": __name__, "__builtins__": builtins}
    exec(solution_code, namespace)
    _restore(snapshot)
    sys.modules.update(modules)
    if spec["entry_point"] not in namespace:
        raise NameError(f"the solution does not define {spec['entry_point']!r}")
    entry_point = spec["entry_point"]  # MBPP 126's function is called sum: the one name that may shadow
    tests = {name: value for name, value in namespace.items() if name not in vars(builtins) or name == entry_point}
    for name, value in tests.items():
        if isinstance(value, types.FunctionType) or (name == entry_point and not isinstance(value, type)):
            tests[name] = _sanitized(value)
    tests.update(prompt_names)
    tests["__builtins__"] = builtins
    exec(compile(spec["test"], "tests.py", "exec"), tests)
    if spec["call_check"]:
        tests["check"](tests[spec["entry_point"]])
    if changed := _restore(snapshot):
        raise RuntimeError(f"the program changed {', '.join(changed[:5])} while the tests ran")
