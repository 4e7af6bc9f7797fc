"""Run options and runners: one RunOptions value from every entry point, and runners by name.

- ``RunOptions`` holds every default once and refuses wrong values with the message the
  runtime gave before (the same PlanError whichever entry point got it).
- ``flow.run()``, ``stream.collect()``, ``collect_all``, ``flow.start()`` and the
  ``arrowflow run`` command line hand the runtime the same defaults: a runner registered in
  the test records the options each real run got.
- A runner registered under a new name (a subclass of the in-process runner) is the one a
  run uses with ``runner="..."``, and its output equals polars'.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pytest

import arrowflow as af
from arrowflow import registry
from arrowflow._foundation.keygroups import DEFAULT_MAX_PARALLELISM
from arrowflow._runtime.inprocess import InProcessRunner
from arrowflow.cli import main
from arrowflow.errors import CheckpointError, PlanError
from arrowflow.options import COLLECT_DEFAULTS, DEFAULTS, START_DEFAULTS, RunOptions
from arrowflow.runners import Coordinator, Runner, WorkerSpec
from arrowflow.testing import CollectingSink, assert_frame_equal_unordered, collect_all


class RecordingRunner(InProcessRunner):
    """The in-process runner, taking any ``workers``, noting the options and attempts of each run."""

    name = "recording"
    seen: ClassVar[list[RunOptions]] = []
    launches: ClassVar[int] = 0

    def __init__(self, options: RunOptions) -> None:
        RecordingRunner.seen.append(options)
        super().__init__(options.replace(workers=0))

    def launch(self, spec: WorkerSpec, coordinator: Coordinator) -> None:
        RecordingRunner.launches += 1
        super().launch(spec, coordinator)


@pytest.fixture
def recording() -> type[RecordingRunner]:
    registry.register("runner", "recording", RecordingRunner, clobber=True)
    RecordingRunner.seen.clear()
    RecordingRunner.launches = 0
    return RecordingRunner


def events(n: int = 5_000) -> pl.DataFrame:
    return pl.DataFrame({"user": [i % 37 for i in range(n)], "amount": list(range(n))})


def totals_flow(sink: Any) -> af.Flow:
    flow = af.Flow("options")
    flow.from_polars(events(), splits=4).key_by("user").agg(total=pl.col("amount").sum()).write_to(
        sink
    )
    return flow


def expected_totals() -> pl.DataFrame:
    return events().group_by("user").agg(total=pl.col("amount").sum())


# ------------------------------------------------------------------------------ defaults
def test_every_default_is_written_once_in_run_options() -> None:
    options = RunOptions()
    assert options == DEFAULTS
    assert (options.workers, options.runner, options.state) == (None, None, "memory")
    assert (options.checkpoint_dir, options.checkpoint_every, options.restore) == (
        None,
        None,
        "latest",
    )
    assert options.max_parallelism == DEFAULT_MAX_PARALLELISM == 128
    assert (options.batch_size, options.progress, options.storage_options) == (None, None, None)
    assert (options.keep_checkpoints, options.max_restarts) == (3, 3)
    assert RunOptions(checkpoint_dir=Path("ck")).checkpoint_dir == "ck"
    assert RunOptions(max_parallelism=None).max_parallelism == 128  # type: ignore[arg-type]
    # The presets differ from flow.run's only where their entry points do.
    assert COLLECT_DEFAULTS == DEFAULTS.replace(workers=0, restore=None, progress=False)
    assert START_DEFAULTS == DEFAULTS.replace(progress=False)


@pytest.mark.parametrize(
    ("entry", "defaults"),
    [
        (af.Flow.run, DEFAULTS),
        (af.Stream.collect, COLLECT_DEFAULTS),
        (collect_all, COLLECT_DEFAULTS),
    ],
)
def test_the_public_signatures_show_the_run_options_defaults(
    entry: Any, defaults: RunOptions
) -> None:
    parameters = inspect.signature(entry).parameters
    shown = {
        name: p.default for name, p in parameters.items() if name in RunOptions.__dataclass_fields__
    }
    assert shown.pop("max_parallelism") is None  # None: the default, as it always was
    assert shown and shown == {name: getattr(defaults, name) for name in shown}
    assert parameters["options"].default is None


def test_the_runner_follows_workers_unless_named() -> None:
    assert RunOptions().runner_name == "pool"
    assert RunOptions(workers=3).runner_name == "pool"
    assert RunOptions(workers=0).runner_name == "inprocess"
    assert RunOptions(workers=0, runner="mine").runner_name == "mine"
    assert sorted(registry.available("runner"))[:2] == ["inprocess", "pool"]
    assert issubclass(registry.load("runner", "pool"), Runner)
    assert registry.load("runner", "inprocess") is InProcessRunner


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"workers": -1}, PlanError, "workers must be a number of processes"),
        ({"workers": True}, PlanError, "workers must be a number of processes"),
        ({"workers": 1.5}, PlanError, "workers must be a number of processes"),
        ({"batch_size": 0}, PlanError, "batch_size must be a positive number of rows"),
        ({"batch_size": "10"}, PlanError, "batch_size must be a positive number of rows"),
        ({"max_parallelism": 0}, PlanError, r"key groups \(default 128\)"),
        ({"checkpoint_every": "10s"}, PlanError, "checkpoint_every needs a checkpoint_dir"),
        (
            {"checkpoint_dir": "memory://x", "checkpoint_every": "soon"},
            PlanError,
            "soon",
        ),
        ({"restore": "newest"}, PlanError, "restore= expects 'latest', a checkpoint id or None"),
        ({"restore": 4}, PlanError, "restore=4 needs the checkpoint_dir"),
        ({"progress": "yes"}, PlanError, "progress expects True, False or None"),
        ({"storage_options": ["anon"]}, PlanError, "storage_options expects a dict"),
        ({"keep_checkpoints": 0}, CheckpointError, "keep must be at least 1 checkpoint, got 0"),
        ({"max_restarts": -1}, PlanError, "max_restarts must be a number of restarts"),
        ({"runner": ""}, PlanError, "runner= expects the name of a registered runner"),
    ],
)
def test_wrong_options_are_refused_by_every_entry_point(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RunOptions(**options)
    flow = totals_flow(CollectingSink())
    with pytest.raises(error, match=match):
        flow.run(**options)
    with pytest.raises(error, match=match):
        flow.start(**options)
    with pytest.raises(error, match=match):
        RunOptions().replace(**options)


def test_options_come_as_keywords_or_as_one_value_not_both() -> None:
    flow = totals_flow(CollectingSink())
    with pytest.raises(PlanError, match=r"options= and the keywords \['workers'\]"):
        flow.run(options=RunOptions(workers=0), workers=2)
    with pytest.raises(PlanError, match=r"options= expects an arrowflow\.RunOptions"):
        flow.run(options={"workers": 0})  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="unknown options"):
        flow.start(worker=0)
    stream = flow.from_polars(events())
    with pytest.raises(PlanError, match="collect\\(\\) keeps no checkpoints"):
        stream.collect(options=RunOptions(workers=0, checkpoint_dir="memory://c"))


# ------------------------------------------------------------- the same defaults, real runs
def test_run_collect_start_and_the_cli_hand_the_runtime_the_same_defaults(
    recording: type[RecordingRunner], tmp_path: Path
) -> None:
    sink = CollectingSink()
    flow = totals_flow(sink)
    result = flow.run(runner="recording")
    assert_frame_equal_unordered(sink.to_polars(), expected_totals())
    assert result.workers == 0 and recording.launches == 1

    stream = af.Flow("collected").from_polars(events(), splits=3)
    assert_frame_equal_unordered(stream.collect(runner="recording"), events())
    (all_rows,) = collect_all(stream, options=COLLECT_DEFAULTS.replace(runner="recording"))
    assert_frame_equal_unordered(all_rows, events())
    flow.start(runner="recording").wait(60)

    job = tmp_path / "job.py"
    job.write_text(
        "import polars as pl\n"
        "import arrowflow as af\n"
        "from arrowflow.testing import CollectingSink\n"
        "flow = af.Flow('cli')\n"
        "flow.from_polars(pl.DataFrame({'k': [1, 2, 1]})).key_by('k').agg(n=pl.len())"
        ".write_to(CollectingSink())\n"
    )
    assert main(["run", str(job), "--runner", "recording"]) == 0
    run, collected, collected_all, started, cli = recording.seen
    assert run == cli == DEFAULTS.replace(runner="recording")
    assert collected == collected_all == COLLECT_DEFAULTS.replace(runner="recording")
    assert started == START_DEFAULTS.replace(runner="recording")
    shared = ("state", "batch_size", "max_parallelism", "keep_checkpoints", "max_restarts")
    for name in shared:
        assert getattr(collected, name) == getattr(run, name) == getattr(started, name)


def test_a_runner_registered_under_a_new_name_is_the_one_used(
    recording: type[RecordingRunner],
) -> None:
    registry.register("runner", "mine", RecordingRunner, clobber=True)
    sink = CollectingSink()
    result = totals_flow(sink).run(runner="mine", workers=2)
    assert recording.launches == 1 and recording.seen[-1].runner == "mine"
    assert result.workers == 0  # it ran in this process, as its class does
    assert_frame_equal_unordered(sink.to_polars(), expected_totals())
    stream = af.Flow("mine").from_polars(events(), splits=5)
    got = stream.key_by("user").agg(total=pl.col("amount").sum()).collect(runner="mine")
    assert recording.launches == 2
    assert_frame_equal_unordered(got, expected_totals())


def test_runners_refuse_what_they_cannot_run() -> None:
    flow = totals_flow(CollectingSink())
    with pytest.raises(PlanError, match="no runner plug-in named 'nowhere'"):
        flow.run(runner="nowhere")
    with pytest.raises(PlanError, match="in-process runner runs one worker"):
        flow.run(runner="inprocess", workers=2)
    with pytest.raises(PlanError, match="workers=0 asks for none"):
        flow.run(runner="pool", workers=0)
    registry.register("runner", "not-a-runner", "arrowflow.options:RunOptions", clobber=True)
    with pytest.raises(PlanError, match=r"not an arrowflow\.runners\.Runner subclass"):
        flow.run(runner="not-a-runner")


class _ReturningSink(CollectingSink):
    """A sink that hands its rows back in RunResult.outputs, through the declared hook."""

    def returned_rows(self) -> list[pl.DataFrame]:
        return self.frames


def test_a_sink_hands_rows_back_through_returned_rows() -> None:
    returning, keeping = _ReturningSink(), CollectingSink()
    flow = af.Flow("returned")
    stream = flow.from_polars(events(), splits=2)
    stream.write_to(returning, name="back")
    stream.write_to(keeping, name="kept")
    result = flow.run(workers=0)
    assert set(result.outputs) == {"back"}
    assert_frame_equal_unordered(pl.concat(result.outputs["back"]), events())
