"""The supervisor's readiness and liveness logic (devstack.process/services), on small local fake servers: a
Python child that answers on a TCP port after a delay, or dies with a message."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from devstack import process as process_module
from devstack.process import ServiceError
from devstack.process import cmdline_matches
from devstack.process import free_port
from devstack.process import group_members
from devstack.process import pid_alive
from devstack.process import port_taken
from devstack.services import ProcessService

MARKER = "coltsfoot-fake-server"

# argv: -c MARKER PORT DELAY. Says it is warming up, answers on PORT after DELAY seconds, serves forever.
SLOW_SERVER = """
import socket, sys, time
print("warming up", flush=True)
time.sleep(float(sys.argv[3]))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[2])))
server.listen()
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.close()
"""

# Dies during its start, the way a service with a bad config does.
DYING_SERVER = """
import sys, time
print("reading config", flush=True)
time.sleep(float(sys.argv[3]))
print("FATAL: bad value for listen_port", file=sys.stderr, flush=True)
sys.exit(3)
"""


# Like granian or gunicorn: the leader binds, forks workers that inherit the listening socket, and waits.
PREFORK_SERVER = """
import os, socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[2])))
server.listen()
for _ in range(3):
    if os.fork() == 0:
        while True:
            conn, _ = server.accept()
            conn.close()
print("listening", flush=True)
while True:
    time.sleep(1)
"""


class FakeServer(ProcessService):
    name = "fake"
    marker = (MARKER,)
    start_timeout = 20.0
    ready_what = "a TCP answer"

    def __init__(self, directory: Path, script: str, *, port: int, delay: float = 0.0) -> None:
        super().__init__(directory)
        self.script = script
        self.port = port
        self.delay = delay
        self.probes = 0

    def argv(self) -> list[str]:
        return [sys.executable, "-c", self.script, MARKER, str(self.port), str(self.delay)]

    def probe(self) -> str | None:
        self.probes += 1
        return None if port_taken("127.0.0.1", self.port) else f"nothing on port {self.port}"


@pytest.fixture
def servers(tmp_path: Path):
    made: list[FakeServer] = []

    def make(script: str, **kwargs: float) -> FakeServer:
        server = FakeServer(tmp_path, script, port=free_port(), **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


def test_a_slow_service_is_waited_for_until_it_answers(servers):
    server = servers(SLOW_SERVER, delay=2.5)
    started = time.monotonic()

    server.start()

    assert time.monotonic() - started >= 2.4
    assert port_taken("127.0.0.1", server.port)
    assert server.probes > 1  # it was not ready at first and was asked again
    assert server.pid is not None
    assert server.pid_path.read_text().strip() == str(server.pid)


def test_a_service_that_dies_while_starting_is_reported_at_once_with_its_log_tail(servers):
    server = servers(DYING_SERVER, delay=0.5)
    started = time.monotonic()

    with pytest.raises(ServiceError) as failure:
        server.start()

    message = str(failure.value)
    assert time.monotonic() - started < 10  # not after the 20 s deadline
    assert "fake exited with status 3 while starting (waiting for a TCP answer" in message
    assert "FATAL: bad value for listen_port" in message
    assert "reading config" in message
    assert str(server.log_path) in message


def test_a_service_that_never_answers_fails_at_the_deadline_with_its_log_tail(servers):
    server = servers(SLOW_SERVER, delay=60)
    server.start_timeout = 1.0

    with pytest.raises(ServiceError, match=r"fake: no a TCP answer within 1s \(last: nothing on port \d+\)") as failure:
        server.start()

    assert "warming up" in str(failure.value)


def test_failed_probes_and_unreadable_cmdlines_do_not_kill_a_live_start(servers):
    """The bash supervisor's race: a Redis that was running and answering was declared dead because one read of
    /proc/<pid>/cmdline came back without its name. Liveness during a start is the child's exit status only."""
    server = servers(SLOW_SERVER, delay=0.5)
    answers = iter([True, False, True, False, False])
    real_probe = server.probe

    def flaky_probe() -> str | None:
        # Connection refused now and then even once the port is open, as under load.
        if next(answers, True) and real_probe() is None:
            return None if server.probes > 6 else "connection reset"
        return "connection refused"

    server.probe = flaky_probe
    with mock.patch.object(process_module, "read_cmdline", autospec=True, return_value=None):
        server.start()

    assert server.process.running


def test_a_second_up_adopts_the_running_process_instead_of_starting_another(servers, tmp_path):
    first = servers(SLOW_SERVER)
    first.start()
    pid = first.pid

    # What the next `make up` does: new objects over the same directories.
    second = FakeServer(tmp_path, SLOW_SERVER, port=first.port)
    assert second.ensure() is False
    assert second.pid == pid

    second.stop()
    assert not pid_alive(pid)
    assert not second.pid_path.exists()
    third = FakeServer(tmp_path, SLOW_SERVER, port=first.port)
    assert third.adopt() is False


def test_a_pid_file_naming_someone_elses_process_is_not_adopted(tmp_path):
    """A pid recycled by an unrelated program is never taken for (or signalled as) ours."""
    server = FakeServer(tmp_path, SLOW_SERVER, port=free_port())
    server.pid_path.write_text(f"{os.getpid()}\n")  # this pytest process: alive, not the marker

    assert server.adopt() is False
    assert not server.pid_path.exists()


def test_cmdline_check_retries_a_partial_read():
    """A process rewriting its title can give one empty or partial read; the next one counts."""
    reads = iter([None, "", "/usr/bin/redis-server 127.0.0.1:6390"])
    with (
        mock.patch.object(process_module, "read_cmdline", autospec=True, side_effect=lambda pid: next(reads)),
        mock.patch.object(process_module, "pid_alive", autospec=True, return_value=True),
    ):
        assert cmdline_matches(12345, ("redis-server",), interval=0.0)
    with (
        mock.patch.object(process_module, "read_cmdline", autospec=True, return_value="/usr/bin/vim notes.txt"),
        mock.patch.object(process_module, "pid_alive", autospec=True, return_value=True),
    ):
        assert not cmdline_matches(12345, ("redis-server",), interval=0.0)


def test_port_taken_sees_a_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_taken("127.0.0.1", port)
    assert not port_taken("127.0.0.1", port)


def test_a_start_on_a_taken_port_names_the_variable_that_moves_it(servers):
    server = servers(SLOW_SERVER)
    server.port_variable = "COLTSFOOT_FAKE_PORT"
    server.listens = lambda: [("127.0.0.1", server.port)]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", server.port))
        listener.listen()
        with pytest.raises(ServiceError, match=r"already taken .*; free it or set COLTSFOOT_FAKE_PORT"):
            server.start()
    assert server.pid is None


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_killed_or_stopped_prefork_service_starts_again_on_its_own_port(servers, how):
    server = servers(PREFORK_SERVER)
    server.listens = lambda: [("127.0.0.1", server.port)]
    for _ in range(3):
        server.start()
        group = server.pid
        assert group is not None
        # The leader and its three workers: it answers on its port before its last fork, so give them a moment.
        deadline = time.monotonic() + 10
        while len(group_members(group)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(group_members(group)) == 4

        getattr(server, how)()

        assert group_members(group) == []
        assert not port_taken("127.0.0.1", server.port)
