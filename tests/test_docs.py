"""The documentation runs: the README's commands and code, and every docstring example.

- The README opens with exactly two commands — install and run the demo, install and run
  the tests — and ``.ci/run`` runs that same test command.
- Every ```python block of the README runs, in order, in one namespace, in a fresh folder.
- Every ``arrowflow ...`` line in its ```bash blocks parses with the real CLI parser.
- The doctests of every module of arrowflow (``arrowflow``, ``arrowflow.io``,
  ``arrowflow.backends``) pass, as ``python -m doctest`` would run them.
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
