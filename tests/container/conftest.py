"""Fixtures: a real SCP process per test (see support/scp.py)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.moto import MotoServer, empty_bucket
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


# -- S3 over real HTTP (see support/moto.py) ------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto_server.log")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer, request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """A fresh bucket on the shared moto_server, emptied and deleted after the test (moto keeps it in RAM)."""
    client = moto_server.client()
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    empty_bucket(client, bucket)
    client.delete_bucket(Bucket=bucket)
