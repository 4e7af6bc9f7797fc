"""A crafted manifest cannot reach outside its layout, and a state query reads only state.

The manifests here are edited the way an attacker would: the content changed and its
checksum recomputed (sha256 of the sorted JSON body without the checksum), so the manifest
verifies as whole; only the paths in it are wrong.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import arrowflow as af
from arrowflow._runtime.checkpoints import CheckpointStorage
from arrowflow.errors import CheckpointError


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory, recovery_input: Path, recovery: Any) -> Path:
    """A 1-worker run killed right after its 3rd manifest, before that checkpoint's commit."""
    tmp = tmp_path_factory.mktemp("crashed")
    code, out, _ = recovery.run_job(
        tmp, recovery_input, workers=1, state="arrow", every="50ms", faults="after_manifest@3"
    )
    assert code != 0 and "RESULT" not in out
    assert CheckpointStorage(str(tmp / "checkpoints")).checkpoint_ids()[0] == 3
    return tmp


@pytest.fixture
def job(crashed: Path, tmp_path: Path) -> Path:
    """A fresh copy of the crashed run's folders (job, output, checkpoints) for one test."""
    target = tmp_path / "job"
    shutil.copytree(crashed, target)
    return target


def manifest_path(job: Path, checkpoint_id: int = 3) -> Path:
    return job / "checkpoints" / f"chk-{checkpoint_id:08d}" / "_MANIFEST.json"


def craft(job: Path, edit: Any, checkpoint_id: int = 3) -> None:
    """Edit a manifest's body and recompute its checksum, as an attacker could."""
    path = manifest_path(job, checkpoint_id)
    body = json.loads(path.read_text())
    body.pop("checksum")
    edit(body)
    body["checksum"] = hashlib.sha256(
        json.dumps(body, sort_keys=True, default=str).encode()
    ).hexdigest()
    path.write_text(json.dumps(body, sort_keys=True, indent=1))


def add_staged(name: str) -> Any:
    def edit(body: dict[str, Any]) -> None:
        writers = body["sinks"]["write_parquet"]
        assert writers and writers[0], "checkpoint 3 should have staged rows of the row sink"
        writers[0].append(name)

    return edit


@pytest.mark.parametrize(
    "name",
    [
        "../../victimfile",
        "../victimfile",
        "/VICTIM",
        "..\\..\\victimfile",
        "..",
        "sub/part-00000003-0000-00000-0a0b0c0d.parquet",
        "part\x00.parquet",
    ],
)
def test_a_crafted_sink_entry_makes_the_checkpoint_invalid(job: Path, name: str) -> None:
    craft(job, add_staged(name.replace("VICTIM", str(job / "victimfile"))))
    storage = CheckpointStorage(str(job / "checkpoints"))
    with pytest.raises(
        CheckpointError, match="checkpoint 3: sink 'write_parquet' lists staged output"
    ):
        storage.find(3)
    with pytest.warns(UserWarning, match="skipping checkpoint 3"):
        assert storage.latest().id == 2


def test_a_restore_past_a_crafted_sink_entry_moves_nothing(
    job: Path, recovery_input: Path, recovery: Any
) -> None:
    victim = job / "victimfile"
    victim.write_text("not arrowflow's")
    craft(job, add_staged("../../victimfile"))
    code, out, err = recovery.run_job(job, recovery_input, workers=1, state="arrow")
    assert code == 0, err[-2000:]
    assert victim.exists() and victim.read_text() == "not arrowflow's", (
        "the restore moved the victim"
    )
    assert not (job.parent / "victimfile").exists() and not (job / "rows" / "victimfile").exists()
    assert '"restored_from": 2' in out and "skipping checkpoint 3" in err
    rows, _ = recovery.expected_outputs(recovery_input)
    got = recovery.committed(job / "rows")
    assert got.sort("event_id").equals(rows.sort("event_id"))


