"""Mutation testing for the mechanisms exactly-once and event time rest on (docs/mutation.md).

Each mutant is one small change to one module (a comparison swapped, a constant moved by
one, a condition negated, a call deleted...). It is written into a private copy of the
repository, never into the work tree, and the test files mapped to that module
(tools/mutation_targets.toml) run against it with ``-x`` and a timeout. A mutant the tests
fail on is killed; one they pass on survived: either a gap in the tests or an equivalent
mutant (listed with its reason in tools/mutation_equivalent.toml, and not counted).

    python tools/mutation.py                              # every module in the table
    python tools/mutation.py --module arrowflow/_foundation/keygroups.py
    python tools/mutation.py --since origin/main          # only lines changed since a revision
    python tools/mutation.py --jobs 2 --report out.json   # two copies, mutants in parallel
    python tools/mutation.py --list --module arrowflow/_foundation/watermarks.py   # mutants, no test run
    python tools/mutation.py --survivors-of out.json      # re-run what survived, after new tests

How the copy imports itself: the editable install maps ``arrowflow.backends`` to
``backends/`` and ``arrowflow.io`` to ``io/``; in a copy the same layout is made with two
symlinks (``arrowflow/backends``, ``arrowflow/io``) and the copy goes first on
``PYTHONPATH``, so the tests, the worker processes they start and the job scripts they run
all import the copy. Bytecode is not written (``PYTHONDONTWRITEBYTECODE``): a mutant of the
same size written within the same second as the previous one must not reuse its ``.pyc``.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import copy
import dataclasses
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "tools" / "mutation_targets.toml"
EQUIVALENT = ROOT / "tools" / "mutation_equivalent.toml"


# ---------------------------------------------------------------------------- mutants


@dataclasses.dataclass(frozen=True)
class Mutant:
    path: str  # relative to the repository
    line: int
    end_line: int
    start: int  # character offsets into the source text
    end: int
    replacement: str
    description: str
    function: str  # enclosing qualified name, "" at module level
    col: int = 0  # 1-based column of the mutated code on ``line``

    def apply(self, source: str) -> str:
        return source[: self.start] + self.replacement + source[self.end :]

    def source_line(self, source: str) -> str:
        return source.splitlines()[self.line - 1].strip()


_COMPARE_SWAPS: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BINOP_SWAPS: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitAnd,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
}
_NAME_SWAPS = {
    "max": "min",
    "min": "max",
    "any": "all",
    "all": "any",
    "first": "last",
    "last": "first",
}
_SYMBOL = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.FloorDiv: "//",
    ast.Div: "/",
    ast.Mod: "%",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.And: "and",
    ast.Or: "or",
}


class _Collector(ast.NodeVisitor):
    """Walks one module and records every mutant as a replacement of a source segment."""

    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.source = source
        self.offsets = [0]
        for line in source.splitlines(keepends=True):
            self.offsets.append(self.offsets[-1] + len(line))
        self.scope: list[str] = []
        self.mutants: list[Mutant] = []

    # -- plumbing
    def _offset(self, line: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets
        text = self.source[self.offsets[line - 1] : self.offsets[line]]
        return self.offsets[line - 1] + len(text.encode()[:col].decode(errors="ignore"))

    def _add(self, node: ast.AST, replacement: str, description: str, *, wrap: bool = True) -> None:
        start = self._offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]
        end = self._offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        text = f"({replacement})" if wrap else replacement
        self.mutants.append(
            Mutant(
                self.path,
                node.lineno,
                node.end_lineno,
                start,
                end,
                text,  # type: ignore[attr-defined]
                description,
                ".".join(self.scope),
                start - self.offsets[node.lineno - 1] + 1,
            )
        )

    def _replace_expr(self, old: ast.expr, new: ast.expr, description: str) -> None:
        self._add(old, ast.unparse(new), description)

    def _scoped(self, node: ast.AST, name: str) -> None:
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    # -- what is never mutated: docstrings, annotations, f-strings (their positions are not
    # reliable), the module's imports and __all__
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._body_without_docstring(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._body_without_docstring(node)

    def _body_without_docstring(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    ) -> None:
        self.scope.append(node.name)
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body = body[1:]
        if not isinstance(node, ast.ClassDef):
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None:
                    self.visit(default)
        for statement in body:
            self.visit(statement)
        self.scope.pop()

    def visit_Module(self, node: ast.Module) -> None:
        for statement in node.body:
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                continue
            if isinstance(statement, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in statement.targets
            ):
                continue
            if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
                continue
            self.visit(statement)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return

    # -- expressions
    def visit_Compare(self, node: ast.Compare) -> None:
        for index, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap is not None:
                mutated = copy.deepcopy(node)
                mutated.ops[index] = swap()
                self._replace_expr(node, mutated, f"{_SYMBOL[type(op)]} -> {_SYMBOL[swap]}")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = _BINOP_SWAPS.get(type(node.op))
        if swap is not None and not _is_string_formatting(node):
            mutated = copy.deepcopy(node)
            mutated.op = swap()
            self._replace_expr(node, mutated, f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[swap]}")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        swap = _BINOP_SWAPS.get(type(node.op))
        if swap is not None:
            mutated = copy.deepcopy(node)
            mutated.op = swap()
            self._add(
                node,
                ast.unparse(mutated),
                f"{_SYMBOL[type(node.op)]}= -> {_SYMBOL[swap]}=",
                wrap=False,
            )
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        mutated = copy.deepcopy(node)
        mutated.op = other
        self._replace_expr(node, mutated, f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[type(other)]}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self._replace_expr(node, node.operand, "not x -> x")
        elif isinstance(node.op, ast.Invert):
            self._replace_expr(node, node.operand, "~x -> x")
        elif isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            pass  # a negative constant: handled as a constant
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self._add(node, repr(not value), f"{value} -> {not value}", wrap=False)
        elif isinstance(value, int):
            self._add(node, repr(value + 1), f"{value} -> {value + 1}")
            self._add(node, repr(value - 1), f"{value} -> {value - 1}")
        elif isinstance(value, float):
            changed = 0.0 if value else 1.0
            self._add(node, repr(changed), f"{value} -> {changed}")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in ("max", "min", "any", "all") and isinstance(node.ctx, ast.Load):
            self._add(
                node, _NAME_SWAPS[node.id], f"{node.id} -> {_NAME_SWAPS[node.id]}", wrap=False
            )

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _NAME_SWAPS:
            mutated = copy.deepcopy(node)
            mutated.func.attr = _NAME_SWAPS[func.attr]  # type: ignore[attr-defined]
            self._replace_expr(node, mutated, f".{func.attr}() -> .{_NAME_SWAPS[func.attr]}()")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.generic_visit(node)

    # -- statements
    def visit_If(self, node: ast.If) -> None:
        self._negate(node.test)
        self.generic_visit(node)

    def visit_While(self, node: ast.While) -> None:
        self._negate(node.test)
        self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._negate(node.test)
        self.generic_visit(node)

    def _negate(self, test: ast.expr) -> None:
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            return  # "not x -> x" already
        self._add(test, f"not ({ast.unparse(test)})", "condition negated")

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, (ast.Call, ast.Await)):
            self._add(node, "pass", f"call deleted: {ast.unparse(node.value)[:60]}", wrap=False)
        self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None
        ):
            self._add(node, "return None", "return value -> None", wrap=False)
        self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> None:
        self._add(node, "pass", "raise deleted", wrap=False)
        # the exception's construction (usually the message) is not mutated

    def visit_Break(self, node: ast.Break) -> None:
        self._add(node, "continue", "break -> continue", wrap=False)

    def visit_Continue(self, node: ast.Continue) -> None:
        self._add(node, "break", "continue -> break", wrap=False)

    def visit_Assign(self, node: ast.Assign) -> None:
        # ``msg = ...`` builds an error message: its text is not behaviour under test
        if (
            len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "msg"
        ):
            return
        self.generic_visit(node)


def _is_string_formatting(node: ast.BinOp) -> bool:
    return isinstance(node.op, (ast.Add, ast.Mod)) and any(
        isinstance(side, (ast.JoinedStr, ast.Constant))
        and isinstance(getattr(side, "value", ""), str)
        for side in (node.left, node.right)
    )


def mutants_of(path: str, source: str) -> list[Mutant]:
    collector = _Collector(path, source)
    collector.visit(ast.parse(source))
    return sorted(collector.mutants, key=lambda m: (m.start, m.end, m.description))


# ---------------------------------------------------------------------------- selection


def changed_lines(revision: str, path: str) -> set[int]:
    """Lines of ``path`` added or changed since ``revision`` (the work tree against it)."""
    diff = subprocess.run(
        ["git", "diff", "-U0", revision, "--", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines: set[int] = set()
    for match in re.finditer(r"^@@ -\S+ \+(\d+)(?:,(\d+))? @@", diff, re.MULTILINE):
        first, count = int(match.group(1)), int(match.group(2) or 1)
        lines.update(range(first, first + count))
    return lines


def select(
    mutants: list[Mutant], *, functions: list[str] | None, lines: set[int] | None
) -> list[Mutant]:
    chosen = []
    for mutant in mutants:
        if functions and not any(
            fnmatch.fnmatch(mutant.function, pattern) for pattern in functions
        ):
            continue
        if lines is not None and not lines.intersection(range(mutant.line, mutant.end_line + 1)):
            continue
        chosen.append(mutant)
    return chosen


def load_equivalent() -> list[dict[str, str]]:
    if not EQUIVALENT.exists():
        return []
    return tomllib.loads(EQUIVALENT.read_text())["equivalent"]


def equivalence_reason(mutant: Mutant, source: str, known: list[dict[str, str]]) -> str | None:
    """Equivalent mutants are named by file, enclosing function, mutation and source line
    text (not line numbers: those move as the module changes), and by column where one line
    has two mutants of the same description."""
    line = mutant.source_line(source)
    for entry in known:
        if (
            entry["path"] == mutant.path
            and entry["function"] == mutant.function
            and entry["mutation"] == mutant.description
            and entry["line"] == line
            and entry.get("col", mutant.col) == mutant.col
        ):
            return entry["reason"]
    return None


# ---------------------------------------------------------------------------- running

_STOP = threading.Event()
_RUNNING: set[subprocess.Popen[bytes]] = set()
_LOCK = threading.Lock()


def make_copy(base: Path) -> Path:
    """A private copy of the repository's tracked files (plus the built extension), importable
    as the editable install maps it."""
    target = Path(tempfile.mkdtemp(prefix="copy-", dir=base))
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    names = [n for n in files.decode().split("\0") if n]
    names += [str(p.relative_to(ROOT)) for p in (ROOT / "backends").glob("*.so")]
    for name in names:
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the work tree
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    (target / "arrowflow" / "backends").symlink_to("../backends")
    (target / "arrowflow" / "io").symlink_to("../io")
    return target


def _environment(copy_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy_dir), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["ARROWFLOW_CONFORMANCE_EXAMPLES"] = env.get("ARROWFLOW_CONFORMANCE_EXAMPLES", "10")
    return env


def run_tests(
    copy_dir: Path, tests: list[str], extra: list[str], timeout: float
) -> tuple[str, float, str]:
    """("passed" | "failed" | "timeout", seconds, output tail)."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        "--no-header",
        *extra,
        *tests,
    ]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=copy_dir,
        env=_environment(copy_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    with _LOCK:
        _RUNNING.add(process)
    try:
        output, _ = process.communicate(timeout=timeout)
        outcome = "passed" if process.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        _kill_group(process)
        output, _ = process.communicate()
        outcome = "timeout"
    finally:
        with _LOCK:
            _RUNNING.discard(process)
    tail = output.decode(errors="replace").strip().splitlines()[-3:]
    return outcome, time.monotonic() - started, "\n".join(tail)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the test run and the workers it started


@dataclasses.dataclass
class Result:
    mutant: Mutant
    outcome: str  # killed, timeout, survived, equivalent, invalid
    seconds: float = 0.0
    reason: str = ""


def run_module(
    module: str,
    config: dict,
    args: argparse.Namespace,
    copies: list[Path],
    known: list[dict[str, str]],
) -> dict:
    source = (ROOT / module).read_text()
    mutants = mutants_of(module, source)
    lines = changed_lines(args.since, module) if args.since else None
    mutants = select(mutants, functions=args.functions or config.get("functions"), lines=lines)
    if args.survivors_of:
        previous = {
            (e["path"], e["function"], e["mutation"], e["source"])
            for summary in json.loads(Path(args.survivors_of).read_text())
            for e in summary.get("survived", [])
        }
        mutants = [
            m
            for m in mutants
            if (m.path, m.function, m.description, m.source_line(source)) in previous
        ]
    if args.max is not None:
        mutants = mutants[: args.max]
    tests, extra = args.tests or config["tests"], config.get("pytest_args", [])
    print(
        f"\n== {module}: {len(mutants)} mutants, tests: {' '.join(tests)} {' '.join(extra)}",
        flush=True,
    )
    if not mutants:
        return {"module": module, "mutants": 0, "results": []}
    started = time.monotonic()
    outcome, baseline, tail = run_tests(copies[0], tests, extra, timeout=args.baseline_timeout)
    if outcome != "passed":
        print(
            f"   the mapped tests do not pass on the unmutated module ({outcome}):\n{tail}",
            flush=True,
        )
        return {
            "module": module,
            "mutants": len(mutants),
            "error": f"baseline {outcome}: {tail}",
            "results": [],
        }
    timeout = max(args.min_timeout, baseline * args.timeout_factor)
    print(f"   baseline {baseline:.1f}s; timeout per mutant {timeout:.0f}s", flush=True)

    free = list(copies)
    free_lock = threading.Lock()

    def one(mutant: Mutant) -> Result:
        reason = equivalence_reason(mutant, source, known)
        if reason is not None:
            return Result(mutant, "equivalent", reason=reason)
        text = mutant.apply(source)
        try:
            compile(text, module, "exec")
        except SyntaxError as exc:
            return Result(mutant, "invalid", reason=str(exc))
        if _STOP.is_set():
            return Result(mutant, "skipped")
        with free_lock:
            copy_dir = free.pop()
        target = copy_dir / module
        try:
            target.write_text(text)
            outcome, seconds, _ = run_tests(copy_dir, tests, extra, timeout)
        finally:
            target.write_text(source)
            with free_lock:
                free.append(copy_dir)
        if _STOP.is_set():  # its test run was killed by the stop, not failed by the mutant
            return Result(mutant, "skipped")
        return Result(
            mutant, {"passed": "survived", "failed": "killed"}.get(outcome, outcome), seconds
        )

    results: list[Result] = []
    stopped = False
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(copies)) as pool:
        futures = [pool.submit(one, mutant) for mutant in mutants]
        for index, future in enumerate(futures, start=1):
            while True:
                try:
                    result = future.result()
                    break
                except KeyboardInterrupt:  # stopped: what finished is reported, the rest skipped
                    stopped = True
                    _stop_all()
            results.append(result)
            if result.outcome == "survived" or args.verbose:
                m = result.mutant
                print(
                    f"   [{index}/{len(mutants)}] {result.outcome:9} {m.path}:{m.line}:{m.col} {m.description}"
                    f"  | {m.source_line(source)[:90]}",
                    flush=True,
                )
            elif index % 25 == 0:
                print(f"   [{index}/{len(mutants)}] ...", flush=True)
    elapsed = time.monotonic() - started
    summary = summarize(module, results, source, elapsed)
    summary["stopped"] = stopped
    return summary


