"""The webhook client (webhooks/client.py) against real sockets: receivers written here that
answer in the ways receivers do (kept-alive, closing a kept connection, 100 Continue, chunked,
redirects, garbage, never) and one over TLS with a certificate made here: untrusted, refused;
trusted, delivered. Every event is a signed POST; any 2xx is success."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from dicomhub.webhooks.client import DeliveryFailed, WebhookClient
from dicomhub.webhooks.signing import new_secret
from tests.test_tls import self_signed

SECRET = new_secret()


class Receiver:
    """An HTTP/1.1 receiver on asyncio: ``answer(n)`` gives the bytes answering request n (or
    None: close without answering); ``close_after``: the connection closes after each answer.
    ``connections`` counts the connections, ``requests`` holds (head, body) of each."""

    def __init__(self, answer, close_after: bool = False, tls: ssl.SSLContext | None = None):
        self.answer, self.close_after, self.tls = answer, close_after, tls
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/hook?x=1"

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                self.requests.append((head, await reader.readexactly(length)))
                answer = self.answer(len(self.requests))
                if answer is None:
                    await asyncio.sleep(5)
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        writer.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def send(client: WebhookClient, url: str, n: int = 1) -> None:
    for i in range(n):
        await client.send(url, SECRET, str(i), "cloudevents", b'{"id": "%d"}' % i)


def test_connections_are_kept_and_reopened_when_the_receiver_closed_them():
    async def run():
        kept = Receiver(lambda n: OK)
        client = WebhookClient(5)
        async with kept as url:
            await send(client, url, 3)
        assert kept.connections == 1
        head, body = kept.requests[0]
        assert head.startswith(b"POST /hook?x=1 HTTP/1.1\r\n") and body == b'{"id": "0"}'
        assert b"webhook-signature: v1," in head and b"webhook-id: 0" in head
        assert b"content-type: application/cloudevents+json" in head
        # a receiver that closes each connection after its answer (saying nothing): the kept
        # one is found closed, and the event goes on a new one
        closing = Receiver(lambda n: OK, close_after=True)
        async with closing as url:
            await send(client, url, 3)
        assert closing.connections == 3 and len(closing.requests) == 3
        await client.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("answer", "outcome", "connections"),
    [
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", None, 1),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            None,
            2,  # not read: closed after the answer
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 100000, None, 2),
        (b"HTTP/1.0 202 Accepted\r\ncontent-length: 0\r\n\r\n", None, 2),
        (b"HTTP/1.1 302 Found\r\nlocation: http://10.0.0.1/\r\ncontent-length: 0\r\n\r\n", 302, 1),
        (b"HTTP/1.1 500 Oops\r\ncontent-length: 4\r\n\r\noops", 500, 1),
        (b"SMTP ready\r\n\r\n", "not an HTTP answer", 2),
        (None, "no answer within", 2),
    ],
)
def test_answers(answer, outcome, connections):
    async def run():
        receiver = Receiver(lambda n: answer)
        client = WebhookClient(0.5)
        async with receiver as url:
            for _ in range(2):
                if outcome is None:
                    await send(client, url)
                else:
                    with pytest.raises(DeliveryFailed, match=str(outcome)):
                        await send(client, url)
        await client.close()
        assert receiver.connections == connections

    asyncio.run(run())


def test_tls_receivers_need_a_trusted_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def run():
        receiver = Receiver(lambda n: OK, tls=served)
        async with receiver as url:
            with pytest.raises(DeliveryFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await send(WebhookClient(5), url)
            trusting = WebhookClient(5, ssl.create_default_context(cafile=cert))
            await send(trusting, url, 2)
            await trusting.close()
        # the two on one connection (the refused handshake never got to the receiver)
        assert len(receiver.requests) == 2 and receiver.connections == 1

    asyncio.run(run())