def test_restoring_a_crafted_checkpoint_by_id_is_refused(job: Path, recovery_input: Path) -> None:
    victim = job / "victimfile"
    victim.write_text("not arrowflow's")
    craft(job, add_staged("../../victimfile"))
    flow = af.Flow("recovery")
    flow.read_parquet(str(recovery_input)).write_parquet(str(job / "rows"))
    with pytest.raises(CheckpointError, match=r"checkpoint 3: sink .* is a path, not a name"):
        flow.run(workers=0, checkpoint_dir=str(job / "checkpoints"), restore=3)
    assert victim.read_text() == "not arrowflow's"


def outside_state(job: Path) -> tuple[Path, dict[str, Any]]:
    """A valid Arrow IPC state file outside the checkpoint folder, with its size and sha256."""
    outside = job / "checkpoints" / "outside.arrow"
    manifest = json.loads(manifest_path(job).read_text())
    entry = next(e for e in manifest["state"] if e["store"] == "agg")
    genuine = pl.read_ipc(job / "checkpoints" / entry["path"])
    forged = genuine.with_columns(pl.col("n__count") * 0 + 999_999)
    forged.write_ipc(outside, compression="uncompressed")
    payload = outside.read_bytes()
    return outside, {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


@pytest.mark.parametrize(
    "path",
    [
        "chk-00000003/../outside.arrow",
        "../checkpoints/outside.arrow",
        "OUTSIDE",
        "chk-00000002/../outside.arrow",
        "shared/../outside.arrow",
        "chk-00000003\\..\\..\\outside.arrow",
        "chk-00000003/state/./x.arrow",
    ],
)
def test_a_crafted_state_file_path_is_never_read(job: Path, path: str) -> None:
    outside, facts = outside_state(job)
    path = path.replace("OUTSIDE", str(outside))

    def edit(body: dict[str, Any]) -> None:
        entry = next(e for e in body["state"] if e["store"] == "agg")
        listed = next(f for f in body["files"] if f["path"] == entry["path"])
        for record in (entry, listed):
            record.update(path=path, **facts)

    craft(job, edit)
    url = str(job / "checkpoints")
    with pytest.raises(
        CheckpointError, match=r"checkpoint 3: .* is outside the checkpoint's layout"
    ):
        af.read_state(url, "agg", checkpoint=3)
    with pytest.raises(CheckpointError, match="outside the checkpoint's layout"):
        af.query_state(url, "SELECT max(n) AS n FROM agg", checkpoint=3)
    with pytest.warns(UserWarning, match="skipping checkpoint 3"):
        state = af.read_state(url, "agg")
    assert 0 < state["n"].max() < 999_999  # checkpoint 2's real counts, not the forged file's


def test_a_state_file_not_listed_among_the_verified_files_is_refused(job: Path) -> None:
    def edit(body: dict[str, Any]) -> None:
        entry = next(e for e in body["state"] if e["store"] == "agg")
        entry["path"] = entry["path"].replace(".arrow", "-other.arrow")

    craft(job, edit)
    with pytest.raises(CheckpointError, match="not among the files the manifest verifies"):
        af.read_state(str(job / "checkpoints"), "agg", checkpoint=3)


def test_a_crafted_file_entry_is_never_opened(job: Path) -> None:
    def edit(body: dict[str, Any]) -> None:
        body["files"].append({"path": "/dev/zero", "size": 1, "sha256": "0" * 64})

    craft(job, edit)
    with pytest.raises(
        CheckpointError, match=r"file '/dev/zero' is outside the checkpoint's layout"
    ):
        CheckpointStorage(str(job / "checkpoints")).find(3)


def test_the_checkpoints_a_run_writes_pass_the_layout_check(job: Path) -> None:
    storage = CheckpointStorage(str(job / "checkpoints"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = [
            e["path"] for checkpoint_id in (1, 2, 3) for e in storage.find(checkpoint_id).state
        ]
    assert paths and any(
        p.startswith("shared/") for p in paths
    )  # the arrow backend's incremental files


# ---------------------------------------------------------------------- state queries

SECRET = "a,b\n1,the-secret-line\n"

FILE_READERS = [
    "SELECT * FROM read_csv('{csv}')",
    "SELECT * FROM READ_CSV('{csv}')",
    "SELECT * FROM \"read_csv\"('{csv}')",
    "SELECT * FROM read_csv ('{csv}')",
    "SELECT * FROM agg, read_csv('{csv}')",
    "SELECT * FROM agg JOIN read_csv('{csv}') ON true",
    "SELECT * FROM agg WHERE n IN (SELECT a FROM read_csv('{csv}'))",
    "WITH x AS (SELECT * FROM read_csv('{csv}')) SELECT * FROM x",
    "SELECT * FROM read_parquet('{parquet}')",
    "SELECT * FROM read_ipc('{ipc}')",
    "SELECT * FROM read_json('{ndjson}')",
    "SELECT * FROM read_ndjson('{ndjson}')",
    "SELECT * FROM agg /* */ UNION SELECT * FROM read_csv('{csv}')",
    "SELECT * FROM agg -- \n, read_csv('{csv}')",
    "SELECT $$x$$ AS s FROM read_csv('{csv}')",
    "SELECT E'\\'' AS s, * FROM agg, read_csv('{csv}') -- '",
    "CREATE TABLE t AS SELECT * FROM read_csv('{csv}')",
    "SHOW TABLES",
    "EXPLAIN SELECT * FROM agg",
    "DROP TABLE agg",
    "SELECT * FROM agg; SELECT * FROM read_csv('{csv}')",
    "SELECT * FROM unnest([1, 2]) AS u(x)",
    "SELECT * FROM nosuchtable",
    "SELECT * FROM agg a, agg b, nosuchtable",
    "SELECT * FROM agg, any_future_table_function('{csv}')",
    "SELECT 1from nosuchtable",  # polars: SELECT 1 FROM nosuchtable (the table check saw no FROM)
    "SELECT 0e1from agg, nosuchtable",
    "SELECT 1e'\\' AS s",  # polars: 1 then an escaped string E'...'
]


@pytest.fixture
def files_to_steal(tmp_path: Path) -> dict[str, str]:
    frame = pl.DataFrame({"a": [1], "b": ["the-secret-line"]})
    paths = {
        "csv": tmp_path / "secret.csv",
        "parquet": tmp_path / "secret.parquet",
        "ipc": tmp_path / "secret.arrow",
        "ndjson": tmp_path / "secret.ndjson",
    }
    paths["csv"].write_text(SECRET)
    frame.write_parquet(paths["parquet"])
    frame.write_ipc(paths["ipc"])
    frame.write_ndjson(paths["ndjson"])
    return {kind: str(path) for kind, path in paths.items()}


def test_polars_sql_itself_reads_files(files_to_steal: dict[str, str]) -> None:
    """Why the check exists: the engine under query_state reads any file it is pointed at."""
    context = pl.SQLContext()
    assert (
        context.execute(f"SELECT * FROM read_csv('{files_to_steal['csv']}')", eager=True)[
            "b"
        ].item()
        == "the-secret-line"
    )


@pytest.mark.parametrize("query", FILE_READERS)
def test_a_state_query_reads_no_file_and_runs_no_statement(
    job: Path, files_to_steal: dict[str, str], query: str
) -> None:
    sql = query.format(**files_to_steal)
    with pytest.raises(CheckpointError, match="state query refused: ") as caught:
        af.query_state(str(job / "checkpoints"), sql, checkpoint=2)
    assert "the-secret-line" not in str(caught.value)


def test_state_query_cli_refuses_a_file_reader_in_one_line(
    job: Path, files_to_steal: dict[str, str]
) -> None:
    sql = f"SELECT * FROM read_csv('{files_to_steal['csv']}')"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "arrowflow.cli",
            "state",
            "query",
            str(job / "checkpoints"),
            sql,
            "--checkpoint",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "the-secret-line" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "arrowflow state: error: state query refused: read_csv() after FROM is a table function that reads files; "
        "a state query is one SELECT over the checkpoint's tables"
    ]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT sum(n) AS n FROM agg",
        'SELECT count(*) AS n FROM "agg" WHERE n > 0',
        "WITH big AS (SELECT * FROM agg WHERE n > 1) SELECT count(*) AS n FROM big",
        "SELECT count(*) AS n FROM (SELECT user_id FROM agg) AS s",
        "SELECT count(*) AS n FROM agg a JOIN agg b ON a.user_id = b.user_id;",
        "SELECT count(*) AS n FROM agg WHERE CAST(user_id AS VARCHAR) NOT LIKE '%--/*;read_csv(%'",
        "SELECT count(*) AS n FROM agg a JOIN agg b USING (user_id) WHERE a.user_id IN (SELECT user_id FROM agg)",
        "SELECT count(*) AS n FROM (SELECT user_id, sum(n) OVER (PARTITION BY user_id, n) AS s FROM agg) AS w",
    ],
)
def test_ordinary_state_queries_still_answer(job: Path, query: str) -> None:
    url = str(job / "checkpoints")
    state = af.read_state(url, "agg", checkpoint=2)
    expected = {
        "SELECT sum(n) AS n FROM agg": int(state["n"].sum()),
        "WITH big AS (SELECT * FROM agg WHERE n > 1) SELECT count(*) AS n FROM big": int(
            (state["n"] > 1).sum()
        ),
    }.get(query, state.height)
    assert af.query_state(url, query, checkpoint=2)["n"].item() == expected


