"""Real servers for the remote-storage tests, started by the tests on free loopback ports.

`RangeHTTPServer`: a static file server (http.server) that honours single `Range: bytes=a-b` requests with
206 answers, answers HEAD, counts every request (method, path, range, bytes sent), and can be told to
fail the next N GETs with 503 to exercise retries.

`moto_s3`: moto's standalone S3 server (ThreadedMotoServer) with credentials in the environment.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RequestLog:
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, range header)
    bytes_sent: int = 0
    fail_next: int = 0  # GETs still to answer 503
    delay_s: float = 0.0  # added before answering each ranged GET (a stand-in for an object store's latency)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_sent = 0
            self.failed = 0

    def gets(self, suffix: str = "") -> list[tuple[str, str, str]]:
        with self.lock:
            return [r for r in self.requests if r[0] == "GET" and r[1].endswith(suffix)]


class _Handler(SimpleHTTPRequestHandler):
    log: RequestLog

    def log_message(self, *args) -> None:  # quiet
        pass

    def _record(self, method: str) -> None:
        with self.log.lock:
            self.log.requests.append((method, self.path, self.headers.get("Range", "")))

    def do_HEAD(self) -> None:
        self._record("HEAD")
        super().do_HEAD()

    def do_GET(self) -> None:
        self._record("GET")
        with self.log.lock:
            fail = self.log.fail_next > 0
            if fail:
                self.log.fail_next -= 1
                self.log.failed += 1
        if fail:
            self.send_error(503, "injected failure")
            return
        path = Path(self.translate_path(self.path))
        header = self.headers.get("Range")
        if header and self.log.delay_s:
            time.sleep(self.log.delay_s)
        if not header or not path.is_file():
            return super().do_GET()
        match = _RANGE.match(header.strip())
        size = path.stat().st_size
        if not match or (not match.group(1) and not match.group(2)):
            self.send_error(416, "unsupported range")
            return
        if match.group(1):
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        else:  # suffix range: the last N bytes
            start, end = max(0, size - int(match.group(2))), size - 1
        if start >= size or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        with self.log.lock:
            self.log.bytes_sent += len(body)


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops concurrent connections (the client's SYN is retried 1 s later)
    request_queue_size = 256
    daemon_threads = True


class RangeHTTPServer:
    """Serves `root` at http://127.0.0.1:<free port>/ until stopped (a context manager)."""

    def __init__(self, root: str | Path):
        self.log = RequestLog()
        handler = type("Handler", (_Handler,), {"log": self.log})
        self.server = _Server(("127.0.0.1", free_port()), partial(handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "RangeHTTPServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_SESSION_TOKEN": "testing"}


@contextlib.contextmanager
def moto_s3(monkeypatch=None):
    """moto's S3 server on a free port; yields its endpoint URL with credentials and endpoint in os.environ
    (AWS_ENDPOINT_URL, which s3fs/botocore read), restored afterwards."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _forget_s3_filesystems()
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
        # s3fs caches its file systems by their arguments, not by the endpoint they read from the environment:
        # one built inside this block would otherwise serve the next test, pointing at this stopped server.
        _forget_s3_filesystems()


def _forget_s3_filesystems() -> None:
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


def upload_folder(local: Path, url: str) -> None:
    """Copy a local folder's files (recursively) to an fsspec URL."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{root.rstrip('/')}/{path.relative_to(local).as_posix()}")


def has_module(module: str) -> bool:
    """Whether an optional extra's module imports here."""
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def has_s3() -> bool:
    """s3fs and moto's server (with Flask): what the S3 tests need (requirements-extras.txt)."""
    return has_module("s3fs") and has_module("moto.server") and has_module("flask")


S3_MISSING = "s3fs and moto are not installed (pip install -r requirements-extras.txt)"
