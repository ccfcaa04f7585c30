"""The rehearsal's port check: a live listener is busy, a closed server's TIME_WAIT is not.

The SuperLink restart test once failed in CI because a plain bind() also counts the
TIME_WAIT connections the killed SuperLink left behind (for a minute), which gRPC's own
listener, with SO_REUSEADDR, binds over.
"""

from __future__ import annotations

import socket
import time

from nina import facts
from nina.rehearse import ephemeral_floor, pick_ports, port_free


def _listener() -> tuple[socket.socket, int]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((facts.LOOPBACK, 0))
    srv.listen()
    return srv, srv.getsockname()[1]


def _plain_bind_works(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((facts.LOOPBACK, port))
        except OSError:
            return False
    return True


def test_a_live_listener_is_busy():
    srv, port = _listener()
    with srv:
        assert not port_free(port)
    assert port_free(port)


def test_time_wait_left_by_a_server_that_closed_first_is_free():
    srv, port = _listener()
    client = socket.create_connection((facts.LOOPBACK, port))
    accepted, _ = srv.accept()
    accepted.close()  # the server side closes first, as a killed SuperLink's kernel does
    time.sleep(0.1)
    client.close()
    srv.close()
    time.sleep(0.1)
    # The situation is real: the port is held in TIME_WAIT, so a plain bind still fails.
    assert not _plain_bind_works(port)
    assert port_free(port)


def _low_listener() -> tuple[socket.socket, int]:
    """A listener on a free port well below the ephemeral range (where the rehearsal's ports are)."""
    for port in range(21000, 22000):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            srv.bind((facts.LOOPBACK, port))
        except OSError:
            srv.close()
            continue
        srv.listen()
        return srv, port
    raise AssertionError("no free port in 21000-21999")


def test_busy_preferred_ports_fall_back_to_the_next_free_ones_below_the_ephemeral_range():
    srv, port = _low_listener()
    with srv:
        taken: set[int] = set()
        first = pick_ports((port, port + 1), taken)
        second = pick_ports((port, port + 1), taken)
    chosen = first + second
    assert port not in chosen and len(set(chosen)) == 4
    assert all(port < p < ephemeral_floor() for p in chosen) and max(chosen) < port + 50
    assert taken == set(chosen)


def test_free_preferred_ports_are_used_and_reserved():
    srv, port = _low_listener()
    srv.close()
    taken: set[int] = set()
    assert pick_ports((port,), taken) == [port]
    assert pick_ports((port,), taken) != [port]  # reserved for the first caller
