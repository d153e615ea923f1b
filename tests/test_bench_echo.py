"""``ksvc bench echo``'s C load generator against real servers on loopback: counts, and the failures it must catch.

The servers here are small blocking-socket servers in threads that read one
whole message at a time and answer through a ``reply`` function, so a test
can echo, corrupt one byte, replay an earlier message, stall or close at an
exact connection and message.
"""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ksvc_host.bench import echo, loadgen
from ksvc_host.bench.harness import Report

Reply = Callable[[int, int, bytes], bytes | None]
"""(connection index, message index, message) -> what to send back; ``None`` closes the connection."""


def _echo(conn: int, msg: int, data: bytes) -> bytes | None:
    return data


class Server:
    """A threaded TCP server on 127.0.0.1 that answers every *size*-byte message with ``reply``."""

    def __init__(self, size: int, reply: Reply = _echo) -> None:
        self.size, self.reply = size, reply
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        self.messages = 0
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        index = 0
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed by stop()
            t = threading.Thread(target=self._serve, args=(sock, index), daemon=True)
            t.start()
            self.threads.append(t)
            index += 1  # the generator connects one by one, so accept order is its connection index

    def _serve(self, sock: socket.socket, conn: int) -> None:
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            msg = 0
            while True:
                data = b""
                while len(data) < self.size:
                    try:
                        chunk = sock.recv(self.size - len(data))
                    except OSError:
                        return
                    if not chunk:
                        return
                    data += chunk
                out = self.reply(conn, msg, data)
                if out is None:
                    return
                try:
                    sock.sendall(out)
                except OSError:
                    return
                with self.lock:
                    self.messages += 1
                msg += 1

    def served(self, expected: int) -> int:
        """Messages answered, once *expected* are (or after 5 s): the count lags the last echo by a moment."""
        deadline = time.monotonic() + 5
        while self.messages < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.messages

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone does not
        except OSError:
            pass
        self.listener.close()
        self.acceptor.join(5)
        for t in self.threads:
            t.join(5)


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generator, built into a temporary cache (skipped, with the reason, when there is no compiler)."""
    if loadgen.find_compiler() is None:
        pytest.skip("no C compiler (cc, gcc, clang or sysconfig CC): the C load generator cannot be built")
    path, reason = loadgen.build(tmp_path_factory.mktemp("ksvc-cache"))
    assert path is not None, reason
    return path


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(size: int, reply: Reply = _echo) -> Server:
        servers.append(Server(size, reply))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _run(binary: Path, port: int, conns: int, msgs: int, size: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), str(port), str(conns), str(msgs), str(size), "1"], capture_output=True,
                          text=True, timeout=50)  # fmt: skip


@pytest.mark.timeout(60)
def test_source_compiles_cleanly_with_werror(tmp_path: Path) -> None:
    cc = loadgen.find_compiler()
    if cc is None:
        pytest.skip("no C compiler: the C load generator cannot be built")
    done = subprocess.run([*cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / "lg"),
                           str(loadgen.SOURCE)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(60)
def test_build_is_cached_by_source_hash(binary: Path) -> None:
    again, reason = loadgen.build(binary.parent)
    assert again == binary and reason == ""
    assert binary.name.startswith("loadgen-") and len(binary.name) == len("loadgen-") + 16


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("conns", "msgs", "size"), [(4, 100, 64), (3, 50, 5000)])
def test_counts_every_message(binary: Path, serve: Callable[..., Server], conns: int, msgs: int, size: int) -> None:
    server = serve(size)
    r = loadgen.run_c(binary, server.port, conns, msgs, size, seed=7)
    assert set(r) == {"msgs", "seconds", "msgs_per_s", "p50_us", "p99_us", "p999_us", "max_us", "mean_us", "cpu_s"}
    assert r["p99_us"] <= r["p999_us"] <= r["max_us"] and 0 < r["mean_us"] <= r["max_us"]
    assert r["msgs"] == conns * msgs == server.served(conns * msgs)
    assert r["seconds"] > 0 and r["msgs_per_s"] == pytest.approx(r["msgs"] / r["seconds"], rel=1e-3)
    assert 0 < r["p50_us"] <= r["p99_us"] and r["cpu_s"] >= 0


@pytest.mark.timeout(60)
def test_generate_gives_the_python_generators_keys(binary: Path, serve: Callable[..., Server],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    server = serve(64)
    monkeypatch.setattr(loadgen, "_built", (binary, ""))
    c = echo.generate(server.port, 2, 100, 64)
    py = echo.generate(server.port, 2, 100, 64, generator="python")
    assert set(py) == {"msgs_per_s", "p50_us", "p99_us", "generator_cpu", "generator"}
    assert set(c) == set(py) | {"max_us"}  # the slowest echo, which only the C generator records
    assert (c["generator"], py["generator"]) == ("c", "python")
    assert c["msgs_per_s"] > 0 and 0 <= c["generator_cpu"] and server.served(400) == 400


@pytest.mark.timeout(60)
def test_falls_back_to_python_and_says_so_once(serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve(64)
    monkeypatch.setattr(loadgen, "_built", (None, "no C compiler found (test)"))
    monkeypatch.setattr(loadgen, "_said", False)
    said: list[str] = []
    for _ in range(2):
        r = loadgen.generate(server.port, 2, 50, 64, say=said.append)
        assert r["generator"] == "python" and r["msgs_per_s"] > 0
    assert len(said) == 1 and "no C compiler found (test)" in said[0]
    assert loadgen.build(compiler=[]) == (None, "no C compiler found (looked for $CC, sysconfig CC, cc, gcc, clang)")


@pytest.mark.timeout(60)
def test_a_corrupted_byte_exits_2_naming_connection_and_message(binary: Path, serve: Callable[..., Server]) -> None:
    def corrupt(conn: int, msg: int, data: bytes) -> bytes:
        if (conn, msg) != (1, 5):
            return data
        return data[:10] + bytes([data[10] ^ 0x01]) + data[11:]

    server = serve(64, corrupt)
    done = _run(binary, server.port, 3, 20, 64)
    assert done.returncode == loadgen.EXIT_MISMATCH, done.stderr
    assert "connection 1 message 5: echo differs at byte 10" in done.stderr
    with pytest.raises(loadgen.EchoMismatch, match="connection 1 message 5"):
        loadgen.run_c(binary, serve(64, corrupt).port, 3, 20, 64)


@pytest.mark.timeout(60)
def test_a_stale_echo_does_not_pass(binary: Path, serve: Callable[..., Server]) -> None:
    # Answer message 4 of connection 0 with message 3: the same payload under the previous counter.
    last: dict[int, bytes] = {}

    def stale(conn: int, msg: int, data: bytes) -> bytes:
        out = last[conn] if (conn, msg) == (0, 4) else data
        last[conn] = data
        return out

    done = _run(binary, serve(64, stale).port, 2, 10, 64)
    assert done.returncode == loadgen.EXIT_MISMATCH and "connection 0 message 4" in done.stderr, done.stderr


@pytest.mark.timeout(60)
def test_extra_echoed_bytes_exit_2(binary: Path, serve: Callable[..., Server]) -> None:
    done = _run(binary, serve(64, lambda c, m, d: d + d[:1] if m == 2 else d).port, 1, 10, 64)
    assert done.returncode == loadgen.EXIT_MISMATCH, done.stderr
    assert "connection 0 message" in done.stderr


@pytest.mark.timeout(60)
def test_a_server_closing_early_exits_3(binary: Path, serve: Callable[..., Server]) -> None:
    def close(conn: int, msg: int, data: bytes) -> bytes | None:
        return None if (conn, msg) == (0, 3) else data

    done = _run(binary, serve(64, close).port, 2, 20, 64)
    assert done.returncode == loadgen.EXIT_SERVER, done.stderr
    assert "connection 0 message 3" in done.stderr
    with pytest.raises(ConnectionError, match="connection 0 message 3"):
        loadgen.run_c(binary, serve(64, close).port, 2, 20, 64)


@pytest.mark.timeout(60)
def test_a_stalled_server_exits_3_after_10_s(binary: Path, serve: Callable[..., Server]) -> None:
    server = serve(64, lambda c, m, d: b"" if (c, m) == (1, 2) else d)  # swallows one message, keeps the socket
    with pytest.raises(TimeoutError, match="no progress for 10 s.*connection 1 message 2"):
        loadgen.run_c(binary, server.port, 2, 20, 64)


def test_workloads_and_targets_name_what_the_targets_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    assert echo.WORKLOADS["medium"] == (50, 2000, 64) and echo.WORKLOADS["storm"] == (200, 1000, 64)
    assert {"light", "heavy", "bulk"} <= set(echo.WORKLOADS)
    monkeypatch.setattr(echo, "KINDS", ())
    report = Report(out=io.StringIO())
    echo.run(report, generator="python")
    keys = {(t.numerator, t.denominator, t.metric) for t in report.targets}
    for name in ("medium", "storm"):
        for style in ("protocol", "streams"):
            for metric in ("ops_per_s", "p99_us"):
                assert (f"echo/{name}/ksvc {style} (default)", f"echo/{name}/uvloop {style}", metric) in keys
    assert ("echo/storm/ksvc protocol (server)", "echo/storm/ksvc protocol (default)", "ops_per_s") in keys
    with pytest.raises(ValueError, match="generator"):
        echo.run(report, generator="rust")


@pytest.mark.timeout(120)
def test_echo_run_records_the_generator(binary: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One real server child process, every workload at 1/100 of its messages.
    monkeypatch.setattr(echo, "KINDS", ("asyncio protocol",))
    monkeypatch.setattr(loadgen, "_built", (binary, ""))
    report = Report(out=io.StringIO())
    echo.run(report, ops=10)
    assert [m.case for m in report.measurements] == list(echo.WORKLOADS)
    for m in report.measurements:
        assert m.status == "ok", m.note
        conns, msgs, _size = echo.WORKLOADS[m.case]
        assert m.extra["generator"] == "c" and m.ops == conns * max(1, msgs // 100)
        # The target workloads are measured in every round and reported as the median, with the spread.
        assert m.extra.get("runs") == (echo.ROUNDS if m.case in echo.TARGET_WORKLOADS else None)
        if m.case in echo.TARGET_WORKLOADS:
            low, high = (float(x.replace(",", "")) for x in m.extra["spread"].split()[0].split("-"))
            assert low <= (m.ops_per_s or 0) <= high
