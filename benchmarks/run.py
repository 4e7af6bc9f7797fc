"""Run the benchmark jobs of ``docs/benchmarks.md`` against their baseline, in one invocation.

    python benchmarks/run.py w1 --rows 10000000 --workers 0 1 2 --repeat 3

Every run of every contender is a fresh child process (``run.py --child ...``), measured as
a whole — interpreter start-up, imports, planning, reading, computing, writing — because that
is what a user waits for and what the peers in ``docs/benchmarks.md`` were measured on. The child
also reports the job's own time (``job s``) without start-up. Repeats are interleaved
(polars, arrowflow w=0, w=1, ..., polars, ...) so that noise from other work on a shared
machine hits every contender alike, after one untimed warm-up run per contender (page
cache, bytecode cache); the table shows medians, min-max and ratios to the baseline
measured in the same invocation: the ratio of the medians, and ``paired``, the median of
the ratios within each round (steadier when other work on the machine comes and goes).

Peak memory is the child's own high-water resident set (``VmHWM``, which it reports as it
exits — ``wait4``'s ``ru_maxrss`` would include the runner's own memory, inherited before
``exec``); for contenders with worker processes it is the larger of that and the sampled
(every 50 ms) sum of the proportional set sizes (PSS) of the whole process tree, so pages
shared between processes, like the shared-memory channels, are not counted twice.

Before the table is printed, every contender's output is compared with the baseline's
(sorted, floats to 1e-9 relative): a contender that computed a different answer is reported
as WRONG and the runner exits with status 1, so a benchmark can never report a fast wrong
answer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from data import DEFAULT_DIR, ensure  # noqa: E402
from jobs import JOBS, Contender, Job  # noqa: E402


# ---------------------------------------------------------------------------- measuring
def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(c) for c in handle.read().split())
    except OSError:
        pass
    return found


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


class TreeMemory(threading.Thread):
    """Samples the summed PSS of a process and its descendants until stopped."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            tree, todo = [], [self.pid]
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo.extend(_children(pid))
            self.peak = max(self.peak, sum(_pss_bytes(pid) for pid in tree))
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


@dataclass
class Measurement:
    contender: str
    wall_s: float
    peak_bytes: int
    report: dict[str, Any] = field(default_factory=dict)


