"""Where received instances and batch manifests go: a small interface and the local-folder backend.

A backend's ``store_*`` methods return only once the object is durable (local: fsync'd and renamed into place,
directory entries fsync'd; S3: the PUT confirmed). They raise :class:`StorageError` otherwise, and the SCP then
answers a failure status so the sender retries. Nothing acknowledged is ever lost.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Protocol

# How many recently used folders LocalStorage remembers as existing (a few per live association).
_KNOWN_FOLDERS = 1024


class StorageError(Exception):
    """The object was not stored durably."""

    # The C-STORE failure status to answer (statuses.py) where the backend knows more than "storage failed".
    status: int | None = None


class Storage(Protocol):
    def spool_dir(self) -> Path | None:
        """The folder received data should be streamed into so that storing it is cheapest (None: any)."""

    def store_instance(self, source: Path, key: str, checksum: str) -> None:
        """Make the Part 10 file at ``source`` durable under ``key``. May move ``source`` away.

        ``checksum`` is the file's CRC64NVME in S3's form (checksum.py): a backend that can have it verified on
        arrival does.
        """

    def store_manifest(self, key: str, body: bytes) -> None:
        """Make a batch manifest durable under ``key``."""

    def describe(self) -> str:
        """Where objects go, for the start-up log line."""


def _fsync_dir(path: Path | str) -> None:
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
        self._root_text = str(self.root)
        self._spool = spool
        # Folders this process made or found durable, most recent last (bounded): consecutive instances of a series
        # land in the same folder, which then costs no lookups. A folder removed behind our back is made again.
        self._known_folders: dict[str, None] = {}
        self._known_lock = threading.Lock()

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.spool_dir().mkdir(parents=True, exist_ok=True)

    def spool_dir(self) -> Path:
        # Inside the store by default: same filesystem, so storing an instance is a rename, not a copy.
        return self._spool or self.root / self.SPOOL

    def describe(self) -> str:
        return f"local folder {self.root}"

    def store_instance(self, source: Path, key: str, checksum: str) -> None:
        target = self._target(key)
        folder = os.path.dirname(target)
        try:
            self._make_parents(folder)
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(source, target)
            except FileNotFoundError:
                if not os.path.exists(source):
                    raise
                # The folder went away since it was made (someone tidied the store): make it again, once.
                self._forget_folders()
                self._make_parents(folder)
                os.replace(source, target)
            except OSError as error:
                if error.errno != errno.EXDEV:  # spool on another filesystem; copy instead
                    raise
                self._write_atomically(Path(target), source.read_bytes())
                return
            _fsync_dir(folder)
        except OSError as error:
            raise StorageError(f"{key}: {error.strerror or error}") from error

    def store_manifest(self, key: str, body: bytes) -> None:
        target = self._target(key)
        try:
            self._make_parents(os.path.dirname(target))
            self._write_atomically(Path(target), body)
        except OSError as error:
            raise StorageError(f"{key}: {error.strerror or error}") from error

    def _target(self, key: str) -> str:
        """The key's path under the root, judged by its text: no absolute key, no ``..`` out of the store.

        Keys are made of the configured prefix and validated UIDs, and only this process makes the store's folders,
        so the text decides (no symbolic link lookups per instance).
        """
        target = os.path.normpath(os.path.join(self._root_text, key))
        if not target.startswith(self._root_text + os.sep) or os.path.isabs(key):
            raise StorageError(f"{key}: outside the store")
        return target

    def _make_parents(self, folder: str) -> None:
        if folder in self._known_folders:
            return
        # New directories must be durable too, from the deepest existing ancestor down.
        missing = []
        ancestor = folder
        while not os.path.isdir(ancestor):
            missing.append(ancestor)
            ancestor = os.path.dirname(ancestor)
        for created in reversed(missing):
            # Another association may create it first.
            with contextlib.suppress(FileExistsError):
                os.mkdir(created)
            _fsync_dir(os.path.dirname(created))
        with self._known_lock:
            self._known_folders.pop(folder, None)
            self._known_folders[folder] = None
            while len(self._known_folders) > _KNOWN_FOLDERS:
                del self._known_folders[next(iter(self._known_folders))]

    def _forget_folders(self) -> None:
        with self._known_lock:
            self._known_folders.clear()

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
