"""Every request body is bounded before it is read (issue 23, finding 4): on a real server on
127.0.0.1, a chunked body of many MB (no ``Content-Length`` to refuse it by) to each POST route
of the app is answered 413 in JSON as soon as it goes over the route's limit, and the server does
not read it whole: the client cannot get all of it onto the socket, and the server's memory (the
RSS of this process, which runs the server on a thread) does not grow by anything near its size.

Before the one BodyLimit middleware, ``POST /v1/review/claim`` read a 400 MB chunked body whole
(RSS 601 -> 1,241 MB)."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path

import pytest
from livehelp import ServerThread
from starlette.routing import Route

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.server.auth import required_scope

pytestmark = pytest.mark.corpus

STREAM, ADMIN, REVIEWER = "stream-secret", "admin-secret", "reviewer-secret"
#: the token whose principal holds each scope a route may declare (None: a route open to all).
HOLDER = {None: None, "stream": STREAM, "feedback": STREAM, "admin": ADMIN, "review": REVIEWER}
BODY = 48 * 1024 * 1024
CHUNK = 64 * 1024
#: the start of a multipart upload whose file part then goes on and on.
UPLOAD_HEAD = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'


def rss_bytes() -> int:
    """The resident set of this process (the server runs on a thread of it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def post_chunked(port: int, path: str, token: str | None, content_type: str, prefix: bytes) -> tuple[int, dict, int]:
    """POST ``BODY`` bytes of JSON-looking text to ``path`` in chunks, reading the socket between
    chunks so that an early answer is read as soon as it comes (the server may close the
    connection right after it: what is still unread then would be lost with the reset). Returns
    the status, the JSON body and how many body bytes went onto the socket."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    chunk = f"{CHUNK:x}\r\n".encode() + b"0," * (CHUNK // 2) + b"\r\n"
    received = b""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall((head + "\r\n").encode() + f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < BODY else [], [], 1.0)
            if readable:
                data = sock.recv(65536)
                received += data
                if not data or _complete(received):
                    break
            elif writable and not received:
                try:
                    sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += CHUNK
            elif sent >= BODY and not readable:
                sock.sendall(b"0\r\n\r\n")  # the server read it all: the test fails below
                sent += 1
    head_part, _, body = received.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    assert body, (path, received[:300], sent)
    return status, json.loads(body), sent


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_a_large_chunked_body_is_refused_before_it_is_read(engine, tmp_path):
    """Each POST route, with a caller that holds its scope (so the endpoint would read the body):
    413, ``{"error": "too_large"}``, far less than the body taken, the RSS not grown by it."""
    cfg = Config().with_overrides({"review.db": str(tmp_path / "reviews.db")})
    # the upload's own limit well under the body, so that it too must be refused early
    with ServerThread(
        engine, config=cfg, token=STREAM, admin_token=ADMIN, reviewer_token=REVIEWER, max_upload_bytes=4 * 1024 * 1024
    ) as srv:
        routes = [
            (r.path.replace("{id}", "x"), required_scope(r.endpoint))
            for r in srv.server.app.routes
            if isinstance(r, Route) and "POST" in (r.methods or ())
        ]
        assert any(path == "/v1/review/claim" for path, _ in routes)
        refused = []
        for path, scope in routes:
            before = rss_bytes()
            # the upload takes multipart (it refuses any other type before reading, which proves nothing)
            if path == "/v1/audio/transcriptions":
                kind, prefix = "multipart/form-data; boundary=b", UPLOAD_HEAD
            else:
                kind, prefix = "application/json", b"["
            status, doc, sent = post_chunked(srv.server.port, path, HOLDER[scope], kind, prefix)
            grown = rss_bytes() - before
            assert status == 413, (path, status, doc)
            if path == "/v1/audio/transcriptions":  # the OpenAI error shape
                assert doc["error"]["code"] == "file_too_large", doc
            else:
                assert doc["error"] == "too_large", (path, doc)
            assert sent < BODY / 2, (path, sent)  # the server stopped reading: the client could not send it
            assert grown < BODY / 4, (path, grown)
            refused.append(path)
        assert "/v1/review/claim" in refused and "/v1/feedback" in refused
