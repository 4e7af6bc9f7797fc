"""The ``arrowflow`` command line: ``run`` a job file, or try the ``demo``.

::

    arrowflow run job.py[:flow] [--workers N] [--state NAME] [--checkpoint-dir URL]
                  [--checkpoint-every 10s] [--restore latest|none|ID] [--batch-size N]
                  [--runner NAME] [--[no-]progress]
    arrowflow demo [--dir PATH] [--rows N] [--workers N]

``run`` imports ``job.py`` as a module (its ``if __name__ == "__main__":`` block does not run),
takes the :class:`~arrowflow.Flow` named after the colon — or the only Flow the module
defines — and calls ``flow.run(...)`` with the flags given; flags left out keep
``flow.run``'s defaults. It prints the run's summary: rows in and out, time, throughput and
the per-operator counts.

Exit codes, one rule for every command: 0 when the command did its work, 1 when arrowflow
raised an error (its message is printed, without a traceback) or the job file itself raised,
2 on wrong usage (unknown flag, no such file, no or several flows, a checkpoint directory that
does not exist, a checkpoint to read that is not there). An existing checkpoint directory
without a complete checkpoint lists as empty (0); there is no state in it to query (2).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from arrowflow import __version__
from arrowflow._api.flow import Flow
from arrowflow._api.inspect import query_state
from arrowflow._api.summary import format_summary as format_summary
from arrowflow._api.summary import restarts_line as restarts_line
from arrowflow._runtime.checkpoints import CheckpointStorage, chk_dir
from arrowflow.demo import DEFAULT_ROWS, run_demo
from arrowflow.errors import ArrowflowError, JobCancelled
from arrowflow.options import DEFAULTS, START_DEFAULTS, RunOptions

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
_EXIT_CODES = (
    "exit codes: 0 done; 1 arrowflow or the job raised an error (one line, no traceback for "
    "arrowflow's own); 2 wrong usage: an unknown flag or a wrong flag value, a missing file or "
    "checkpoint directory, a checkpoint that is not there; 130 interrupted (Ctrl-C)"
)


class UsageError(Exception):
    """The command line names something that is not there (exit code 2)."""


# ---------------------------------------------------------------------------- loading jobs
def load_module(path: Path) -> ModuleType:
    """Import a job file as a fresh module, the way ``python job.py`` would find its imports.

    Its functions are pickled by value, so pool workers (which cannot import the file by
    name) receive them whole.
    """
    if not path.is_file():
        msg = f"no such job file: {str(path)!r}"
        raise UsageError(msg)
    module_name = f"arrowflow_job_{path.stem.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        msg = f"cannot import {str(path)!r} as Python; a job file is a .py file that builds a Flow"
        raise UsageError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    job_dir = str(path.resolve().parent)
    if job_dir not in sys.path:
        sys.path.insert(0, job_dir)
    spec.loader.exec_module(module)
    try:
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    except (ImportError, ValueError):
        pass
    return module


def pick_flow(module: ModuleType, name: str | None, path: str) -> Flow:
    """The Flow called ``name`` in ``module``, or its only Flow when ``name`` is None."""
    flows = {
        attr: value
        for attr, value in vars(module).items()
        if isinstance(value, Flow) and not attr.startswith("_")
    }
    listed = ", ".join(f"{attr} (Flow {flow.name!r})" for attr, flow in flows.items()) or "none"
    if name is not None:
        if name in flows:
            return flows[name]
        if hasattr(module, name):
            msg = f"{path}:{name} is a {type(getattr(module, name)).__name__}, not an arrowflow Flow; flows in {path}: {listed}"
        else:
            msg = f"{path} has no Flow named {name!r}; flows in it: {listed}"
        raise UsageError(msg)
    if len(flows) == 1:
        return next(iter(flows.values()))
    if not flows:
        msg = f"{path} defines no arrowflow Flow at module level; build one there, e.g. flow = af.Flow('job')"
    else:
        msg = f"{path} defines several flows: {listed}; pick one with {path}:NAME, e.g. {path}:{next(iter(flows))}"
    raise UsageError(msg)


def split_target(target: str) -> tuple[str, str | None]:
    """``"job.py:flow"`` -> ``("job.py", "flow")``; without a flow name after the colon, no split.

    >>> split_target("jobs/clicks.py:totals"), split_target("clicks.py")
    (('jobs/clicks.py', 'totals'), ('clicks.py', None))
    """
    path, sep, name = target.rpartition(":")
    if not sep or not name or "/" in name or "\\" in name or not path:
        return target, None
    return path, name


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        msg = f"expected a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"expected a number of at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


_WORKERS_HELP = (
    f"worker processes; 0 runs in this process (default: in this process for a flow of polars "
    f"expressions on up to 2 cores, else one per core; {os.cpu_count() or 1} cores on this "
    f"machine; more than the cores warns, since it is slower)"
)


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"expected a number of worker processes (0 runs in this process), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 0:
        msg = f"expected 0 (in this process) or more worker processes, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _restore(text: str) -> str | int:
    if text.isdigit():
        return int(text)
    if text not in ("latest", "none"):
        msg = f"expected latest, none (start over) or a checkpoint id, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arrowflow",
        description="Batch-and-stream processing on Apache Arrow and polars.",
        epilog=_EXIT_CODES,
    )

    parser.add_argument("--version", action="version", version=f"arrowflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run a flow defined in a Python file",
        description="Run a Flow defined in a Python file to the end of its input.",
    )
    run.add_argument(
        "target",
        metavar="job.py[:flow]",
        help="the job file, and the name of the Flow in it when it defines several",
    )
    run.add_argument("--workers", type=_workers, help=_WORKERS_HELP)
    run.add_argument("--state", metavar="NAME", help="state backend: memory, arrow, lmdb, sql")
    run.add_argument(
        "--checkpoint-dir", metavar="URL", help="where checkpoints go (any fsspec URL)"
    )
    run.add_argument("--checkpoint-every", metavar="DURATION", help="checkpoint interval, e.g. 10s")
    run.add_argument(
        "--restore",
        type=_restore,
        metavar="latest|none|ID",
        help="checkpoint to resume from (needs --checkpoint-dir); none starts over",
    )
    run.add_argument(
        "--batch-size", type=_positive, metavar="N", help="rows per batch read from sources"
    )
    run.add_argument(
        "--runner",
        metavar="NAME",
        help="a registered runner: inprocess, pool, or a plug-in's (default: from --workers)",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on standard error (default: when it is a terminal)",
    )

    demo = commands.add_parser(
        "demo",
        help="generate a clickstream and run a real job over it",
        description="Generate a clickstream data set, run a flow over it, show the result.",
    )
    demo.add_argument(
        "--dir",
        default="arrowflow-demo",
        metavar="PATH",
        help="working folder for the data and output (default: ./arrowflow-demo)",
    )
    demo.add_argument(
        "--rows",
        type=_positive,
        default=None,
        metavar="N",
        help="events to generate (default: 3,000,000)",
    )
    demo.add_argument("--workers", type=_workers, help=_WORKERS_HELP)

    checkpoints = commands.add_parser(
        "checkpoints",
        help="inspect a job's checkpoints",
        description="Inspect the checkpoints in a checkpoint directory (any fsspec URL).",
    )
    checkpoint_commands = checkpoints.add_subparsers(dest="checkpoints_command", metavar="ACTION")
    checkpoint_commands.required = True
    listing = checkpoint_commands.add_parser(
        "list", help="id, time, size, offsets and state files of each"
    )
    listing.add_argument("url", metavar="URL", help="the job's checkpoint_dir")
    listing.add_argument(
        "--json", action="store_true", help="every field, the source offsets in full, as JSON"
    )

    state = commands.add_parser(
        "state",
        help="query the state in a checkpoint",
        description="Query operator state in a checkpoint with SQL (polars SQL): every operator "
        "with state is a table named after its id.",
    )
    state_commands = state.add_subparsers(dest="state_command", metavar="ACTION")
    state_commands.required = True
    query = state_commands.add_parser(
        "query", help='e.g. state query ckpt/ "SELECT * FROM agg LIMIT 5"'
    )
    query.add_argument("url", metavar="URL", help="the job's checkpoint_dir")
    query.add_argument("sql", metavar="SQL", help="a polars SQL query over the operators' state")
    query.add_argument(
        "--checkpoint", type=int, metavar="ID", help="a checkpoint id (default: the newest)"
    )
    for command in (run, demo, checkpoints, listing, state, query):
        command.epilog = _EXIT_CODES
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    if args.restore is not None and args.checkpoint_dir is None:
        msg = f"--restore {args.restore} needs --checkpoint-dir, the folder that holds the checkpoints"
        raise UsageError(msg)
    path, flow_name = split_target(args.target)
    module = load_module(Path(path))
    flow = pick_flow(module, flow_name, path)
    if flow.plan().bounded:
        result = flow.run(options=options_from_args(args))
    else:
        result = run_until_signalled(flow, options_from_args(args, base=START_DEFAULTS))
    print(format_summary(flow, result))
    return EXIT_OK


def options_from_args(args: argparse.Namespace, *, base: RunOptions = DEFAULTS) -> RunOptions:
    """The run options the ``run`` flags give; a flag left out keeps ``base``'s default
    (``flow.run``'s; ``flow.start``'s for an unbounded flow)."""
    given: dict[str, Any] = {}
    for flag in (
        "workers",
        "state",
        "checkpoint_dir",
        "checkpoint_every",
        "restore",
        "batch_size",
        "runner",
        "progress",
    ):
        value = getattr(args, flag)
        if value is not None:
            given[flag] = None if (flag, value) == ("restore", "none") else value
    from arrowflow.state import resolve_backend

    try:
        options = base.replace(**given)
        if isinstance(options.state, str) and "://" not in options.state:
            resolve_backend(options.state)  # a misspelled --state is a wrong flag, exit 2
    except ArrowflowError as exc:  # a malformed duration, a wrong flag value: wrong usage
        raise UsageError(str(exc)) from exc
    return options


def run_until_signalled(flow: Any, options: RunOptions) -> Any:
    """An unbounded flow runs until SIGINT or SIGTERM, then stops cleanly: with a checkpoint
    directory, after a final checkpoint (a savepoint) that a later ``--restore latest`` resumes."""
    import signal
    import threading

    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        job = flow.start(results=False, options=options)
        print(
            f"arrowflow run: {flow.name!r} follows unbounded sources; SIGINT or SIGTERM stops it "
            f"{'after a final checkpoint' if options.checkpoint_dir else '(no checkpoint_dir: nothing saved)'}",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.2):
            if job.status != "running":
                return job.wait()
        return job.stop(savepoint=bool(options.checkpoint_dir))
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cmd_demo(args: argparse.Namespace) -> int:

    run_demo(args.dir, args.rows or DEFAULT_ROWS, workers=args.workers)
    return EXIT_OK


def _existing_checkpoint_dir(url: str) -> CheckpointStorage:
    """The storage at ``url``; a directory that is not there is wrong usage (exit 2)."""
    storage = CheckpointStorage(url)
    if not storage.fs.exists(storage.root):
        msg = f"no checkpoint directory at {url} (give the job's checkpoint_dir)"
        raise UsageError(msg)
    return storage


def cmd_checkpoints(args: argparse.Namespace) -> int:
    import polars as pl

    storage = _existing_checkpoint_dir(args.url)
    frame = storage.list()
    offsets = [json.loads(text) for text in frame["sources_json"]]  # of checked manifests
    if args.json:
        records = [
            {**row, "time": row["time"].isoformat(), "offsets": parsed}
            for row, parsed in zip(
                frame.drop("sources_json").iter_rows(named=True), offsets, strict=True
            )
        ]
        print(json.dumps(records, indent=2, sort_keys=True))
        return EXIT_OK
    if frame.is_empty():
        print(f"no complete checkpoint in {args.url}")
        return EXIT_OK
    frame = frame.with_columns(
        pl.col("id").map_elements(chk_dir, return_dtype=pl.String).alias("folder"),
        pl.col("time").dt.strftime("%Y-%m-%d %H:%M:%S"),
        pl.col("size_bytes").map_elements(_size, return_dtype=pl.String).alias("size"),
        pl.col("state_files").alias("files"),
    )
    frame = frame.with_columns(
        pl.Series("sources", [len(o) for o in offsets], dtype=pl.Int64),
        pl.Series("splits", [_splits_summary(o) for o in offsets], dtype=pl.String),
    )
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        fmt_str_lengths=40,
        tbl_width_chars=100,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
    ):
        print(frame.select("id", "folder", "time", "size", "files", "final", "sources", "splits"))
    print("offsets in full, and every field: --json")
    return EXIT_OK


def _size(size: int) -> str:
    """Bytes as B, KiB, MiB or GiB, one decimal above bytes."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:,.1f} {unit}"


