"""Fixtures: the real broker binary (`handler dev`), a recording proxy in front
of it that can answer 503 first, and a server that records Authorization.

Every wait is bounded; the broker is stopped at the end of the session."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import quote

import pytest
import requests

PACKAGE_DIR = Path(__file__).resolve().parents[1]
HANDLER_BIN = os.environ.get("HANDLER_BIN") or str(PACKAGE_DIR / ".." / ".." / "target" / "debug" / "handler")

GRAPH = "https://graph.microsoft.com/.default"
OTHER = "https://other.example/.default"
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _new_key(*args: str) -> Dict[str, object]:
    """`handler keys new ...` -> {"key": "tbk_...", "entry": {...}}."""
    out = subprocess.run(
        [HANDLER_BIN, "keys", "new", *args], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    key = entry = None
    for line in out.splitlines():
        if line.startswith("key:"):
            key = line.split(":", 1)[1].strip()
        elif line.startswith("entry:"):
            entry = json.loads(line.split(":", 1)[1])
    assert key and key.startswith("tbk_") and entry, "unexpected `handler keys new` output"
    return {"key": key, "entry": entry}


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class Broker:
    def __init__(self, url: str, keys: Dict[str, str]) -> None:
        self.url = url
        self.keys = keys

    def get(self, scope: str, key: str, **params: object) -> requests.Response:
        """Asks the broker directly (not through the credential)."""
        return requests.get(
            "{}/api/tokens/{}".format(self.url, quote(scope, safe="")),
            params=params,
            headers={"Authorization": "Bearer " + key},
            timeout=10,
        )


@pytest.fixture(scope="session")
def broker():
    if not os.access(HANDLER_BIN, os.X_OK):
        pytest.fail("no broker binary at {} (build it: cd /work/main && cargo build, or set HANDLER_BIN)".format(HANDLER_BIN))
    made = {
        # reads every Graph scope, for the agent and any user
        "reader": _new_key("--name", "reader", "--scope", "https://graph.microsoft.com/*", "--user", "*"),
        # reads the Graph default scope only, agent tokens only
        "narrow": _new_key("--name", "narrow", "--scope", GRAPH),
        "admin": _new_key("--name", "admin", "--admin"),
    }
    env = dict(os.environ)
    env["TOKEN_API_KEYS"] = json.dumps([m["entry"] for m in made.values()])
    env.setdefault("RUST_LOG", "info")
    log = tempfile.NamedTemporaryFile(prefix="broker-", suffix=".log", delete=False)
    proc = None
    try:
        for _attempt in range(3):  # a free port can be taken between probe and bind
            port = _free_port()
            proc = subprocess.Popen(
                [HANDLER_BIN, "dev", "--bind", "127.0.0.1", "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
            url = "http://127.0.0.1:{}".format(port)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if requests.get(url + "/", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.1)
            else:
                if proc.poll() is None:
                    pytest.fail("broker did not answer GET / within {} s; log:\n{}".format(START_TIMEOUT, _tail(log.name)))
                continue  # exited (port taken?): try another port
            break
        else:
            pytest.fail("broker exited at start; log:\n{}".format(_tail(log.name)))
        yield Broker(url, {name: str(m["key"]) for name, m in made.items()})
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()
        os.unlink(log.name)


# -- a recording proxy in front of the broker ---------------------------------


class _Server:
    """A threaded HTTP server on a free loopback port, stopped by close()."""

    def __init__(self, handler_cls) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:{}".format(self.httpd.server_address[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        proxy: RecordingProxy = self.server.owner  # type: ignore[attr-defined]
        with proxy.lock:
            proxy.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
            fail = proxy.fail_remaining > 0
            if fail:
                proxy.fail_remaining -= 1
        if fail:
            body = json.dumps({"error": "Service Unavailable", "message": "test proxy: try again later"}).encode()
            self.send_response(proxy.fail_status)
            self.send_header("Content-Type", "application/json")
            if proxy.retry_after is not None:
                self.send_header("Retry-After", proxy.retry_after)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=10)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept", "user-agent")}
            conn.request("GET", self.path, headers=headers)
            upstream = conn.getresponse()
            body = upstream.read()
            self.send_response(upstream.status, upstream.reason)
            for name in ("Content-Type", "Retry-After", "WWW-Authenticate", "x-request-id"):
                value = upstream.getheader(name)
                if value is not None:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            conn.close()


class RecordingProxy(_Server):
    """Forwards GETs to the broker and records them; answers the first
    `fail_first` requests itself with `fail_status` and `Retry-After`."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.split("://", 1)[1].rsplit(":", 1)
        self.upstream_host, self.upstream_port = host, int(port)
        self.lock = threading.Lock()
        self.requests: List[Dict[str, Optional[str]]] = []
        self.fail_remaining = 0
        self.fail_status = 503
        self.retry_after: Optional[str] = "1"
        super().__init__(_ProxyHandler)

    def fail_first(self, n: int, status: int = 503, retry_after: Optional[str] = "1") -> None:
        with self.lock:
            self.fail_remaining, self.fail_status, self.retry_after = n, status, retry_after

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)


@pytest.fixture
def proxy(broker):
    p = RecordingProxy(broker.url)
    try:
        yield p
    finally:
        p.close()


# -- a server that records the Authorization header it gets -----------------


class _RecorderHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        owner: AuthRecorder = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            owner.authorizations.append(self.headers.get("Authorization"))
        body = b'{"value": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class AuthRecorder(_Server):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.authorizations: List[Optional[str]] = []
        super().__init__(_RecorderHandler)


@pytest.fixture
def recorder():
    r = AuthRecorder()
    try:
        yield r
    finally:
        r.close()
