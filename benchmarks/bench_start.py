"""Start-up cost of a pool run (issue 15): a tiny job (1,000 rows, a keyed aggregation)
in-process, with 2 workers forked from the preloaded forkserver (first run, which starts the
server, and later runs), and with 2 spawned workers. The forkserver starts when the flow
gets its first source; "run 1 s on" runs the flow a second after building it (as in a
notebook), against the same with the start left to the first run (ARROWFLOW_PRESTART=0).
Each configuration in a fresh interpreter; medians of ``--repeat`` runs after the first.

    python benchmarks/bench_start.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import polars as pl
import arrowflow as af
path, workers, repeat, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
pl.DataFrame({"k": [(i * 7919) % 10 for i in range(1000)], "v": list(range(1000))}).write_parquet(path)
expected = pl.read_parquet(path).group_by("k").agg(pl.col("v").sum()).sort("k")
times = []
for _ in range(repeat + 1):
    flow = af.Flow("tiny")
    stream = flow.read_parquet(path).key_by("k").agg(pl.col("v").sum())
    time.sleep(pause)  # the user between building the flow and running it (a notebook cell)
    started = time.perf_counter()
    got = stream.collect(workers=workers)
    times.append(time.perf_counter() - started)
    assert got.sort("k").equals(expected)
print(json.dumps(times))
"""


def measure(
    workers: int, repeat: int, method: str, *, pause: float = 0.0, prestart: bool = True
) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "ARROWFLOW_START_METHOD": method,
            "ARROWFLOW_PRESTART": "1" if prestart else "0",
        }
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                os.path.join(folder, "t.parquet"),
                str(workers),
                str(repeat),
                str(pause),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base = measure(0, args.repeat, "forkserver")
    inproc = statistics.median(base[1:])
    print(f"{'configuration':<34}{'first s':>9}{'later s (median)':>18}{'over in-process':>17}")
    print(f"{'in-process (workers=0)':<34}{base[0]:>9.3f}{inproc:>18.3f}{'':>17}")
    configurations = [
        ("workers=2, forkserver", "forkserver", 0.0, True),
        ("  started when built, run 1 s on", "forkserver", 1.0, True),
        ("  started by the first run", "forkserver", 1.0, False),
        ("workers=2, spawn", "spawn", 0.0, True),
    ]
    for label, method, pause, prestart in configurations:
        times = measure(2, args.repeat, method, pause=pause, prestart=prestart)
        later = statistics.median(times[1:])
        print(f"{label:<34}{times[0]:>9.3f}{later:>18.3f}{later - inproc:>15.3f} s")


if __name__ == "__main__":
    main()
