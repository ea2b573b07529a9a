"""Hand-over of accepted connections between dicom workers (appliance/dicom/balance.py), in-process.

The station-level check (held associations spread 6:6 over two workers, TLS included) is in
tests/test_dicom_workers.py; these pin the rules: only to a worker serving fewer connections, never
lost when the target is gone, and what arrives in an inbox from anyone else is dropped.
"""

from __future__ import annotations

import array
import json
import os
import queue
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

from appliance.dicom.balance import Balancer, LoadTable, inbox_address


class _Worker:
    """A Balancer with a settable own count that queues what is handed to it."""

    def __init__(self, data: Path, worker: int, workers: int = 2) -> None:
        self.count = 0
        self.received: queue.Queue[tuple[str, socket.socket, Any]] = queue.Queue()
        self.open_kinds = {"plain", "tls"}
        self.serving = threading.Event()  # cleared: a connection handed in waits before it is served
        self.serving.set()
        self.balancer = Balancer(data, worker, lambda: workers, lambda: self.count, self._serve)

    def _serve(self, kind: str, sock: socket.socket, address: Any) -> bool:
        if kind not in self.open_kinds:
            return False
        self.serving.wait(30)
        self.count += 1  # as the server's connection_started: counted, and no longer on its way
        self.balancer.publish(taking=True)
        self.received.put((kind, sock, address))
        return True


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


@pytest.fixture
def two(tmp_path: Path) -> Any:
    one, other = _Worker(tmp_path, 1), _Worker(tmp_path, 2)
    one.balancer.start()
    other.balancer.start()
    yield one, other
    one.balancer.close()
    other.balancer.close()


def test_a_busier_worker_hands_the_connection_over_and_it_still_works(two: Any) -> None:
    one, other = two
    one.count = 1  # worker 1 serves one association, worker 2 none
    client, accepted = _connected_pair()
    try:
        assert one.balancer.hand_over("tls", accepted, ("127.0.0.1", 4242))
        accepted.close()  # what the listener does: its own descriptor goes, the connection stays
        kind, sock, address = other.received.get(timeout=5)
        assert (kind, address) == ("tls", ("127.0.0.1", 4242))
        client.sendall(b"A-ASSOCIATE-RQ")
        assert sock.recv(100) == b"A-ASSOCIATE-RQ"
        sock.sendall(b"ok")
        assert client.recv(10) == b"ok"
        sock.close()
        assert LoadTable(one.balancer.data_dir).read(2)[1] == 1  # served by worker 2 now
    finally:
        client.close()


def test_a_connection_on_its_way_counts_for_the_receiver_whatever_it_publishes(two: Any) -> None:
    """Handed over and not yet taken out of the receiver's inbox, a connection is the receiver's
    already: the receiver's own exact count, published meanwhile (it accepted one itself), must not
    hide it, or the next decision sends it another (a burst of four went 3:1 that way)."""
    one, other = two
    one.count = 1
    other.serving.clear()
    client, accepted = _connected_pair()
    try:
        assert one.balancer.hand_over("plain", accepted, ("127.0.0.1", 4242))
        accepted.close()
        other.balancer.publish()  # its own count, 0: the handed connection is not in it yet
        assert LoadTable(one.balancer.data_dir).read(2) == [0, 1]  # (worker 1 never published its 1)
        other.serving.set()
        _kind, sock, _address = other.received.get(timeout=5)
        sock.close()
        wait_for(lambda: LoadTable(one.balancer.data_dir).pending(2) == 0, 5, "taken out of the inbox")
        assert LoadTable(one.balancer.data_dir).read(2) == [0, 1]
    finally:
        client.close()


def test_no_hand_over_to_a_worker_that_is_as_busy(two: Any) -> None:
    one, other = two
    one.count = other.count = 2
    other.balancer.publish()
    client, accepted = _connected_pair()
    try:
        assert not one.balancer.hand_over("plain", accepted, ("127.0.0.1", 1))
        one.count = 3  # now worker 1 serves more than worker 2 published
        assert one.balancer.hand_over("plain", accepted, ("127.0.0.1", 1))
        other.received.get(timeout=5)[1].close()
    finally:
        client.close()
        accepted.close()


def test_a_stopped_worker_is_skipped_and_the_connection_served_where_it_landed(tmp_path: Path) -> None:
    one = _Worker(tmp_path, 1)
    one.balancer.start()
    try:
        one.count = 5  # worker 2's slot says 0, but nothing listens at its inbox
        client, accepted = _connected_pair()
        assert not one.balancer.hand_over("plain", accepted, ("127.0.0.1", 1))
        accepted.sendall(b"still mine")
        assert client.recv(20) == b"still mine"
        client.close()
        accepted.close()
    finally:
        one.balancer.close()


def test_a_listener_that_is_not_open_there_closes_the_connection_cleanly(two: Any) -> None:
    one, other = two
    other.open_kinds = {"plain"}  # no TLS listener in worker 2
    one.count = 1
    client, accepted = _connected_pair()
    try:
        client.settimeout(5)
        assert one.balancer.hand_over("tls", accepted, ("127.0.0.1", 1))
        accepted.close()
        assert client.recv(10) == b""  # closed, not left hanging
    finally:
        client.close()


def test_messages_without_exactly_one_descriptor_or_with_bad_json_are_dropped(two: Any, tmp_path: Path) -> None:
    _one, other = two
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = inbox_address(tmp_path, 2)
    try:
        sender.sendto(json.dumps({"kind": "plain", "address": ["x", 1]}).encode(), address)  # no descriptor
        client, accepted = _connected_pair()
        sender.sendmsg([b"not json"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [accepted.fileno()]))],
                       0, address)
        accepted.close()
        client.settimeout(5)
        assert client.recv(10) == b""  # the descriptor was closed by the receiver
        client.close()
        assert other.received.empty()
    finally:
        sender.close()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to send as another user")
def test_a_descriptor_from_another_user_is_dropped(two: Any, tmp_path: Path) -> None:
    """The inbox has no file permissions (abstract namespace), so the sender's uid is checked."""
    _one, other = two
    client, accepted = _connected_pair()
    pid = os.fork()
    if pid == 0:  # child: become nobody, then send the descriptor
        try:
            os.setuid(65534)
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.sendmsg([json.dumps({"kind": "plain", "address": ["127.0.0.1", 1]}).encode()],
                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [accepted.fileno()]))],
                           0, inbox_address(tmp_path, 2))
            os._exit(0)
        except BaseException:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
    accepted.close()
    client.settimeout(5)
    assert client.recv(10) == b""  # the receiver closed it instead of serving it
    client.close()
    assert other.received.empty()


def test_two_stations_on_one_machine_have_different_inboxes(tmp_path: Path) -> None:
    assert inbox_address(tmp_path / "a", 1) != inbox_address(tmp_path / "b", 1)
    assert inbox_address(tmp_path / "a", 1) != inbox_address(tmp_path / "a", 2)
    assert inbox_address(tmp_path / "a", 1).startswith("\0")


def test_restart_zeroes_the_workers_count(tmp_path: Path) -> None:
    table = LoadTable(tmp_path)
    table.set(2, 7)
    worker = _Worker(tmp_path, 2)
    worker.balancer.start()
    try:
        assert table.read(2) == [0, 0]
    finally:
        worker.balancer.close()
        table.close()
