"""Where received instances and batch manifests go: a small interface and the local-folder backend.

A backend's ``store_*`` methods return only once the object is durable (local: fsync'd and renamed into place,
directory entries fsync'd; S3: the PUT confirmed). They raise :class:`StorageError` otherwise, and the SCP then
answers a failure status so the sender retries. Nothing acknowledged is ever lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import Protocol

_HASH_CHUNK = 1024 * 1024


class StorageError(Exception):
    """The object was not stored durably."""


class Storage(Protocol):
    def spool_dir(self) -> Path | None:
        """The folder received data should be streamed into so that storing it is cheapest (None: any)."""

    def store_instance(self, source: Path, key: str, sha256: str) -> None:
        """Make the Part 10 file at ``source`` durable under ``key``. May move ``source`` away."""

    def store_manifest(self, key: str, body: bytes) -> None:
        """Make a batch manifest durable under ``key``."""

    def describe(self) -> str:
        """Where objects go, for the start-up log line."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory entry is: fsync the directory itself.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """A folder laid out exactly like the S3 bucket (see docs/contracts.md)."""

    SPOOL = ".spool"

    def __init__(self, root: Path, spool: Path | None = None) -> None:
        self.root = root.resolve()
        self._spool = spool

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.spool_dir().mkdir(parents=True, exist_ok=True)

    def spool_dir(self) -> Path:
        # Inside the store by default: same filesystem, so storing an instance is a rename, not a copy.
        return self._spool or self.root / self.SPOOL

    def describe(self) -> str:
        return f"local folder {self.root}"

    def store_instance(self, source: Path, key: str, sha256: str) -> None:
        target = self._target(key)
        try:
            self._make_parents(target.parent)
            with source.open("rb") as handle:
                os.fsync(handle.fileno())
            try:
                os.replace(source, target)
            except OSError as error:
                if error.errno != 18:  # EXDEV: spool on another filesystem; copy instead
                    raise
                self._write_atomically(target, source.read_bytes())
                return
            _fsync_dir(target.parent)
        except OSError as error:
            raise StorageError(f"{key}: {error.strerror or error}") from error

    def store_manifest(self, key: str, body: bytes) -> None:
        target = self._target(key)
        try:
            self._make_parents(target.parent)
            self._write_atomically(target, body)
        except OSError as error:
            raise StorageError(f"{key}: {error.strerror or error}") from error

    def _target(self, key: str) -> Path:
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root):
            raise StorageError(f"{key}: outside the store")
        return target

    def _make_parents(self, folder: Path) -> None:
        # New directories must be durable too, from the deepest existing ancestor down.
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for created in reversed(missing):
            # Another association may create it first.
            with contextlib.suppress(FileExistsError):
                created.mkdir()
            _fsync_dir(created.parent)

    def _write_atomically(self, target: Path, body: bytes) -> None:
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        try:
            with partial.open("wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        _fsync_dir(target.parent)


def use_spool_dir(folder: Path | None) -> None:
    """Point :mod:`tempfile` (which pynetdicom streams received data sets into) at ``folder``."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(folder)
