"""The webhook receiver faces whoever can reach its port: the real `serve` on loopback, spoken
to with raw sockets, never reads a body it has not sized, drops silent clients and holds a
bounded number of connections."""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from controller.metrics import MAX_WEBHOOK_BODY, Metrics, serve
from tests.waiting import eventually

SECRET = "hook-secret"
BODY = b'{"ref": "refs/heads/main"}'
SIGNATURE = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
PATIENT = 30.0  # server timeout where a test must not depend on it
ANSWER = 10.0  # a reply that comes before this came without waiting for the server's timeout
MARGIN = 3.0


@dataclass
class Receiver:
    port: int
    woken: threading.Event

    def connect(self, wait: float = ANSWER) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=wait)


@contextmanager
def receiving(timeout: float = PATIENT, max_connections: int = 64) -> Iterator[Receiver]:
    woken = threading.Event()
    server = serve(Metrics(), "127.0.0.1:0", 30, on_push=woken.set, webhook_secret=SECRET,
                   timeout=timeout, max_connections=max_connections)
    try:
        yield Receiver(server.server_address[1], woken)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """One server for the refusals: none of them may wake the controller."""
    with receiving() as running:
        yield running


def request(headers: dict[str, str | bytes], body: bytes = b"") -> bytes:
    lines = [b"POST /webhook HTTP/1.1", b"Host: 127.0.0.1"]
    for name, value in headers.items():
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes)
                                               else value.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a TimeoutError if it does not."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def exchange(receiver: Receiver, raw: bytes) -> bytes:
    with receiver.connect() as sock:
        sock.sendall(raw)
        return read_to_eof(sock)


@pytest.mark.parametrize(("length", "code"), [
    pytest.param({"Content-Length": "-1"}, 400, id="negative"),
    pytest.param({"Content-Length": "abc"}, 400, id="non-numeric"),
    pytest.param({"Content-Length": ""}, 400, id="empty"),
    pytest.param({"Content-Length": "+26"}, 400, id="signed"),
    pytest.param({"Content-Length": "0x1a"}, 400, id="hex"),
    pytest.param({"Content-Length": b"\xd9\xa2\xd9\xa6"}, 400, id="arabic-digits"),
    pytest.param({"Content-Length": str(MAX_WEBHOOK_BODY + 1)}, 413, id="too-large"),
    pytest.param({"Content-Length": "9" * 5000}, 413, id="huge"),
    pytest.param({}, 411, id="missing"),
    pytest.param({"Transfer-Encoding": "chunked"}, 411, id="chunked"),
    pytest.param({"Transfer-Encoding": "chunked", "Content-Length": "26"}, 411,
                 id="chunked-and-length"),
])
def test_a_bad_length_is_refused_without_reading_the_body(
        receiver: Receiver, length: dict[str, str | bytes], code: int) -> None:
    # No body follows: a server that tried to read one would wait for the client, which waits
    # for the answer, until the server's timeout (PATIENT) long after ANSWER.
    headers = {"X-Gitea-Event": "push", "X-Gitea-Signature": SIGNATURE, **length}
    assert status(exchange(receiver, request(headers))) == code
    assert not receiver.woken.is_set()


def test_two_lengths_are_refused(receiver: Receiver) -> None:
    raw = request({"X-Gitea-Signature": SIGNATURE}).replace(
        b"\r\n\r\n", b"\r\nContent-Length: 26\r\nContent-Length: 0\r\n\r\n", 1) + BODY
    assert status(exchange(receiver, raw)) == 400


def test_a_negative_length_with_megabytes_behind_it_is_answered_and_closed(
        receiver: Receiver) -> None:
    with receiver.connect() as sock:
        sock.sendall(request({"X-Gitea-Signature": SIGNATURE, "Content-Length": "-1"}))
        try:
            for _ in range(64):  # 4 MiB the server must not take in
                sock.sendall(b"x" * 65536)
        except OSError:
            pass  # the server closed; the kernel resets a connection with unread data
        # The answer left before any reset, so it waits in our receive buffer either way.
        assert sock.recv(65536).startswith(b"HTTP/1.0 400 ")


def test_a_non_ascii_signature_is_forged_not_an_error(
        receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for signature in ("é" * 64).encode(), b"\xff" * 64, b"sha256=" + "é".encode() * 64:
        for header in "X-Gitea-Signature", "X-Hub-Signature-256", "X-Gitlab-Token":
            headers = {"X-Gitea-Event": "push", header: signature,
                       "Content-Length": str(len(BODY))}
            assert status(exchange(receiver, request(headers, BODY))) == 401
    assert not receiver.woken.is_set()
    assert "é" not in caplog.text
    assert SECRET not in caplog.text


def test_a_genuine_signed_push_wakes_the_controller(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"X-Gitea-Event": "push", "X-Gitea-Signature": SIGNATURE,
               "Content-Length": str(len(BODY))}
    with receiving() as receiver:
        assert status(exchange(receiver, request(headers, BODY))) == 202
        assert receiver.woken.is_set()
    assert SIGNATURE not in caplog.text
    assert SECRET not in caplog.text


def test_a_body_of_the_maximum_size_is_read() -> None:
    body = b" " * MAX_WEBHOOK_BODY
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Gitea-Event": "push", "X-Gitea-Signature": signature,
               "Content-Length": str(len(body))}
    with receiving() as receiver:
        assert status(exchange(receiver, request(headers, body))) == 202


def test_a_silent_client_is_dropped_after_the_timeout() -> None:
    with receiving(timeout=1) as receiver, receiver.connect(wait=1 + MARGIN) as sock:
        assert read_to_eof(sock) == b""


def test_a_client_stalled_mid_body_is_dropped_after_the_timeout() -> None:
    headers = {"X-Gitea-Signature": SIGNATURE, "Content-Length": str(len(BODY))}
    with receiving(timeout=1) as receiver, receiver.connect(wait=1 + MARGIN) as sock:
        sock.sendall(request(headers, BODY[:10]))
        assert read_to_eof(sock) == b""
        assert not receiver.woken.is_set()


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def healthz(receiver: Receiver) -> bytes:
    with receiver.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        return read_to_eof(sock)


def test_connections_beyond_the_cap_are_turned_away_until_slots_free() -> None:
    cap, timeout = 4, 3.0
    with receiving(timeout=timeout, max_connections=cap) as receiver:
        held = [receiver.connect(wait=timeout + MARGIN) for _ in range(cap)]
        try:
            # Connections are accepted in order, so the idle ones hold every slot by now.
            turned_away = healthz(receiver)
            assert turned_away.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
            assert b"Content-Length: 0\r\n" in turned_away  # the cap's, not the handler's
            assert all(still_open(sock) for sock in held)
            for sock in held:
                assert read_to_eof(sock) == b""  # dropped by the timeout, slots freed
        finally:
            for sock in held:
                sock.close()
        # A slot is released just after its socket closes: poll briefly for the last one.
        answered = eventually(lambda: status(healthz(receiver)) == 200 or None,
                              "a free slot after the idle connections timed out", timeout=5,
                              every=0.05)
        assert answered