def child_environment(cache: Path) -> dict[str, str]:
    """The children's environment: compiled bytecode cached, as in a normal install.

    With ``PYTHONDONTWRITEBYTECODE`` set (as on some shared machines) every run would
    compile arrowflow's modules from source again while polars' come precompiled from its
    wheel; a private ``PYTHONPYCACHEPREFIX`` keeps the cache out of the source tree.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(Path(cache).resolve() / "pycache")
    return env


def measure(
    command: list[str], sample_tree: bool, env: dict[str, str] | None = None
) -> Measurement:
    """Run ``command``; its wall time, peak memory and the JSON report it printed last."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        sampler = TreeMemory(process.pid) if sample_tree else None
        if sampler is not None:
            sampler.start()
        _, status = os.waitpid(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        tree_peak = sampler.stop() if sampler is not None else 0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if process.returncode != 0:
        msg = f"{' '.join(command)} failed with exit code {process.returncode}:\n{stderr[-4000:]}"
        raise RuntimeError(msg)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    peak = max(int(report.get("vm_hwm_bytes", 0)), tree_peak)
    return Measurement("", wall, peak, report)


# ---------------------------------------------------------------------------- reporting
def _rate(rows: float, seconds: float) -> str:
    value = rows / seconds if seconds else 0.0
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def paired_ratio(walls: list[float], other: list[float]) -> float:
    """The median over rounds of ``walls[i] / other[i]`` (both measured in round ``i``)."""
    return statistics.median(w / b for w, b in zip(walls, other, strict=True))


def summarize(
    job: Job,
    rows: int,
    contenders: list[Contender],
    runs: dict[str, list[Measurement]],
    checks: dict[str, str | None],
) -> tuple[str, list[dict[str, Any]]]:
    base = statistics.median(m.wall_s for m in runs[job.baseline])
    base_walls = [m.wall_s for m in runs[job.baseline]]
    header = [
        "contender",
        "rows",
        "wall s median (min-max)",
        "events/s",
        "peak mem",
        "vs polars" if job.baseline == "polars" else f"vs {job.baseline}",
        "paired",
        "job s",
        "output",
    ]
    paired_with = any(c.against for c in contenders)
    if paired_with:
        header.append("vs own")
    table, records = [], []
    for contender in contenders:
        ms = runs[contender.label]
        walls = [m.wall_s for m in ms]
        median = statistics.median(walls)
        job_s = [m.report.get("job_s", float("nan")) for m in ms]
        rows_in = ms[-1].report.get("rows_in", rows)
        check = checks.get(contender.label)
        verdict = (
            "baseline"
            if contender.label == job.baseline
            else ("same" if check is None else "WRONG")
        )
        peak = max(m.peak_bytes for m in ms)
        # Each round runs every contender back to back: the median of the per-round ratios
        # is less sensitive to load that comes and goes than the ratio of the medians.
        paired = paired_ratio(walls, base_walls)
        own = (
            paired_ratio(walls, [m.wall_s for m in runs[contender.against]])
            if contender.against
            else None
        )
        table.append(
            [
                contender.label,
                f"{rows_in:,}",
                f"{median:.2f} ({min(walls):.2f}-{max(walls):.2f})",
                _rate(rows_in, median),
                _mib(peak),
                f"{median / base:.2f}x",
                f"{paired:.2f}x",
                f"{statistics.median(job_s):.2f}",
                verdict,
                *([] if not paired_with else [f"{own:.3f}x" if own is not None else ""]),
            ]
        )
        records.append(
            {
                "job": job.name,
                "contender": contender.label,
                "engine": contender.engine,
                "workers": contender.workers,
                "rows": rows_in,
                "wall_s": walls,
                "wall_median_s": median,
                "job_s": job_s,
                "events_per_s": rows_in / median,
                "peak_bytes": peak,
                "ratio": median / base,
                "paired_ratio": paired,
                "against": contender.against,
                "paired_ratio_against": own,
                "output": verdict,
                "difference": check,
                "reports": [m.report for m in ms],
            }
        )
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *table]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines), records


def environment() -> str:
    import polars as pl
    import pyarrow as pa

    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} cores, load {load}; python {platform.python_version()}, "
        f"polars {pl.__version__}, pyarrow {pa.__version__}, arrowflow {commit}"
    )


# ---------------------------------------------------------------------------- running
def run_job(job: Job, args: argparse.Namespace, work: Path) -> tuple[bool, list[dict[str, Any]]]:
    data = ensure(args.rows, job.formats, args.data_dir)
    contenders = job.contenders(args.workers)
    labels = [c.label for c in contenders]
    if job.baseline not in labels:
        msg = f"job {job.name}: its baseline {job.baseline!r} is not among its contenders {labels}"
        raise SystemExit(msg)
    runs: dict[str, list[Measurement]] = {c.label: [] for c in contenders}
    outputs = {
        c.label: work / job.name / c.label.replace(" ", "_").replace("=", "") for c in contenders
    }
    print(
        f"\n{job.description}\n{args.rows:,} rows, {args.repeat} runs per contender "
        f"after {args.warmup} warm-up run(s), interleaved",
        flush=True,
    )
    env = child_environment(args.data_dir)
    for repeat in range(-args.warmup, args.repeat):
        for contender in contenders:
            out = outputs[contender.label]
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                job.name,
                "--contender",
                json.dumps(asdict(contender)),
                "--data",
                json.dumps({k: str(v) for k, v in data.items()}),
                "--out",
                str(out),
            ]
            measured = measure(command, sample_tree=contender.workers != 0, env=env)
            measured.contender = contender.label
            if repeat < 0:
                print(f"  warm-up {contender.label:<16} {measured.wall_s:6.2f} s", flush=True)
                continue
            runs[contender.label].append(measured)
            print(
                f"  run {repeat + 1}/{args.repeat} {contender.label:<16} {measured.wall_s:6.2f} s  "
                f"{_mib(measured.peak_bytes):>10}",
                flush=True,
            )

    expected = job.read_output(outputs[job.baseline])
    checks: dict[str, str | None] = {}
    for contender in contenders:
        if contender.label == job.baseline:
            continue
        if args.no_check:
            checks[contender.label] = None
            continue
        found = job.read_output(outputs[contender.label])
        checks[contender.label] = (
            f"no output from the baseline {job.baseline}"
            if expected.height == 0
            else job.compare(expected, found)
        )
    text, records = summarize(job, args.rows, contenders, runs, checks)
    print()
    print(text)
    ok = True
    for label, problem in checks.items():
        if problem is not None:
            ok = False
            print(f"WRONG: {label} differs from {job.baseline}: {problem}")
    if not args.no_check and ok:
        print(
            f"output check: every contender's output equals the {job.baseline} output "
            f"({expected.height:,} rows, sorted by {', '.join(job.sort_by)})"
        )
    return ok, records


