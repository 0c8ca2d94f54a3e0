"""Paths that may be local folders or fsspec URLs (`s3://bucket/run`, `memory://run`, `gcs://...`).

Two guarantees everything that writes run files relies on:
  * a write is atomic: local files go to a temporary sibling then `os.replace`; object stores get a
    temporary key that is then moved (copied server side) onto the final key, so a reader never
    sees half a file under its real name;
  * a remote call that fails transiently (connection reset, throttling, a 5xx, an endpoint that does
    not answer) is retried a few times with exponential backoff; what still fails reaches the user as
    an `OSError` (a `StorageError` when the library raised something else), which the trainer and
    the CLI turn into one line.
A process killed mid-write leaves its temporary (`.NAME.tmp-XXXX`, next to NAME) behind;
`remove_temporaries` clears them when a run directory is continued.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Callable, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

T = TypeVar("T")

RETRIES = 4  # attempts after the first; with BACKOFF_S doubling, about 3 s of waiting in all
BACKOFF_S = 0.2
# Errors that mean "this path is wrong", not "the network hiccuped": retrying them only delays the message.
PERMANENT_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
                    ValueError)
# A full or read-only local disk will not heal in three seconds either.
LOCAL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
TEMPORARY_RE = re.compile(r"^\..+\.tmp-[0-9a-z_]{8,}$")


class StorageError(OSError):
    """A storage call that kept failing with a library's own (non-`OSError`) exception, botocore's
    `EndpointConnectionError` say; raised as an `OSError` so every caller handles one kind."""


@functools.cache
def transient_errors() -> tuple[type[BaseException], ...]:
    """What a retry may cure: `OSError` (connection resets, timeouts) plus the connection errors of
    the object-store clients fsspec uses, which do not derive from it."""
    errors: list[type[BaseException]] = [OSError]
    with contextlib.suppress(ImportError):
        import botocore.exceptions

        errors += [botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError]
    with contextlib.suppress(ImportError):
        import aiohttp

        errors.append(aiohttp.ClientError)
    return tuple(errors)


def retrying(call: Callable[[], T], what: str, retries: int = RETRIES, backoff_s: float = BACKOFF_S) -> T:
    """`call()`, retried with exponential backoff on transient errors; `what` names it in the log line."""
    for attempt in range(retries + 1):
        try:
            return call()
        except PERMANENT_ERRORS:
            raise
        except transient_errors() as error:
            if attempt == retries or getattr(error, "errno", None) in LOCAL_DISK_ERRNOS:
                if isinstance(error, OSError):
                    raise
                raise StorageError(f"{what} failed: {type(error).__name__}: {error}") from error
            delay = backoff_s * 2**attempt
            print(f"composerlite: {what} failed ({type(error).__name__}: {error}); retrying in {delay:.1f} s",
                  file=sys.stderr)
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Location:
    """A folder on some filesystem: `fs` plus the path inside it (no protocol)."""

    fs: fsspec.AbstractFileSystem
    path: str
    url: str  # what the user typed, for messages and for `composerlite run --resume`

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def child(self, *names: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *names])
        url = "/".join([self.url.rstrip("/"), *names])
        return Location(self.fs, path, url)

    @property
    def parent(self) -> Location:
        return Location(self.fs, self.path.rstrip("/").rsplit("/", 1)[0], self.url.rstrip("/").rsplit("/", 1)[0])

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def exists(self) -> bool:
        return retrying(lambda: self.fs.exists(self.path), f"checking {self.url}")

    def is_file(self) -> bool:
        return retrying(lambda: self.fs.isfile(self.path), f"checking {self.url}")

    def same_place(self, other: Location) -> bool:
        """Whether both name the same folder (however the URLs were spelled)."""
        return type(self.fs) is type(other.fs) and self.path.rstrip("/") == other.path.rstrip("/")

    def read_bytes(self) -> bytes:
        return retrying(lambda: self.fs.cat_file(self.path), f"reading {self.url}")

    def write_bytes(self, data: bytes) -> None:
        write_atomic(self, data)

    def listdir(self) -> list[str]:
        """Names of the entries directly inside this folder; empty if it does not exist."""
        if not self.exists():
            return []
        entries = retrying(lambda: self.fs.ls(self.path, detail=False), f"listing {self.url}")
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)

    def makedirs(self) -> None:
        retrying(lambda: self.fs.makedirs(self.path, exist_ok=True), f"creating {self.url}")

    def remove(self) -> None:
        """Delete this file or folder (recursively); missing is fine."""
        if self.exists():
            retrying(lambda: self.fs.rm(self.path, recursive=True), f"deleting {self.url}")

    def local_path(self) -> str:
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local path")
        return self.path

    def __str__(self) -> str:
        return self.url


def location(url: str | os.PathLike) -> Location:
    """The `Location` for a local path or an fsspec URL."""
    url = os.fspath(url)
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(path)
    return Location(fs, path, url)


def write_atomic(target: Location, data: bytes) -> None:
    """Write `data` to `target` so that the file is either the old one or the complete new one."""
    if target.is_local:
        _write_local_atomic(target.path, data)
        return
    temporary = target.parent.child(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}").path
    try:
        retrying(lambda: target.fs.pipe_file(temporary, data), f"writing {target.url}")
        retrying(lambda: target.fs.mv(temporary, target.path), f"publishing {target.url}")
    finally:
        # Best effort: the error being raised (if any) is the one to report, and a temporary left
        # by a store that just went down is cleared by `remove_temporaries` on the next start.
        with contextlib.suppress(Exception):
            if target.fs.exists(temporary):
                target.fs.rm(temporary)


def remove_temporaries(folder: Location) -> list[str]:
    """Delete the temporaries that killed writers left anywhere under `folder`; returns their URLs.
    Only for a folder no other process is writing to (a run directory being continued)."""
    if not folder.exists():
        return []
    paths = retrying(lambda: folder.fs.find(folder.path), f"listing {folder.url}")
    root = folder.path.rstrip("/")
    leftovers = [path for path in paths if TEMPORARY_RE.match(path.rstrip("/").rsplit("/", 1)[-1])]
    removed = []
    for path in leftovers:
        leftover = folder.child(path.rstrip("/")[len(root) + 1 :])
        leftover.remove()
        removed.append(leftover.url)
    return removed


def _write_local_atomic(path: str, data: bytes) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            write_all(file, data)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_all(file, data: bytes) -> None:
    """The one place file bytes are written (a seam tests use to simulate a full disk midway)."""
    view = memoryview(data)
    chunk = 1 << 24
    for start in range(0, len(view), chunk):
        file.write(view[start : start + chunk])
