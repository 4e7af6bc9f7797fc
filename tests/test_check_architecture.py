"""tools/check_architecture.py: the staged tree, contracts over modules that do not exist yet,
and the report of every contract (mypy itself runs in CI, through ``.ci/run``)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_architecture", ROOT / "tools" / "check_architecture.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_staged_tree_is_the_installed_layout_made_of_copies(tmp_path: Path) -> None:
    tool = _tool()
    staged = tool.stage(tmp_path)
    for package in ("arrowflow", "arrowflow/io", "arrowflow/backends"):
        init = staged / package / "__init__.py"
        assert init.is_file() and not init.is_symlink()
    assert (staged / "arrowflow" / "backends" / "lmdb.py").is_file()
    assert (staged / "arrowflow" / "io" / "files.py").is_file()
    assert not list(staged.rglob("*.so")), "only Python sources (and stubs) are staged"
    modules = tool.staged_modules(staged)
    assert {"arrowflow", "arrowflow.io.files", "arrowflow.backends.sql"} <= modules


def test_a_contract_leaves_out_modules_that_do_not_exist_yet_and_names_them() -> None:
    tool = _tool()
    modules = {"arrowflow.cli", "arrowflow._api", "arrowflow.sources", "arrowflow.errors"}
    contract = {
        "id": "layers",
        "type": "layers",
        "layers": [
            "arrowflow.cli : arrowflow.demo",
            "arrowflow._api",
            "arrowflow.sources | (arrowflow.options) | arrowflow.runners",
            "arrowflow.errors",
        ],
    }
    pruned, missing = tool.prune(contract, modules)
    assert pruned["layers"] == [
        "arrowflow.cli",
        "arrowflow._api",
        "arrowflow.sources",
        "arrowflow.errors",
    ]
    assert missing == ["arrowflow.demo", "(arrowflow.options)", "arrowflow.runners"]
    forbidden = {
        "id": "f",
        "type": "forbidden",
        "source_modules": ["arrowflow._api", "arrowflow.runners"],
        "forbidden_modules": ["arrowflow.io"],
    }
    pruned, missing = tool.prune(forbidden, modules)
    assert pruned["source_modules"] == ["arrowflow._api"]
    assert missing == ["arrowflow.runners", "arrowflow.io"]


@pytest.mark.timeout(300)
def test_every_contract_is_reported_and_only_the_selected_ones_fail_the_run() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "tools" / "check_architecture.py"), "--no-mypy", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=240,
        )

    enforced = run()
    assert enforced.returncode == 0, enforced.stdout + enforced.stderr
    reported = [
        line
        for line in enforced.stdout.splitlines()
        if line.startswith("check_architecture: contract")
    ]
    assert {line.split()[2].rstrip(":") for line in reported} >= {
        "layers",
        "engine-plugins",
        "io-low",
        "backends-low",
        "plugins-independent",
    }
    assert "check_architecture: OK" in enforced.stdout
    unknown = run("--contracts", "no-such-contract")
    assert unknown.returncode == 2 and "unknown contract ids" in unknown.stdout
