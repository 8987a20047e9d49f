"""``--subscriptions N``: dicomhub delivering webhooks while it is measured. Before the
workloads, N subscriptions are made on the server: N-1 to a live receiver in this process (a
tiny HTTP server answering 200 to every event) and one to a dead endpoint (a loopback port
nothing listens on: refused connections, retried with backoff), so that the ingest numbers
show what live and failing subscribers cost. After the workloads the report says how many
events were delivered."""

from __future__ import annotations

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.servers import Dicomhub, free_port

SERVER_FLAGS = ["--webhook-allow-private", "true"]  # the receivers are on loopback


class Receiver:
    """Counts the events POSTed to it, answering 200."""

    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.count += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _call(server: Dicomhub, method: str, path: str, body: dict | None = None) -> object:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, "/v2" + path, data, headers)
        response = conn.getresponse()
        text = response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {text[:300]!r}")
        return json.loads(text)
    finally:
        conn.close()


class Subscribers:
    """N subscriptions on ``server``: N-1 live, one dead."""

    def __init__(self, server: Dicomhub, n: int):
        self.server, self.n = server, n
        self.receiver = Receiver()
        self.dead_url = f"http://127.0.0.1:{free_port()}/refused"
        self.live: list[str] = []
        self.dead: list[str] = []

    def __enter__(self) -> Subscribers:
        for i in range(self.n):
            url = self.dead_url if i == self.n - 1 else self.receiver.url
            made = _call(self.server, "POST", "/subscriptions", {"url": url})
            (self.dead if url == self.dead_url else self.live).append(made["id"])
        return self

    def summary(self, settle: float = 30.0) -> dict:
        """What was delivered once the live subscriptions have caught up (or ``settle``
        seconds have passed): events received, per-subscription deliveries, lag."""
        deadline = time.monotonic() + settle
        while True:
            states = {s["id"]: s for s in _call(self.server, "GET", "/subscriptions")}
            latest = _call(self.server, "GET", "/changefeed/latest") or {"sequence": 0}
            behind = [i for i in self.live if states[i]["sequence"] < latest["sequence"]]
            if not behind or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return {
            "subscriptions": self.n,
            "live": len(self.live),
            "dead": len(self.dead),
            "changes": latest["sequence"],
            "received": self.receiver.count,
            "delivered_live": sum(states[i]["delivered"] for i in self.live),
            "delivered_dead": sum(states[i]["delivered"] for i in self.dead),
            "live_caught_up": not behind,
        }

    def __exit__(self, *exc) -> None:
        self.receiver.close()


def line(name: str, w: dict) -> str:
    """The report's sentence on one server's webhooks."""
    return (
        f"Webhooks ({name}): {w['subscriptions']} subscriptions ({w['live']} live, "
        f"{w['dead']} dead) over {w['changes']} changes: {w['delivered_live']} events "
        f"delivered to the live ones ({w['received']} received"
        f"{'' if w['live_caught_up'] else ', not caught up'}), {w['delivered_dead']} to the "
        "dead one."
    )
