"""The ``pool`` runner: N processes, one instance of every operator each, joined by shared memory.

:class:`PoolRunner` is an :class:`arrowflow.runners.Runner`; its transport is
:class:`arrowflow._runtime.shm.ShmTransport` and its control link the messages of
:mod:`arrowflow._runtime.control` over pipes (docs/runtime.md). Design (the execution model: docs/design.md §3):

- **Processes** are forked from a ``forkserver`` that preloaded the engine, polars and
  pyarrow and started none of their thread pools (:func:`start_context`: a worker starts in
  milliseconds, fresh each run; ``spawn`` is the fallback). The worker spec (plan, state backend, runtime context) is
  serialized once with cloudpickle and sent as the process's argument, never per batch.
  Each worker limits its polars and Arrow thread pools to ``cores // workers`` so N workers
  don't oversubscribe.
- **Channels**: one shared-memory ring (:mod:`arrowflow._runtime.shm`) per ordered pair
  of workers, shared by every exchange of the plan (messages carry the exchange's tag).
  The coordinator creates the segments and unlinks them at the end, whatever happened.
- **Control** goes over one ``multiprocessing`` pipe per worker: split requests and answers,
  finished splits, the final report, or the traceback text of a failure.
- **Failures**: the coordinator waits on every pipe and every process sentinel at once, so a
  worker that raises or dies (``kill -9``) is noticed at once and the run fails with the
  worker's own traceback or its exit signal; the other workers are stopped, nothing is left
  in ``/dev/shm``. Workers ignore SIGINT: Ctrl-C reaches the coordinator, which stops them.

Worked example: ``flow.run(workers=2)`` over 10 Parquet row groups with a ``key_by().agg()``:
both workers ask for row groups; each filters its batches, hashes the keys and keeps the
rows of its own key groups, sending the rest through the ring to the other worker; when the
splits run out each worker sends END on the exchange; each aggregation finishes when both
ENDs arrived, emits its keys into its Parquet sink writer, and reports the staged files;
the coordinator commits them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

from arrowflow._foundation.warn import warn
from arrowflow._runtime.control import ChannelLink, ControlServer
from arrowflow._runtime.shm import DEFAULT_CAPACITY, Ring, ShmTransport
from arrowflow._runtime.shm_segments import reclaim_segments, segment_name
from arrowflow.errors import JobCancelled, PlanError, WorkerError, summarize
from arrowflow.options import RunOptions
from arrowflow.runners import Coordinator, Runner, WorkerSpec

_THREAD_VARS = ("POLARS_MAX_THREADS", "OMP_NUM_THREADS", "ARROW_NUM_THREADS", "RAYON_NUM_THREADS")
_STOP_GRACE_S = 2.0


def _limit_threads(threads: int) -> None:
    try:
        import pyarrow as pa

        pa.set_cpu_count(threads)
        pa.set_io_thread_count(max(2, threads))
    except Exception:
        pass


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the process that started this worker dies, however it dies
    (kill -9, a kernel restart in Jupyter), so that a worker stuck anywhere is no orphan."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the control pipe's EOF still ends a worker that is not stuck
    if parent is not None and wait([parent.sentinel], timeout=0):
        os._exit(1)  # the coordinator died before prctl: nobody would tell us


def _worker_main(
    index: int,
    conn: Connection,
    spec_bytes: bytes,
    ring_names: dict[tuple[int, int], str],
    local_dir: str,
    threads: int,
    environ: dict[str, str] | None = None,
) -> None:
    """Entry point of a worker process."""
    _die_with_parent()
    if environ is not None:
        # A forkserver child has the server's environment, taken when it started: give it the
        # coordinator's, as spawn would (credentials, ARROWFLOW_* settings, thread limits).
        os.environ.clear()
        os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_threads(threads)
    worker = None
    transport = None
    try:
        spec: WorkerSpec = cloudpickle.loads(spec_bytes)
        transport = (
            ShmTransport(index, spec.parallelism, ring_names, spec.exchanges)
            if ring_names
            else None
        )
        os.makedirs(local_dir, exist_ok=True)
        worker = spec.build(index, ChannelLink(conn), transport, local_dir)
        if transport is not None:
            transport.owner = worker
        profile_dir = os.environ.get("ARROWFLOW_PROFILE_DIR")
        if profile_dir:  # developer aid: one cProfile dump per worker
            import cProfile

            profiler = cProfile.Profile()
            report = profiler.runcall(worker.run)
            profiler.dump_stats(os.path.join(profile_dir, f"worker-{index}.prof"))
        else:
            report = worker.run()
        conn.send(("report", report))
        status = 0
    except BaseException as exc:
        status = 1
        try:
            conn.send(("error", traceback.format_exc(), summarize(exc)))
        except (OSError, ValueError):
            pass
    finally:
        if worker is not None:
            worker.close()
        if transport is not None:
            transport.close()
        try:
            conn.close()
        except OSError:
            pass
    # Everything is closed and reported: skip the interpreter's teardown (thread pools,
    # module cleanup), which took the coordinator 0.6 s of waiting at the end of every run.
    # What user code asked for still happens: atexit handlers, logging's flush, stdio.
    try:
        import atexit
        import logging

        atexit._run_exitfuncs()
        logging.shutdown()
    except BaseException:  # a failing handler must not keep the worker alive
        status = status or 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _exit_reason(process: mp.process.BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Keep ``spawn`` from re-running the user's script in every worker.

    Workers get everything they need from the pickled plan (cloudpickle ships functions
    defined in ``__main__`` by value), so a script needs no ``if __name__ == "__main__"``
    guard, and a job file is never executed twice.
    """
    main = sys.modules.get("__main__")
    saved = {
        k: getattr(main, k)
        for k in ("__file__", "__spec__")
        if main is not None and hasattr(main, k)
    }
    try:
        if main is not None:
            if "__file__" in saved:
                del main.__file__
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            for key, value in saved.items():
                setattr(main, key, value)