def _own_peak_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> int:
    """One contender, one run, in this fresh process; prints its report as the last JSON line."""
    job = JOBS[args.child]
    contender = Contender(**json.loads(args.contender))
    data = {k: Path(v) for k, v in json.loads(args.data).items()}
    report = job.run_contender(contender, data, Path(args.out))
    report["vm_hwm_bytes"] = _own_peak_bytes()
    print(json.dumps(report, default=str))
    return 0


def _count(text: str) -> int:
    text = text.replace("_", "").replace(",", "").strip()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    return int(float(text[:-1]) * scale) if scale > 1 else int(text)


def _workers(text: str) -> int | None:
    """A worker count, or ``default`` (None: the engine chooses, as ``flow.run()`` does)."""
    return None if text == "default" else int(text)


def byte_compiled() -> str:
    """Byte-compile arrowflow's modules once, as ``pip install`` does for an installed package.

    With an editable install and ``PYTHONDONTWRITEBYTECODE=1`` (set on the machines these run
    on) every process would compile arrowflow's sources again at import: ~0.1 s in the
    coordinator and in each worker, which no installed copy pays.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("arrowflow")
    folders = {Path(p) for p in (spec.submodule_search_locations or [])} if spec else set()
    for name in ("arrowflow.backends", "arrowflow.io"):
        sub = importlib.util.find_spec(name)
        folders |= {Path(p) for p in (sub.submodule_search_locations or [])} if sub else set()
    ok = all(compileall.compile_dir(str(f), quiet=2) for f in sorted(folders))
    return f"arrowflow byte-compiled ({'ok' if ok else 'FAILED'}): {', '.join(str(f) for f in sorted(folders))}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="arrowflow benchmarks, against polars in the same run."
    )
    parser.add_argument(
        "jobs",
        nargs="*",
        default=["w1"],
        metavar="JOB",
        help=f"jobs to run: {', '.join(JOBS)} or all (default: w1)",
    )
    parser.add_argument(
        "--rows", type=_count, default=10_000_000, help="input events, e.g. 10000000 or 10M"
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        nargs="+",
        default=[0],
        help="arrowflow worker counts to run (0: in-process; default: the engine's choice)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per contender first")
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DIR, help="cache folder of the generated data"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where outputs go (default: a temp folder)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the results to this JSON file"
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip comparing outputs with the baseline"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    names = list(JOBS) if "all" in args.jobs else args.jobs
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        parser.error(f"unknown job {unknown[0]!r}; jobs: {', '.join(JOBS)}")
    print(environment())
    print(byte_compiled())
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="arrowflow-bench-"))
    all_ok, records = True, []
    try:
        for name in names:
            ok, job_records = run_job(JOBS[name], args, work)
            all_ok &= ok
            records.extend(job_records)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"environment": environment(), "results": records}, indent=2, default=str)
        )
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
