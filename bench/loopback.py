"""The loopback ceiling: an HTTP/1.1 server that answers every request with ``size`` bytes from
memory, as fast as the kernel takes them. Run as its own process so it never shares the client's
interpreter:

    python -m bench.loopback PORT SIZE
"""

from __future__ import annotations

import socket
import sys
import threading
from contextlib import suppress


def _serve(conn: socket.socket, header: bytes, body: memoryview) -> None:
    with conn, suppress(OSError):  # the readiness probe hangs up mid-body
        buffered = b""
        while True:
            while b"\r\n\r\n" not in buffered:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffered += chunk
            buffered = buffered.split(b"\r\n\r\n", 1)[1]
            conn.sendall(header)
            conn.sendall(body)


def main() -> None:
    port, size = int(sys.argv[1]), int(sys.argv[2])
    body = memoryview(bytes(size))
    header = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    with socket.create_server(("127.0.0.1", port)) as server:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_serve, args=(conn, header, body), daemon=True).start()


if __name__ == "__main__":
    main()
