"""The Lambda zip: our ``functions`` and ``dicom_store_contract`` packages and the locked dependencies, reproducible.

Wheels are unpacked here rather than installed with ``pip install --target``: pip writes install-time files
(INSTALLER, direct_url.json with the build path, byte code) that differ between builds. A wheel's own files,
sorted, with one timestamp and one mode, zip to the same bytes every time.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

from release import project

# The earliest time a zip entry can hold; any fixed value would do.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Regular file, rw-r--r--: Lambda runs the code as another user, which only needs to read it.
FILE_MODE = 0o100644 << 16
# Packages of this repository in the zip: name in the zip -> folder in the checkout. The contract package is the
# one the SCP image ships too (container/Dockerfile).
SOURCE_PACKAGES = {"functions": "functions", "dicom_store_contract": "container/dicom_store_contract"}


class PackageError(RuntimeError):
    """The zip cannot be built as asked."""


@dataclass(frozen=True)
class Built:
    path: Path
    sha256: str
    files: int
    # Wheels that are not pure Python (tag other than ``none-any``): they load only on the zip's platform.
    compiled: tuple[str, ...]


def zip_name(version: str, arch: str) -> str:
    suffix = "" if arch == "x86_64" else f"-{arch}"
    return f"{project.FUNCTIONS_ZIP_STEM}-{version}{suffix}.zip"


def download_wheels(lock: Path, platform: str, python_version: str, dest: Path) -> list[Path]:
    """The locked wheels for the Lambda platform, hash-checked (pip's cache makes repeats fast)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--quiet",
        "--require-hashes",
        "--no-deps",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--platform",
        platform,
        "--dest",
        str(dest),
        "--requirement",
        str(lock),
    ]
    subprocess.run(command, check=True)
    return sorted(dest.glob("*.whl"))


def _wheel_is_pure(wheel: zipfile.ZipFile) -> bool:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/WHEEL") and n.count("/") == 1)
    headers = HeaderParser().parsestr(wheel.read(name).decode("utf-8"))
    return all(tag.endswith("-none-any") for tag in headers.get_all("Tag", []))


def _skipped(path: PurePosixPath) -> bool:
    return "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"}


def wheel_entries(wheel_path: Path) -> tuple[dict[str, bytes], bool]:
    """Files a wheel installs into site-packages (``.data/purelib`` and ``platlib`` folded in; scripts, headers
    and data left out: the Lambda never runs them)."""
    entries: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        pure = _wheel_is_pure(wheel)
        for info in wheel.infolist():
            if info.is_dir():
                continue
            path = PurePosixPath(info.filename)
            if path.parts[0].endswith(".data"):
                if len(path.parts) < 3 or path.parts[1] not in {"purelib", "platlib"}:
                    continue
                path = PurePosixPath(*path.parts[2:])
            if _skipped(path):
                continue
            entries[str(path)] = wheel.read(info)
    return entries, pure


def source_entries(root: Path) -> dict[str, bytes]:
    entries = {}
    for name, folder in SOURCE_PACKAGES.items():
        package = root / folder
        for path in sorted(package.rglob("*")):
            relative = PurePosixPath(name, path.relative_to(package).as_posix())
            if path.is_file() and not _skipped(relative):
                entries[str(relative)] = path.read_bytes()
        if f"{name}/__init__.py" not in entries:
            raise PackageError(f"{package} is not a package")
    return entries


def write_zip(entries: dict[str, bytes], path: Path) -> str:
    """Write ``entries`` sorted by name with fixed metadata; returns the zip's sha256."""
    partial = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.external_attr = FILE_MODE
            info.create_system = 3  # Unix, so the mode above is read as one
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entries[name], compresslevel=9)
    partial.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(
    arch: str = "x86_64",
    version: str | None = None,
    root: Path = project.ROOT,
    dist: Path = project.DIST,
    lock: Path | None = None,
) -> Built:
    if arch not in project.LAMBDA_ARCHITECTURES:
        raise PackageError(f"unknown Lambda architecture {arch!r}")
    version = version or project.version()
    lock = lock or project.lock_target("functions").path
    entries = source_entries(root)
    compiled = []
    with tempfile.TemporaryDirectory(prefix="wheels-") as scratch:
        wheels = download_wheels(lock, project.LAMBDA_ARCHITECTURES[arch], project.LAMBDA_PYTHON, Path(scratch))
        for wheel in wheels:
            files, pure = wheel_entries(wheel)
            if not pure:
                compiled.append(wheel.name)
            clash = entries.keys() & files.keys()
            if clash:
                raise PackageError(f"{wheel.name} would overwrite {sorted(clash)[:3]}")
            entries.update(files)
    dist.mkdir(parents=True, exist_ok=True)
    path = dist / zip_name(version, arch)
    digest = write_zip(entries, path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    return Built(path, digest, len(entries), tuple(compiled))