#: What a forkserver loads once, before it forks any worker: the engine and its heavy
#: dependencies. Neither polars' compute pool (threads ``polars-N``, tokio) nor Arrow's CPU
#: pool starts on import: they start lazily, in each worker, sized for it. What does start on
#: import: jemalloc's purging threads, switched off for the server (:func:`_server_env`), and
#: polars' idle spill-folder cleaner, the one thread besides the main one that the server
#: runs (tests/arrowflow/runtime/test_start.py checks exactly that).
PRELOAD = ["arrowflow._runtime.preload", "arrowflow.io", "arrowflow.backends"]


def start_context(threads: int) -> Any:
    """The multiprocessing context the workers of a run start from.

    ``forkserver`` (Linux, the default): a server process imports the engine, polars and
    pyarrow once per interpreter, and every worker of every later run is a fork of it, ready
    in milliseconds, with a fresh interpreter state each run. polars fixes the size of its
    thread pool when it is imported, so the server is started for one thread per worker (the
    default, one worker per core) and serves the runs with that share of the cores; a run
    that gives each worker more threads (fewer workers than cores) starts them with ``spawn``,
    which imports everything in each worker (about 0.5 s). ``ARROWFLOW_START_METHOD=spawn``
    always spawns.
    """
    method = os.environ.get("ARROWFLOW_START_METHOD", "forkserver")
    if method not in ("forkserver", "spawn"):
        msg = f"ARROWFLOW_START_METHOD must be forkserver or spawn, got {method!r}"
        raise PlanError(msg)
    if (
        method == "forkserver"
        and threads == SERVER_THREADS
        and "forkserver" in mp.get_all_start_methods()
    ):
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        _start_forkserver()
        return context
    return mp.get_context("spawn")


#: Threads per worker of the forkserver's workers: polars reads its pool size on import.
SERVER_THREADS = 1


def _server_env() -> dict[str, str]:
    """The forkserver's environment beyond the coordinator's: one thread per pool, and
    jemalloc's background purging threads (polars' and pyarrow's allocators start them on
    import) off, so the server forks from a process without them."""
    env = {var: str(SERVER_THREADS) for var in _THREAD_VARS}
    # The server runs ``python -c``, which puts the current folder first on sys.path (and
    # Python 3.11's forkserver never applies the coordinator's sys.path): in a clone of the
    # repository that would preload ./arrowflow, the source tree without arrowflow.io, in
    # place of the installed package. Forked workers set the coordinator's sys.path anyway.
    env["PYTHONSAFEPATH"] = "1"
    for var in ("_RJEM_MALLOC_CONF", "JE_ARROW_MALLOC_CONF"):
        conf = os.environ.get(var, "")
        if "background_thread" not in conf:
            conf = f"{conf},background_thread:false" if conf else "background_thread:false"
        env[var] = conf
    return env


