"""Check the code without running it: the type checker and the import contracts.

    python tools/check_architecture.py                    # mypy + the enforced contracts
    python tools/check_architecture.py --contracts all    # every contract must be kept
    python tools/check_architecture.py --contracts layers,engine-plugins
    python tools/check_architecture.py --no-mypy -v       # the contracts only, every chain

Why a staged copy: ``pyproject.toml`` maps ``arrowflow.io`` to ``io/`` and
``arrowflow.backends`` to ``backends/`` (setuptools ``package-dir``), which only an installed
package resolves; neither mypy nor import-linter follows an editable install's import hook.
So the script copies ``arrowflow/``, ``io/`` (as ``arrowflow/io/``) and ``backends/`` (as
``arrowflow/backends/``) into a temporary folder and runs both tools there:

1. ``mypy -p arrowflow`` with the options of ``[tool.mypy]``;
2. ``lint-imports`` once per contract of ``[tool.importlinter]``, each reported as kept or
   broken. A contract may name a module that does not exist yet (a room another change
   creates); the staged configuration leaves such modules out and the report lists them.

Which contracts fail the run: ``[tool.arrowflow.checks] enforced_contracts`` in
``pyproject.toml`` (the default, ``--contracts enforced``), every one (``--contracts all``) or
the ids given. The others are still checked and reported. Exit status 0 when mypy passed and
every selected contract was kept, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli comes with mypy
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "arrowflow"
# where each folder of the source tree lives in the installed package (pyproject package-dir)
TREES = {
    "arrowflow": ROOT / "arrowflow",
    "arrowflow/io": ROOT / "io",
    "arrowflow/backends": ROOT / "backends",
}
# contract fields that name modules (import-linter's layers, forbidden and independence)
MODULE_FIELDS = ("source_modules", "forbidden_modules", "modules")


def stage(into: Path) -> Path:
    """Copy the Python files of the tree into ``into`` laid out as the installed package."""
    for target, folder in TREES.items():
        for path in folder.rglob("*"):
            if path.suffix not in (".py", ".pyi") and path.name != "py.typed":
                continue
            rel = path.relative_to(folder)
            if "__pycache__" in rel.parts:
                continue
            if target == "arrowflow" and rel.parts[0] in ("io", "backends"):
                continue  # a stray arrowflow/io would shadow the real one
            dest = into / target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    return into


def staged_modules(staged: Path) -> set[str]:
    """Every module and package name in the staged tree."""
    names: set[str] = set()
    for path in (staged / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(staged).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.add(".".join(parts))
    return names


def exists(name: str, modules: set[str]) -> bool:
    return name.strip("()") in modules


def prune(contract: dict[str, Any], modules: set[str]) -> tuple[dict[str, Any], list[str]]:
    """The contract without the modules that do not exist yet, and those modules."""
    pruned = dict(contract)
    missing: list[str] = []
    for field in MODULE_FIELDS:
        if field in contract:
            keep = [m for m in contract[field] if exists(m, modules)]
            missing += [m for m in contract[field] if not exists(m, modules)]
            pruned[field] = keep
    if "layers" in contract:
        layers = []
        for layer in contract["layers"]:
            sep = "|" if "|" in layer else ":"
            names = [n.strip() for n in layer.split(sep)]
            missing += [n for n in names if not exists(n, modules)]
            names = [n for n in names if exists(n, modules)]
            if names:
                layers.append(f" {sep} ".join(names))
        pruned["layers"] = layers
    return pruned, missing


def ini_value(value: Any) -> str:
    if isinstance(value, list):
        return "".join(f"\n    {item}" for item in value)
    if isinstance(value, bool):
        return str(value)
    return str(value)


def write_contracts(config: dict[str, Any], modules: set[str], path: Path) -> dict[str, list[str]]:
    """Write the staged import-linter configuration (INI); return the missing modules by id."""
    lines = ["[importlinter]"]
    missing_by_id: dict[str, list[str]] = {}
    for key, value in config.items():
        if key != "contracts":
            lines.append(f"{key} = {ini_value(value)}")
    for contract in config.get("contracts", []):
        pruned, missing = prune(contract, modules)
        missing_by_id[contract["id"]] = missing
        lines += ["", f"[importlinter:contract:{contract['id']}]"]
        lines += [f"{k} = {ini_value(v)}" for k, v in pruned.items() if k != "id"]
    path.write_text("\n".join(lines) + "\n")
    return missing_by_id


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, float]:
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--contracts",
        default="enforced",
        help="which contracts fail the run: enforced (pyproject [tool.arrowflow.checks]), "
        "all, or a comma-separated list of ids",
    )
    parser.add_argument("--no-mypy", action="store_true", help="skip the type checker")
    parser.add_argument("--no-contracts", action="store_true", help="skip the import contracts")
    parser.add_argument("--json", action="store_true", help="print the statuses as JSON too")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the broken chains of contracts that are reported only, too",
    )
    args = parser.parse_args(argv)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = pyproject["tool"]
    contracts = tool["importlinter"].get("contracts", [])
    ids = [c["id"] for c in contracts]
    if args.contracts == "enforced":
        selected = list(tool.get("arrowflow", {}).get("checks", {}).get("enforced_contracts", []))
    elif args.contracts == "all":
        selected = ids
    else:
        selected = [c.strip() for c in args.contracts.split(",") if c.strip()]
    unknown = sorted(set(selected) - set(ids))
    if unknown:
        print(f"check_architecture: unknown contract ids {unknown}; known: {ids}")
        return 2

    bindir = Path(sys.executable).parent
    failed: list[str] = []
    statuses: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="arrowflow-checks-") as tmp:
        staged = stage(Path(tmp))
        # the staged copy comes first on the path, ahead of the editable install's finder
        env = {**os.environ, "PYTHONPATH": str(staged), "MYPYPATH": str(staged)}
        if not args.no_mypy:
            cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
            cmd += ["--cache-dir", str(staged / ".mypy_cache"), "-p", PACKAGE]
            code, out, took = run(cmd, staged, env)
            statuses["mypy"] = "passed" if code == 0 else "FAILED"
            print(out.rstrip().replace(str(staged) + os.sep, ""))
            print(f"check_architecture: mypy {statuses['mypy']} ({took:.1f} s)")
            if code != 0:
                failed.append("mypy")
        if not args.no_contracts:
            config = staged / ".importlinter"
            missing = write_contracts(tool["importlinter"], staged_modules(staged), config)
            lint = shutil.which("lint-imports", path=str(bindir)) or "lint-imports"
            for contract in contracts:
                cid = contract["id"]
                cmd = [lint, str(config), "--contract", cid]
                code, out, took = run(cmd, staged, env)
                kept = code == 0
                enforced = cid in selected
                statuses[cid] = "kept" if kept else "BROKEN"
                note = "enforced" if enforced else "reported only"
                if missing[cid]:
                    note += f"; not in the tree yet, left out: {', '.join(missing[cid])}"
                if not kept and (enforced or args.verbose):
                    # the contract's own report: its broken chains, without the banner
                    body = (
                        out.split("Broken contracts", 1)[-1] if "Broken contracts" in out else out
                    )
                    print(body.rstrip())
                print(f"check_architecture: contract {cid}: {statuses[cid]} ({note}, {took:.1f} s)")
                if enforced and not kept:
                    failed.append(cid)
    if args.json:
        print(json.dumps(statuses, indent=2))
    if failed:
        print(f"check_architecture: FAILED: {', '.join(failed)}")
        return 1
    print("check_architecture: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