def _splits_summary(offsets: dict[str, Any]) -> str:
    """A manifest's source offsets in a few words: splits done and open over every source."""
    done = open_ = 0
    for value in offsets.values():
        if isinstance(value, dict) and {"finished", "positions"} <= value.keys():
            done += len(value["finished"])
            open_ += len(value["positions"])
    return f"{done} done, {open_} open"


def cmd_state(args: argparse.Namespace) -> int:
    import polars as pl

    storage = _existing_checkpoint_dir(args.url)
    manifest = storage.find(args.checkpoint) if args.checkpoint is not None else storage.latest()
    if manifest is None:
        msg = f"no complete checkpoint in {args.url}"
        raise UsageError(msg)
    result = query_state(args.url, args.sql, checkpoint=manifest.id)
    with pl.Config(tbl_rows=50, tbl_cols=-1):
        print(f"checkpoint {manifest.id}:")
        print(result)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``arrowflow`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on a usage error
    command = {
        "run": cmd_run,
        "demo": cmd_demo,
        "checkpoints": cmd_checkpoints,
        "state": cmd_state,
    }[args.command]
    try:
        return command(args)
    except UsageError as exc:
        print(f"arrowflow {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobCancelled as exc:  # Ctrl-C while worker processes ran: as any Ctrl-C, 130
        print(f"arrowflow {args.command}: interrupted: {exc}", file=sys.stderr)
        return 130
    except ArrowflowError as exc:
        print(f"arrowflow {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"arrowflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        # The job file's own code raised: show its traceback, as python job.py would.
        traceback.print_exc()
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