def test_a_failing_state_query_is_one_line_in_the_cli(job: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "arrowflow.cli",
            "state",
            "query",
            str(job / "checkpoints"),
            "SELECT nosuchcolumn FROM agg",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "arrowflow state: error: state query failed on checkpoint 3: "
    )
    assert "nosuchcolumn" in lines[0]


def test_state_query_of_a_missing_checkpoint_names_the_ones_there(job: Path) -> None:
    url = str(job / "checkpoints")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "arrowflow.cli",
            "state",
            "query",
            url,
            "SELECT * FROM agg",
            "--checkpoint",
            "999",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"arrowflow state: error: no checkpoint 999 in {url!r}; it has 1, 2, 3"
    ]


def test_a_manifest_copied_into_another_checkpoints_folder_is_refused(job: Path) -> None:
    shutil.copy(manifest_path(job, 2), manifest_path(job, 3))
    storage = CheckpointStorage(str(job / "checkpoints"))
    with pytest.raises(
        CheckpointError, match="checkpoint 3: its folder holds the manifest of checkpoint 2"
    ):
        storage.find(3)
    with pytest.warns(UserWarning, match="skipping checkpoint 3"):
        assert storage.latest().id == 2


def _set_each(key: str, value: Any, where: str) -> Any:
    def edit(body: dict[str, Any]) -> None:
        items = body[where].values() if isinstance(body[where], dict) else body[where]
        for item in items:
            item[key] = value

    return edit