def _stop_all() -> None:
    _STOP.set()
    with _LOCK:
        for process in list(_RUNNING):
            _kill_group(process)


def summarize(module: str, results: list[Result], source: str, elapsed: float) -> dict:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    detected = counts.get("killed", 0) + counts.get("timeout", 0)
    scored = detected + counts.get("survived", 0)
    score = detected / scored if scored else None

    def entry(result: Result) -> dict:
        m = result.mutant
        return {
            "path": m.path,
            "line": m.line,
            "col": m.col,
            "function": m.function,
            "mutation": m.description,
            "source": m.source_line(source),
            "reason": result.reason,
        }

    return {
        "module": module,
        "mutants": len(results),
        "counts": counts,
        "score": score,
        "seconds": round(elapsed, 1),
        "survived": [entry(r) for r in results if r.outcome == "survived"],
        "equivalent": [entry(r) for r in results if r.outcome == "equivalent"],
    }


def print_report(summaries: list[dict]) -> None:
    print(
        "\n== mutation score per module (killed + timeout) / (killed + timeout + survived); "
        "equivalent and invalid mutants not counted"
    )
    print(
        f"{'module':40} {'mutants':>7} {'killed':>6} {'tmout':>5} {'surv':>5} {'equiv':>5} {'inval':>5} "
        f"{'skip':>5} {'score':>6} {'time':>7}"
    )
    for s in summaries:
        c = s.get("counts", {})
        score = "-" if s.get("score") is None else f"{100 * s['score']:.1f}%"
        print(
            f"{s['module']:40} {s['mutants']:>7} {c.get('killed', 0):>6} {c.get('timeout', 0):>5} "
            f"{c.get('survived', 0):>5} {c.get('equivalent', 0):>5} {c.get('invalid', 0):>5} "
            f"{c.get('skipped', 0):>5} {score:>6} "
            f"{s.get('seconds', 0):>6.0f}s" + (f"  ERROR {s['error'][:60]}" if "error" in s else "")
        )
    for s in summaries:
        if s.get("survived"):
            print(f"\nsurvivors in {s['module']}:")
            for m in s["survived"]:
                print(
                    f"  {m['path']}:{m['line']}:{m.get('col', 0)} [{m['function']}] {m['mutation']}  | {m['source'][:100]}"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--module", action="append", help="a module of the table (repeatable); default: all"
    )
    parser.add_argument("--since", help="only mutants on lines changed since this git revision")
    parser.add_argument(
        "--functions",
        action="append",
        help="only mutate these functions (fnmatch on the qualified name; repeatable), "
        "instead of the table's choice",
    )
    parser.add_argument(
        "--tests",
        action="append",
        help="run these test files or node ids (repeatable) instead of the table's",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="mutants run in parallel, each in its own copy"
    )
    parser.add_argument(
        "--max", type=int, help="at most this many mutants per module (a quick look)"
    )
    parser.add_argument(
        "--timeout-factor", type=float, default=3.0, help="mutant timeout = baseline x this"
    )
    parser.add_argument("--min-timeout", type=float, default=60.0, help="seconds, at least")
    parser.add_argument("--baseline-timeout", type=float, default=900.0)
    parser.add_argument(
        "--survivors-of",
        metavar="REPORT",
        help="only the mutants that survived in this earlier --report (after adding tests)",
    )
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument("--report", help="write the results as JSON to this file")
    parser.add_argument("--verbose", action="store_true", help="print every mutant's outcome")
    args = parser.parse_args(argv)

    table = tomllib.loads(TARGETS.read_text())["module"]
    modules = args.module or list(table)
    unknown = [m for m in modules if m not in table]
    if unknown:
        parser.error(f"not in {TARGETS.name}: {unknown}; known: {list(table)}")
    if args.list:
        for module in modules:
            source = (ROOT / module).read_text()
            lines = changed_lines(args.since, module) if args.since else None
            chosen = select(
                mutants_of(module, source),
                functions=args.functions or table[module].get("functions"),
                lines=lines,
            )
            print(f"== {module}: {len(chosen)} mutants")
            for m in chosen:
                print(
                    f"  {m.path}:{m.line}:{m.col} [{m.function}] {m.description}  | {m.source_line(source)[:90]}"
                )
        return 0

    known = load_equivalent()
    base = Path(tempfile.mkdtemp(prefix="arrowflow-mutation-"))

    def stop(signum: int, frame: object) -> None:
        _stop_all()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    summaries = []
    try:
        copies = [make_copy(base) for _ in range(max(1, args.jobs))]
        for module in modules:
            summaries.append(run_module(module, table[module], args, copies, known))
            if args.report:  # after each module: a long run that is stopped keeps what it did
                Path(args.report).write_text(json.dumps(summaries, indent=1))
            if _STOP.is_set():
                print("\nstopped: the mutants not run are counted as skipped", flush=True)
                break
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
        _stop_all()
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the work tree was never written to
    print_report(summaries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
