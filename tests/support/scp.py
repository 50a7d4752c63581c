"""Test harness: a real SCP process, and DCMTK as the sending peer."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.data import get_testdata_file

# Debian's DCMTK leaves Nagle's algorithm on unless told otherwise, and is ~40x slower for it.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

# storescu proposes only uncompressed transfer syntaxes unless told which compressed one to offer.
STORESCU_PROPOSAL = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}

_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")


def sample_file(name: str) -> Path:
    """A file shipped inside pydicom (never one it would try to download)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


def changed_sample(tmp_path: Path, name: str, sample: str = "CT_small.dcm", **changes: Any) -> Path:
    """pydicom's ``sample`` with attributes changed (by keyword; ``meta_<keyword>`` for the file meta; None deletes),
    written as ``tmp_path / name``."""
    from pydicom import dcmread
    from pydicom.filewriter import dcmwrite

    dataset = dcmread(sample_file(sample))
    for keyword, value in changes.items():
        target, keyword = (dataset.file_meta, keyword[5:]) if keyword.startswith("meta_") else (dataset, keyword)
        if value is None:
            delattr(target, keyword)
        else:
            setattr(target, keyword, value)
    path = tmp_path / name
    dcmwrite(path, dataset, enforce_file_format=False)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class StoreResult:
    returncode: int
    output: str
    statuses: list[int] = field(default_factory=list)


def negotiation_profile(tmp_path: Path, contexts: list[tuple[str, list[str]]]) -> Path:
    """A DCMTK association negotiation profile (storescu ``-xf``) proposing these (SOP class, transfer syntaxes)."""
    lines = ["[[TransferSyntaxes]]"]
    for number, (_, syntaxes) in enumerate(contexts):
        lines.append(f"[Syntaxes{number}]")
        lines += [f"TransferSyntax{n + 1} = {uid}" for n, uid in enumerate(syntaxes)]
    lines += ["", "[[PresentationContexts]]", "[Proposed]"]
    lines += [
        f"PresentationContext{number + 1} = {abstract}\\Syntaxes{number}"
        for number, (abstract, _) in enumerate(contexts)
    ]
    lines += ["", "[[Profiles]]", "[Test]", "PresentationContexts = Proposed", ""]
    path = tmp_path / f"storescu-{len(list(tmp_path.glob('storescu-*.cfg')))}.cfg"
    path.write_text("\n".join(lines))
    return path


def storescu(
    port: int,
    *files: Path | str,
    args: tuple[str, ...] = (),
    timeout: float = 120,
    profile: Path | None = None,
    profile_name: str = "Test",
) -> StoreResult:
    """Send files with DCMTK storescu; return the C-STORE statuses it received, in order.

    With a negotiation ``profile`` storescu proposes exactly its contexts, SOP classes it does not know included
    (no ``-R``: with it storescu refuses such files before it connects).
    """
    proposal = ("-xf", str(profile), profile_name) if profile is not None else ("-R",)
    completed = subprocess.run(
        ["storescu", "-d", *proposal, *args, "127.0.0.1", str(port), *map(str, files)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = completed.stdout + completed.stderr
    return StoreResult(completed.returncode, output, [int(s, 16) for s in _STATUS.findall(output)])


def echoscu(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-v", *args, "127.0.0.1", str(port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta Information: the data set as it travels over the network."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", path
    # (0002,0000) UL, explicit VR little endian: tag 4 + VR 2 + length 2 + value 4 bytes.
    assert data[132:136] == b"\x02\x00\x00\x00", f"{path} has no File Meta group length"
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


@dataclass
class RunningScp:
    port: int
    storage: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                lines.append({"level": "RAW", "message": line})
        return lines

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("event") == name]

    def wait_for_event(self, name: str, count: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {count} {name!r} log lines in {timeout} s: {self.logs()}")

    def manifests(self) -> list[dict[str, Any]]:
        folder = self.storage / "manifests"
        if not folder.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]

    def wait_for_manifests(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """The manifests once there are ``count`` (a batch is sealed just after its association is released)."""
        deadline = time.monotonic() + timeout
        while len(self.manifests()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.manifests()

    def stored_files(self) -> list[Path]:
        folder = self.storage / "incoming"
        return sorted(folder.rglob("*.dcm")) if folder.exists() else []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def launch_scp(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    user: int | None = None,
    wait: bool = True,
    cwd: Path | None = None,
) -> RunningScp:
    """Start ``python -m dicom_store_scp``; one worker process unless the test asks for more."""
    if "--workers" not in args:
        args = ("--workers", "1", *args)
    port = free_port()
    storage = tmp_path / f"storage-{port}"
    log_path = tmp_path / f"scp-{port}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DICOM_"))}
    environment.update(env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dicom_store_scp", "--scp-port", str(port), "--storage-dir", str(storage), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            user=user,
            cwd=cwd,
        )
    scp = RunningScp(port, storage, process, log_path)
    if wait:
        deadline = time.monotonic() + 20
        while not scp.events("listening"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"SCP did not start: {log_path.read_text()}")
            time.sleep(0.05)
    return scp


class WireWitness:
    """DCMTK's storescp in bit-preserving mode: it writes each data set exactly as it came off the wire.

    storescu re-encodes what it reads (lengths, padding), so the bytes "as sent" are those DCMTK's own SCP
    records, not the source file's.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process = subprocess.Popen(
            ["storescp", "+B", "+xa", "-od", str(folder), str(self.port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("DCMTK storescp did not start")
            time.sleep(0.05)

    def sent_dataset(self, source: Path, args: tuple[str, ...]) -> bytes:
        before = set(self.folder.iterdir())
        result = storescu(self.port, source, args=args)
        assert result.statuses == [0], result.output
        [received] = set(self.folder.iterdir()) - before
        return dataset_bytes(received)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def send_file_as_is(port: int, path: Path) -> int:
    """Send a Part 10 file's data set bytes untouched with pynetdicom, under the UIDs its File Meta names.

    DCMTK's storescu takes the request's UIDs from the data set itself, so it cannot send a request that
    disagrees with its data set; pynetdicom's chunked sender takes them from the File Meta Information.
    """
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import AE, _config

    meta = read_file_meta_info(path)
    sender = AE(ae_title="CRAFTED")
    sender.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        assoc = sender.associate("127.0.0.1", port)
        assert assoc.is_established
        try:
            response = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return int(response.Status)
