"""``--subscriptions N``: dicomhub delivering webhooks while it is measured (beside the same
dicomhub without subscriptions, in the same rounds). Before the workloads, N subscriptions are
made on the server: N-1 to a live receiver (a tiny HTTP server in a process of its own,
answering 200 to every event) and one to a dead endpoint (a loopback port nothing listens on:
refused connections, retried with backoff), so that the ingest numbers show what live and
failing subscribers cost. After the workloads the report says how many
events were delivered."""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import time

from bench.servers import REPOSITORY, Dicomhub, free_port
from dicomhub.lifetime import lower_priority


class Receiver:
    """Counts the events POSTed to it, answering 200 over kept-alive HTTP/1.1 connections, as
    receivers do. It runs in a process of its own, on asyncio: threads in this process would
    take the interpreter from the clients being timed (and a thread per request, with a
    connection each, costs more CPU than the server spends sending the event)."""

    def __init__(self):
        port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.webhooks", str(port)], cwd=REPOSITORY
        )
        self.url = f"http://127.0.0.1:{port}/events"
        self._port = port
        deadline = time.monotonic() + 30
        while True:
            try:
                self.count  # noqa: B018 - up once it answers
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the webhook receiver did not start") from None
                time.sleep(0.05)

    @property
    def count(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=10)
        try:
            conn.request("GET", "/count")
            return int(conn.getresponse().read())
        finally:
            conn.close()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def _receive(port: int) -> None:
    """The receiver's process: 200 to every POST (counted), the count to a GET."""
    count = 0

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                at = head.find(b"content-length:")
                if at >= 0:
                    await reader.readexactly(int(head[at + 15 : head.index(b"\r\n", at)]))
                if head.startswith(b"post"):
                    count += 1
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                else:
                    body = str(count).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                    )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


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


if __name__ == "__main__":
    # The receiver stands for a machine of its own: here it takes only the CPU the server leaves
    # (no receiver elsewhere competes with the server for its cores).
    lower_priority("idle")
    asyncio.run(_receive(int(sys.argv[1])))