def _set(key: str, value: Any) -> Any:
    return lambda body: body.__setitem__(key, value)


#: Edits of a manifest's types and values (paths untouched), each once a raw TypeError,
#: ValueError, IndexError or KeyError of a restore, read_state or list_checkpoints, or a
#: restore that went on with it (a negative parallelism, a 'yes' for final).
WRONG_TYPES = {
    "file size 'abc'": lambda body: body["files"][0].__setitem__("size", "abc"),
    "file size 10**30": lambda body: body["files"][0].__setitem__("size", 10**30),
    "sources a list": _set("sources", []),
    "offsets a string": lambda body: body["sources"].__setitem__("read_parquet", "x"),
    "finished splits a number": _set_each("finished", 5, "sources"),
    "positions a list": _set_each("positions", [1], "sources"),
    "parallelism '2'": _set("parallelism", "2"),
    "parallelism -1": _set("parallelism", -1),
    "max_parallelism '128'": _set("max_parallelism", "128"),
    "final 'yes'": _set("final", "yes"),
    "time 'x'": _set("time", "x"),
    "operators a list": _set("operators", []),
    "store spec a string": lambda body: body["stores"].__setitem__("agg", "x"),
    "store spec without name": lambda body: body["stores"]["agg"].pop("name"),
    "store schema not base64 IPC": lambda body: body["stores"]["agg"].__setitem__(
        "key_schema", "!!!"
    ),
    "key groups a string": _set_each("key_groups", "ab", "state"),
    "key groups one number": _set_each("key_groups", [5], "state"),
    "key groups out of range": _set_each("key_groups", [-5, 10**20], "state"),
    "state entry with an unknown key": _set_each("bogus", 1, "state"),
    "state of a store that is no name": _set_each("store", 5, "state"),
    "sink entries a string": lambda body: body["sinks"].__setitem__("write_parquet", "abc"),
}


