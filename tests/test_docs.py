"""The documentation runs: the README's commands and code, and every docstring example.

- The README opens with exactly two commands — install and run the demo, install and run
  the tests — and ``.ci/run`` runs that same test command.
- Every ```python block of the README runs, in order, in one namespace, in a fresh folder.
- Every ``arrowflow ...`` line in its ```bash blocks parses with the real CLI parser.
- The doctests of every module of arrowflow (``arrowflow``, ``arrowflow.io``,
  ``arrowflow.backends``) pass, as ``python -m doctest`` would run them.
- Every link of the README and docs/, and every path to a page that a docstring or comment
  of the package names, stays inside the repository and points at a file that exists: a
  clone has nothing outside it (the design once lived in ``../shared/``).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def readme_blocks(language: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block of ``language`` in the README."""
    text = README.read_text()
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(2))
        for match in FENCE.finditer(text)
        if match.group(1) == language
    ]


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text()
    first = FENCE.search(text)
    assert first is not None, "the README has no code block"
    before = text[: first.start()].strip().splitlines()
    assert len(before) == 1 and before[0].startswith("# "), (
        "only the title may come before the commands"
    )
    commands = first.group(2).strip().splitlines()
    assert len(commands) == 2, f"the README must open with exactly two commands, found {commands}"
    demo, tests = commands
    assert demo.startswith("python3 -m venv ") and demo.endswith("arrowflow demo")
    assert tests.startswith("python3 -m venv ") and " -m pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    """``.ci/run`` runs the README's second command, with its venv in a temporary folder."""
    test_command = FENCE.search(README.read_text()).group(2).strip().splitlines()[1]
    ci = (ROOT / ".ci" / "run").read_text().replace('"', "")
    for step in test_command.split(" && "):
        expected = step.replace(".venv", "$VENV").replace('"', "")
        assert expected in ci, f".ci/run does not run the README's {step!r} (as {expected!r})"
    assert "set -euo pipefail" in ci


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = readme_blocks("python")
    assert blocks, "the README has no python code blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for line, code in blocks:
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(
                f"the README's python block at line {line} raised {type(exc).__name__}: {exc}"
            )


def test_readme_cli_lines_parse() -> None:
    from arrowflow.cli import build_parser

    lines = [
        line.split("#", 1)[0].strip()
        for _, code in readme_blocks("bash")
        for line in code.splitlines()
    ]
    commands = [line for line in lines if line.startswith("arrowflow ")]
    assert commands, "the README shows no arrowflow command"
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])  # exits (fails the test) on a bad flag


def _modules() -> list[str]:
    names = []
    for package_name in ("arrowflow", "arrowflow.io", "arrowflow.backends"):
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if (
                info.name.startswith(("arrowflow.io.", "arrowflow.backends."))
                and package_name == "arrowflow"
            ):
                continue
            names.append(info.name)
    return sorted(set(names))


@pytest.mark.parametrize("module_name", _modules())
def test_doctests(module_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(module_name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    outcome = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
    assert outcome.failed == 0, (
        f"{outcome.failed} of {outcome.attempted} doctest examples in {module_name} failed (see stdout)"
    )


#: Pages docs/architecture.md announces that other changes of the architecture issue write;
#: a link to one is allowed while it is missing (once it exists it is checked like the rest).
#: Empty this when they have landed.
PENDING_PAGES: set[str] = set()
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
#: A path to a page in a docstring or comment: a relative path ending in .md, e.g.
#: ``docs/design.md`` or ``../shared/DESIGN.md``.
PAGE_PATH = re.compile(r"(?<![\w/.-])((?:\.\./)*[\w.-]+(?:/[\w.-]+)*\.md)\b")


def _markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def _source_files() -> list[Path]:
    return sorted(
        p for folder in ("arrowflow", "io", "backends") for p in (ROOT / folder).rglob("*.py")
    )


def _link_problem(target: str, base: Path) -> str | None:
    """Why a link to ``target`` (relative to the folder ``base``) is wrong, or None."""
    path = target.split("#", 1)[0]
    if not path:
        return None
    resolved = (base / path).resolve()
    if not resolved.is_relative_to(ROOT):
        return "leaves the repository"
    if not resolved.exists() and resolved.relative_to(ROOT).as_posix() not in PENDING_PAGES:
        return "does not exist"
    return None


def test_markdown_links_stay_in_the_repository() -> None:
    problems = []
    for page in _markdown_files():
        for match in MARKDOWN_LINK.finditer(page.read_text()):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            problem = _link_problem(target, page.parent)
            if problem:
                problems.append(f"{page.relative_to(ROOT)}: link {target!r} {problem}")
    assert not problems, "\n".join(problems)


def test_pages_named_in_the_code_exist_in_the_repository() -> None:
    """A docstring or comment names a page by its path from the repository root."""
    problems = []
    for source in _source_files():
        for number, line in enumerate(source.read_text().splitlines(), start=1):
            for match in PAGE_PATH.finditer(line):
                problem = _link_problem(match.group(1), ROOT)
                if problem:
                    where = f"{source.relative_to(ROOT)}:{number}"
                    problems.append(f"{where}: {match.group(1)!r} {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("../shared/DESIGN.md", "leaves the repository"),
        ("../../README.md", "leaves the repository"),
        ("docs/nowhere.md", "does not exist"),
        ("docs/design.md#5-checkpoints", None),
        ("docs/runtime.md", None),
    ],
)
def test_the_link_check_refuses_paths_outside_the_repository(
    target: str, problem: str | None
) -> None:
    if target == "docs/runtime.md" and (ROOT / target).exists():
        problem = None  # a pending page that has landed: checked as any other
    assert _link_problem(target, ROOT) == problem