@contextmanager
def _environment(overrides: dict[str, str]) -> Iterator[None]:
    """Set ``overrides`` in this process's environment for the block, then put it back."""
    saved = {var: os.environ.get(var) for var in overrides}
    try:
        os.environ.update(overrides)
        yield
    finally:
        for var, old in saved.items():
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old


def prestart() -> None:
    """Start the forkserver now, when a flow gets its first source, so that it has imported
    the engine by the time the first pool run needs it (the server preloads in its own
    process: this call returns once it is started, in milliseconds).

    Only where the default run would use it (Linux, ``ARROWFLOW_START_METHOD`` not ``spawn``,
    in the main process); ``ARROWFLOW_PRESTART=0`` leaves it to the first pool run.
    """
    if os.environ.get("ARROWFLOW_PRESTART", "1") == "0":
        return
    if os.environ.get("ARROWFLOW_START_METHOD", "forkserver") != "forkserver":
        return
    if "forkserver" not in mp.get_all_start_methods() or mp.parent_process() is not None:
        return
    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    _start_forkserver()


def _start_forkserver() -> None:
    import multiprocessing.forkserver as forkserver

    with _environment(_server_env()):
        forkserver.ensure_running()


class PoolRunner(Runner):
    """The process pool: ``workers`` processes (default: one per core), one worker each,
    joined by the shared-memory transport, linked to the coordinator by pipes.

    Parameters
    ----------
    options
        The run's options; ``workers`` is the number of processes (``None``: one per core).
    """

    name = "pool"
    #: Bytes per ring (ARROWFLOW_RING_BYTES overrides the default).
    capacity = DEFAULT_CAPACITY

    def __init__(self, options: RunOptions) -> None:
        super().__init__(options)
        if options.workers == 0:
            msg = (
                "the pool runner starts worker processes, and workers=0 asks for none; drop "
                "runner='pool' to run in this process, or pass workers=N"
            )
            raise PlanError(msg)
        cores = os.cpu_count() or 1
        self.workers = options.workers or cores
        if self.workers > cores:
            warn(
                f"workers={self.workers} is more than the {cores} cores of this machine: the "
                f"processes take turns on the cores and the run gets slower, not faster; the "
                f"default (workers=None) chooses from the flow and the cores"
            )
        self.rings: list[Ring] = []
        self.worker_processes: list[mp.process.BaseProcess] = []
        self.conns: list[Connection] = []
        self.local_dir: str | None = None
        self.flow_name = ""

    @property
    def parallelism(self) -> int:
        return self.workers

    def launch(self, spec: WorkerSpec, coordinator: Coordinator) -> None:
        self.flow_name = spec.flow_name
        self.rings, self.worker_processes, self.conns = [], [], []
        self.local_dir = tempfile.mkdtemp(prefix=f"arrowflow-{spec.flow_name}-")
        token = secrets.token_hex(4)
        ring_names: dict[tuple[int, int], str] = {}
        if spec.exchanges and self.workers > 1:
            reclaimed = reclaim_segments()
            if reclaimed:
                creators = sorted({int(name.split("-")[1]) for name in reclaimed})
                warn(
                    f"removed {len(reclaimed)} shared-memory segments left in /dev/shm by arrowflow "
                    f"coordinators killed before they could clean up (pids "
                    f"{', '.join(map(str, creators))})"
                )
            for s in range(self.workers):
                for t in range(self.workers):
                    if s != t:
                        name = segment_name(token, s, t)
                        self.rings.append(Ring(name, self.capacity, create=True))
                        ring_names[(s, t)] = name
        spec_bytes = cloudpickle.dumps(spec)  # once: the user's functions by value
        cores = os.cpu_count() or 1
        threads = max(1, cores // self.workers)
        context = start_context(threads)
        with _environment({var: str(threads) for var in _THREAD_VARS}):
            environ = dict(os.environ)
            for index in range(self.workers):
                parent, child = context.Pipe(duplex=True)
                process = context.Process(
                    target=_worker_main,
                    name=f"arrowflow-{spec.flow_name}-w{index}",
                    daemon=True,
                    args=(
                        index,
                        child,
                        spec_bytes,
                        ring_names,
                        os.path.join(self.local_dir, f"w{index}"),
                        threads,
                        environ,
                    ),
                )
                with _main_module_hidden():
                    process.start()
                child.close()
                self.worker_processes.append(process)
                self.conns.append(parent)

    def coordinate(self, coordinator: Coordinator) -> list[Any]:
        server = ControlServer(coordinator)
        reports = server.reports
        by_conn = {id(conn): index for index, conn in enumerate(self.conns)}
        by_sentinel = {
            process.sentinel: index for index, process in enumerate(self.worker_processes)
        }
        exiting = False
        stop_deadline: float | None = None
        while len(reports) < self.workers:
            if coordinator.exit_now and stop_deadline is None:
                exiting, stop_deadline = True, time.monotonic() + _STOP_GRACE_S
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                break  # a stopped worker stuck on a full ring: shutdown() ends it
            waiting = [c for i, c in enumerate(self.conns) if i not in reports]
            sentinels = [
                p.sentinel for i, p in enumerate(self.worker_processes) if i not in reports
            ]
            for ready in wait([*waiting, *sentinels], timeout=0.02):
                if isinstance(ready, int):
                    index = by_sentinel[ready]
                    exiting |= self._drain(index, server)  # it may have said why before exiting
                    if index not in reports:
                        process = self.worker_processes[index]
                        process.join(1.0)  # reap it, so its exit code is known
                        msg = (
                            f"worker {index} (pid {process.pid}) {_exit_reason(process)} while the job was "
                            f"running"
                        )
                        code = process.exitcode
                        raise WorkerError(
                            msg,
                            worker=index,
                            signal=-code if code is not None and code < 0 else None,
                        )
                else:
                    exiting |= self._drain(by_conn[id(ready)], server)
            if exiting:
                for index, conn in enumerate(self.conns):
                    if index not in reports:
                        self._send(conn, ("exit",))
                exiting = False
                continue
            checkpoint_id = coordinator.poll()
            if checkpoint_id is not None:
                for conn in self.conns:
                    self._send(conn, ("checkpoint", checkpoint_id))
        return [reports[i] for i in sorted(reports)]

    @staticmethod
    def _send(conn: Connection, message: tuple[Any, ...]) -> None:
        try:
            conn.send(message)
        except (BrokenPipeError, OSError):
            pass  # that worker is gone; its sentinel reports it

    def _drain(self, index: int, server: ControlServer) -> bool:
        """Serve everything worker ``index`` sent; True when the final checkpoint completed."""
        conn = self.conns[index]
        final = False
        while index not in server.reports:
            try:
                if not conn.poll():
                    return final
                message = conn.recv()
            except (EOFError, OSError):
                return final
            final |= server.serve(index, message, lambda answer: self._send(conn, answer))
        return final

    def shutdown(self, *, graceful: bool = False) -> None:
        """Stop every process still running, then free every ring and temporary file.

        ``graceful``: the workers reported and are closing their stores (a database
        connection, an LMDB environment); give them the grace period before terminating.
        """
        if graceful:
            deadline = time.monotonic() + _STOP_GRACE_S
            for process in self.worker_processes:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in self.worker_processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + _STOP_GRACE_S
        for process in self.worker_processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
        for conn in self.conns:
            conn.close()
        for ring in self.rings:
            ring.close()
            ring.unlink()
        if self.local_dir is not None:
            shutil.rmtree(self.local_dir, ignore_errors=True)

    def interrupted(self, coordinator: Coordinator) -> BaseException:
        msg = (
            f"flow {self.flow_name!r} was interrupted (Ctrl-C); every worker was stopped; output of "
            f"checkpoints already completed ({coordinator.completed or 'none'}) stays committed"
        )
        return JobCancelled(msg)
