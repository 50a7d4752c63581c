"""protocol.wait_readable: the wait of the upper layer before the hand-over and of a commitment association's loop."""

from __future__ import annotations

import resource
import socket

import pytest
from dicom_store_scp import protocol


@pytest.fixture
def descriptors_past_select():
    """A thousand descriptors held open, so the next sockets are numbered past select()'s 1,023."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.skip(f"the descriptor limit ({hard}) is below what the test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2200), hard))
    held = [socket.socket() for _ in range(1100)]
    yield
    for sock in held:
        sock.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_bytes_and_the_bell_are_told_apart_on_descriptors_past_1023(descriptors_past_select):
    peer, ours = socket.socketpair()
    bell, rope = socket.socketpair()
    bell.setblocking(False)  # as every bell the SCP rings is
    with peer, ours, bell, rope:
        assert ours.fileno() > 1023 and bell.fileno() > 1023
        assert protocol.wait_readable(ours, bell, 0.05) is False  # nothing yet: the timeout
        rope.send(b"\0\0")
        assert protocol.wait_readable(ours, bell, 1) is False  # the bell, drained
        assert protocol.wait_readable(ours, bell, 0.05) is False
        peer.send(b"x")
        assert protocol.wait_readable(ours, bell, 1) is True
