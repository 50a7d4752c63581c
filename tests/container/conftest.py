"""Fixtures: a real SCP process per test (see support/scp.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.scp import RunningScp, WireWitness, launch_scp


@pytest.fixture
def start_scp(tmp_path: Path) -> Iterator[Any]:
    started: list[RunningScp] = []

    def start(*args: str, **kwargs: Any) -> RunningScp:
        scp = launch_scp(tmp_path, *args, **kwargs)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        if scp.process.poll() is None:
            scp.process.kill()
            scp.process.wait(timeout=10)


@pytest.fixture
def scp(start_scp: Any) -> RunningScp:
    return start_scp()


@pytest.fixture
def wire_witness(tmp_path: Path) -> Iterator[WireWitness]:
    witness = WireWitness(tmp_path / "dcmtk-storescp")
    yield witness
    witness.close()