@pytest.mark.parametrize("edit", list(WRONG_TYPES))
def test_a_manifest_with_wrong_types_is_invalid_not_a_crash(job: Path, edit: str) -> None:
    craft(job, WRONG_TYPES[edit])
    url = str(job / "checkpoints")
    storage = CheckpointStorage(url)
    with pytest.raises(CheckpointError, match=r"^checkpoint 3: the manifest's .* expected "):
        storage.find(3)
    with pytest.raises(CheckpointError, match=r"^checkpoint 3: the manifest.s"):
        af.read_state(url, "agg", checkpoint=3)
    with pytest.warns(UserWarning, match="skipping checkpoint 3"):
        assert storage.latest().id == 2
    with pytest.warns(UserWarning, match="skipping checkpoint 3"):
        genuine = af.read_state(url, "agg")
    assert genuine.height > 0
    assert af.list_checkpoints(url)["id"].to_list() == [2, 1]


@pytest.mark.parametrize("edit", ["finished splits a number", "key groups one number"])
def test_a_restore_past_a_manifest_with_wrong_types_is_exact(
    job: Path, recovery_input: Path, recovery: Any, edit: str
) -> None:
    craft(job, WRONG_TYPES[edit])
    code, out, err = recovery.run_job(job, recovery_input, workers=1, state="arrow")
    assert code == 0, err[-2000:]
    assert '"restored_from": 2' in out and "skipping checkpoint 3" in err
    rows, aggregates = recovery.expected_outputs(recovery_input)
    assert recovery.committed(job / "rows").sort("event_id").equals(rows.sort("event_id"))
    got = recovery.latest_per_key(recovery.committed(job / "agg")).sort("user_id")
    assert got.select("user_id", "n").equals(aggregates.sort("user_id").select("user_id", "n"))


_LATEST = """
import sys, warnings
from arrowflow._runtime.checkpoints import CheckpointStorage
from arrowflow.errors import CheckpointError
storage = CheckpointStorage(sys.argv[1])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print("LATEST", storage.latest().id)
print("WARNED", " | ".join(str(w.message) for w in caught))
try:
    storage.find(3)
except CheckpointError as exc:
    print("REFUSED", exc)
"""


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))


