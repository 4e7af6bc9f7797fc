"""Leases: one job at a time per checkpoint directory and per output folder.

Two jobs on one ``checkpoint_dir`` (or writing one output folder) would each commit their
output and collide only later, on a checkpoint id. So a run takes a lease on each such place
before it writes anything, holds it to its end, and a second job is refused at once with a
message naming the holder (host, pid, since when).

How a lease is held, by kind of storage:

- **Local filesystem**: the file ``<folder>/_arrowflow.lock``, locked with ``fcntl.flock``
  (exclusive, non-blocking) by the coordinator process for the whole run. The kernel drops
  the lock when the process ends in any way, ``kill -9`` included, so a crashed job never
  blocks a restart (its file stays behind, unlocked, and is reused). The file holds the
  holder's description, for the refusal message only; its name is hidden from readers. A
  run removes it at its end while still holding the lock, and a job that locked a file
  checks that the name still means that file (else it retries), so two jobs never hold
  locks on two different files of one name.
- **Object stores** (any other fsspec filesystem: ``s3://``, ``memory://``…): the object
  ``<folder>/_arrowflow.lock`` is created with a create-if-absent put (``open(path, "xb")``:
  S3's conditional ``If-None-Match: *`` through s3fs), holding the holder and an expiry
  time. A thread renews it every third of the expiry; the run deletes it at its end. A
  job that finds a lease whose expiry has passed (its holder crashed) takes it over:
  delete, then create-if-absent again, then read back and compare a random token. Two jobs
  taking over the same expired lease at the same moment can both pass that check (the
  window between one's delete and the other's create); a live holder is never taken over.
  The expiry is ``ARROWFLOW_LEASE_EXPIRY`` seconds (default 60): a crashed job's lease on an
  object store blocks a restart that long. A holder whose renewals stop for longer than the
  expiry (a process paused, the store unreachable) can be taken over; it finds that at its
  next renewal and warns (the run is not stopped).

Example: ``flow.run(checkpoint_dir="ckpt")`` while another process runs the same flow on
``ckpt`` fails with ``LeaseError: the checkpoint_dir 'ckpt' is in use by another job: flow
'clicks', host 'box', pid 4242, since 2026-12-02 00:41:07 UTC …``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from typing import Any

from arrowflow._foundation.warn import warn
from arrowflow.errors import ArrowflowError

LEASE_NAME = "_arrowflow.lock"
EXPIRY_ENV = "ARROWFLOW_LEASE_EXPIRY"
DEFAULT_EXPIRY_S = 60.0


class LeaseError(ArrowflowError):
    """Another job holds the lease on a checkpoint directory or an output folder."""


def lease_expiry_s() -> float:
    text = os.environ.get(EXPIRY_ENV, "")
    if not text:
        return DEFAULT_EXPIRY_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        msg = f"{EXPIRY_ENV} must be a positive number of seconds, got {text!r}"
        raise LeaseError(msg)
    return value


def _when(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_s))


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown (the lease names none)"
    return (
        f"flow {holder.get('flow')!r}, host {holder.get('host')!r}, pid {holder.get('pid')}, "
        f"since {_when(float(holder.get('since', 0)))}"
    )


class Lease:
    """An exclusive lease on one folder (local or fsspec URL), for one run."""

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None, *, what: str, flow: str
    ) -> None:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.url = url
        self.what = what
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.path = f"{self.root}/{LEASE_NAME}"
        self.local = isinstance(self.fs, LocalFileSystem)
        self.holder = {
            "flow": flow,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
            "token": secrets.token_hex(8),
        }
        self.fd: int | None = None
        self.expiry_s = lease_expiry_s()
        self.stopping = threading.Event()
        self.renewer: threading.Thread | None = None
        self.lost = False

    @property
    def key(self) -> tuple[str, str]:
        protocol = self.fs.protocol
        return (protocol if isinstance(protocol, str) else protocol[0], self.root)

    def _refuse(self, holder: dict[str, Any] | None, extra: str = "") -> LeaseError:
        msg = (
            f"the {self.what} {self.url!r} is in use by another job: {_describe(holder)}{extra} (lease "
            f"{self.path!r}). Two jobs there would commit the same output twice: wait for that job to "
            f"end or stop it, or give this one another {self.what}."
        )
        return LeaseError(msg)

    # ------------------------------------------------------------------ local
    def acquire(self, error: type[ArrowflowError] = LeaseError) -> None:
        """Take the lease or raise LeaseError naming its holder; ``error``: the class for a
        folder that cannot be created (a file in its place, no permission)."""
        try:
            if self.fs.isfile(self.root):
                msg = (
                    f"the {self.what} {self.url!r} is a file, not a directory; give a directory "
                    f"(it is created when missing)"
                )
                raise error(msg)
            self.fs.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the {self.what} {self.url!r}: {type(exc).__name__}: {exc}"
            raise error(msg) from exc
        if self.local:
            self._acquire_local()
        else:
            self._acquire_object()

    def _acquire_local(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._refuse(self._read_local()) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder removed the file as we opened it: lock the new one
        payload = json.dumps(self.holder).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)
        self.fd = fd

    def _read_local(self) -> dict[str, Any] | None:
        for _ in range(20):  # the holder may be between truncating and writing its description
            try:
                with open(self.path, "rb") as handle:
                    return json.loads(handle.read())
            except (OSError, ValueError):
                time.sleep(0.01)
        return None

    # ------------------------------------------------------------------ object stores
    def _payload(self) -> bytes:
        return json.dumps({**self.holder, "expires": time.time() + self.expiry_s}).encode()

    def _read_object(self) -> dict[str, Any] | None:
        self.fs.invalidate_cache()
        try:
            with self.fs.open(self.path, "rb") as handle:
                body = json.loads(handle.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _create(self) -> bool:
        try:
            with self.fs.open(self.path, "xb") as handle:
                handle.write(self._payload())
        except FileExistsError:
            return False
        return True

    def _acquire_object(self) -> None:
        if not self._create():
            holder = self._read_object()
            if holder == {}:
                msg = (
                    f"the {self.what} {self.url!r} holds a lease object {self.path!r} that is not a lease "
                    f"arrowflow wrote (not JSON); if no job runs there, delete it and run again"
                )
                raise LeaseError(msg)
            expires = float(holder.get("expires", 0)) if holder is not None else 0.0
            if holder is not None and expires > time.time():
                raise self._refuse(holder, f", valid until {_when(expires)}")
            # Expired (its job crashed) or gone meanwhile: take it over.
            if holder is not None:
                try:
                    self.fs.rm(self.path)
                except FileNotFoundError:
                    pass
            if not self._create():
                raise self._refuse(self._read_object())
        current = self._read_object()
        if not current or current.get("token") != self.holder["token"]:
            raise self._refuse(current, " (it took the expired lease over at the same moment)")
        self.renewer = threading.Thread(
            target=self._renew, name=f"arrowflow-lease {self.url}", daemon=True
        )
        self.renewer.start()

    def _renew(self) -> None:
        while not self.stopping.wait(self.expiry_s / 3):
            try:
                current = self._read_object()
                if not current or current.get("token") != self.holder["token"]:
                    self.lost = True
                    warn(
                        f"the lease on the {self.what} {self.url!r} was taken over by another job "
                        f"({_describe(current)}): this job's renewals came too late"
                    )
                    return
                with self.fs.open(self.path, "wb") as handle:
                    handle.write(self._payload())
            except OSError as exc:  # a failed renewal is retried; the expiry leaves room for two
                warn(f"could not renew the lease on the {self.what} {self.url!r}: {exc}")

    # ------------------------------------------------------------------ end
    def release(self) -> None:
        if self.fd is not None:
            # Remove the file while still holding the lock: a job that opened it meanwhile
            # finds, once it has the lock, that the name now means another file, and retries.
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)  # drops the flock
            self.fd = None
            return
        if self.renewer is None:
            return
        self.stopping.set()
        self.renewer.join()
        self.renewer = None
        try:
            current = self._read_object()
            if current and current.get("token") == self.holder["token"]:
                self.fs.rm(self.path)
        except OSError:
            pass  # it expires by itself


class JobLeases:
    """Every lease of one run: its checkpoint directory and its sinks' output folders."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], Lease] = {}

    def take(
        self,
        url: str,
        storage_options: dict[str, Any] | None,
        *,
        what: str,
        flow: str,
        error: type[ArrowflowError] = LeaseError,
    ) -> None:
        try:
            lease = Lease(url, storage_options, what=what, flow=flow)
        except (ImportError, ValueError, TypeError) as exc:
            msg = f"cannot open the {what} {url!r}: {exc}; check the URL and storage_options"
            raise error(msg) from exc
        if lease.key in self.held:
            return  # two sinks of this job write one folder: one lease covers both
        lease.acquire(error)
        self.held[lease.key] = lease

    def release(self) -> None:
        for lease in self.held.values():
            lease.release()
        self.held.clear()