@pytest.mark.parametrize(
    "planted",
    [
        "sources.json -> /dev/zero",
        "state file a FIFO",
        "manifest -> /dev/zero",
        "state file -> a copy outside",
    ],
)
def test_a_checkpoint_file_that_is_no_regular_file_is_never_read(job: Path, planted: str) -> None:
    """arrowflow writes no symlinks or FIFOs; one planted in a checkpoint folder made the
    verification read /dev/zero until memory ran out, block on the FIFO, or read a file
    outside the checkpoint as its own."""
    import os

    folder = job / "checkpoints" / "chk-00000003"
    manifest = json.loads((folder / "_MANIFEST.json").read_text())
    state_file = job / "checkpoints" / manifest["state"][0]["path"]
    if planted == "sources.json -> /dev/zero":
        (folder / "sources.json").unlink()
        (folder / "sources.json").symlink_to("/dev/zero")
    elif planted == "manifest -> /dev/zero":
        (folder / "_MANIFEST.json").unlink()
        (folder / "_MANIFEST.json").symlink_to("/dev/zero")
    elif planted == "state file a FIFO":
        state_file.unlink()
        os.mkfifo(state_file)
    else:
        outside = job / "outside.arrow"
        shutil.copyfile(state_file, outside)
        state_file.unlink()
        state_file.symlink_to(outside)
    proc = subprocess.run(
        [sys.executable, "-c", _LATEST, str(job / "checkpoints")],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LATEST 2" in proc.stdout
    assert "not a regular file" in proc.stdout and "REFUSED checkpoint 3:" in proc.stdout


@pytest.mark.parametrize("position", ["abc", 1.5, [1]])
def test_a_file_split_position_that_is_no_row_count_fails_the_restore_clearly(
    job: Path, recovery_input: Path, recovery: Any, position: Any
) -> None:
    """Positions are the source's own (only it knows their type), so the manifest check passes
    them on; a file source's position is a row count. 'abc' failed the job with a raw
    ValueError of int(), and 1.5 was read as row 1, silently."""

    def edit(body: dict[str, Any]) -> None:
        positions = body["sources"]["read_parquet"]["positions"]
        assert positions, "checkpoint 3 should hold a split in progress"
        for split in positions:
            positions[split] = position

    craft(job, edit)
    code, out, err = recovery.run_job(job, recovery_input, workers=1, state="arrow")
    assert code != 0 and "RESULT" not in out
    assert f"SourceError: read_parquet: position {position!r} of split " in err
    assert "is not a row count" in err and "restore an older one" in err


def test_folders_named_with_non_ascii_digits_are_not_checkpoints(job: Path) -> None:
    """'²'.isdigit() is true and int('²') raises: one such folder in a checkpoint directory
    made every restore, list and query there fail with a raw ValueError."""
    for name in ("chk-²", "chk-٣", "chk-3x", "chk-"):
        (job / "checkpoints" / name).mkdir()
    url = str(job / "checkpoints")
    assert CheckpointStorage(url).checkpoint_ids() == [3, 2, 1]
    assert CheckpointStorage(url).latest().id == 3
    assert af.list_checkpoints(url)["id"].to_list() == [3, 2, 1]


def test_retention_never_deletes_through_a_symlink(job: Path) -> None:
    """Symlinks in a checkpoint directory (planted, or made by a user moving folders around)
    are removed by retention, never followed (a guard: main already passes it)."""
    victims = {}
    for name in ("in-shared", "in-chk", "file"):
        folder = job / f"victim-{name}"
        folder.mkdir()
        (folder / "notes.txt").write_text("not arrowflow's")
        victims[name] = folder / "notes.txt"
    checkpoints = job / "checkpoints"
    (checkpoints / "shared" / "evil").symlink_to(job / "victim-in-shared")
    (checkpoints / "chk-00000001" / "evil").symlink_to(job / "victim-in-chk")
    (checkpoints / "shared" / "agg" / "000" / "00000001-evil.arrow").symlink_to(victims["file"])
    storage = CheckpointStorage(str(checkpoints), keep=1)
    assert storage.prune() == [2, 1]
    for victim in victims.values():
        assert victim.read_text() == "not arrowflow's", f"retention deleted {victim}"
    assert (
        not (checkpoints / "chk-00000001").exists()
        and not (checkpoints / "shared" / "evil").is_symlink()
    )
    assert not (checkpoints / "shared" / "agg" / "000" / "00000001-evil.arrow").is_symlink()
    assert storage.latest().id == 3


def test_a_state_query_that_makes_polars_panic_is_a_checkpoint_error(job: Path) -> None:
    """polars' PanicException is a BaseException: it went past query_state's handler raw, and
    the CLI printed a Python traceback."""
    sql = "SELECT CAST(n AS DECIMAL(99, 99)) AS d FROM agg"
    with pytest.raises(
        CheckpointError, match=r"^state query failed on checkpoint 3: PanicException: "
    ):
        af.query_state(str(job / "checkpoints"), sql)
    done = subprocess.run(
        [sys.executable, "-m", "arrowflow.cli", "state", "query", str(job / "checkpoints"), sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert (
        "Traceback (most recent call last)" not in done.stderr
    )  # polars' own panic report precedes the line
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("arrowflow state: error: state query failed on checkpoint 3: PanicException: ")
    )


def test_a_manifest_nested_too_deep_is_damaged_not_a_recursion_error(job: Path) -> None:
    manifest_path(job).write_text("[" * 100_000 + "]" * 100_000)
    storage = CheckpointStorage(str(job / "checkpoints"))
    with pytest.raises(CheckpointError, match=r"^checkpoint 3: the manifest is damaged"):
        storage.find(3)
    with pytest.warns(UserWarning, match="skipping checkpoint 3"):
        assert storage.latest().id == 2


@pytest.mark.parametrize("content", [b"garbage", b"", b"ARROW1\x00\x00" + b"\xff" * 64])
def test_a_state_file_that_is_no_arrow_ipc_is_a_state_error(
    job: Path, recovery_input: Path, recovery: Any, content: bytes
) -> None:
    """A state file replaced and its size and sha256 recomputed in the manifest: the restore
    and read_state failed with a raw OSError or polars ComputeError."""
    from arrowflow.errors import StateError

    entry = next(
        e for e in json.loads(manifest_path(job).read_text())["state"] if e["store"] == "agg"
    )
    (job / "checkpoints" / entry["path"]).write_bytes(content)

    def edit(body: dict[str, Any]) -> None:
        for item in body["state"] + body["files"]:
            if item["path"] == entry["path"]:
                item["size"], item["sha256"] = len(content), hashlib.sha256(content).hexdigest()

    craft(job, edit)
    with pytest.raises(
        StateError, match=rf"^state file '{entry['path']}' is not a readable Arrow IPC file"
    ):
        af.read_state(str(job / "checkpoints"), "agg", checkpoint=3)
    code, out, err = recovery.run_job(job, recovery_input, workers=1, state="arrow")
    assert code != 0 and "RESULT" not in out
    assert f"StateError: state file '{entry['path']}' is not a readable Arrow IPC file" in err


@pytest.mark.parametrize(
    "content", [b"{}", b'{"watermark": "soon"}', b"[1]", b'{"watermark": true}', b"garbage"]
)
@pytest.mark.filterwarnings("ignore:.*rolled back output")
def test_a_window_watermark_file_without_a_watermark_fails_the_restore_clearly(
    tmp_path: Path, content: bytes
) -> None:
    """A window operator's watermark file replaced, its size and sha256 recomputed in the
    manifest: the restore raised a raw KeyError/TypeError in the window operator (or went on
    with a string as its watermark)."""
    from datetime import datetime

    from arrowflow.errors import StateError

    ts = pl.datetime_range(datetime(2024, 1, 1), datetime(2024, 1, 1, 2), "1s", eager=True)
    frame = pl.DataFrame({"ts": ts, "k": [i % 7 for i in range(ts.len())]})

    def build() -> af.Flow:
        flow = af.Flow("windowed")
        (
            flow.from_polars(frame, splits=4)
            .with_watermark("ts", delay="1s")
            .key_by("k")
            .window(af.tumbling("10m"))
            .agg(n=pl.len())
            .write_parquet(str(tmp_path / "out"))
        )
        return flow

    job = tmp_path / "job"
    build().run(
        workers=0,
        checkpoint_dir=str(job / "checkpoints"),
        checkpoint_every=af.every_rows(2_000),
        batch_size=500,
        keep_checkpoints=100,
    )
    checkpoint_id = 2
    body = json.loads(manifest_path(job, checkpoint_id).read_text())
    entry = next(
        e for e in body["state"] if e["path"].endswith(".json") and "/watermark-" in e["path"]
    )
    (job / "checkpoints" / entry["path"]).write_bytes(content)

    def edit(body: dict[str, Any]) -> None:
        for item in body["state"] + body["files"]:
            if item["path"] == entry["path"]:
                item["size"], item["sha256"] = len(content), hashlib.sha256(content).hexdigest()

    craft(job, edit, checkpoint_id)
    with pytest.raises(StateError, match=r"holds no watermark .*the checkpoint is damaged"):
        build().run(workers=0, checkpoint_dir=str(job / "checkpoints"), restore=checkpoint_id)
