"""The server's HTTP protocol: ``zerocopy``'s, able to hand a connection over to the WebSocket
protocol (the UPS event channel, ``GET /subscribers/{AETitle}``).

For an upgrade request uvicorn makes no request cycle (the WebSocket protocol takes the
connection), but ``zerocopy``'s ``on_message_complete`` reads the cycle, which the parser's
callback then fails on: every handshake would be answered 400. Serve with
``uvicorn.run(..., http="dicomhub.web.upgrade:HttpToolsProtocol")``.
"""

from __future__ import annotations

from dicomhub.web import zerocopy


class HttpToolsProtocol(zerocopy.HttpToolsProtocol):
    def on_message_complete(self) -> None:
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # a WebSocket handshake: uvicorn's own handler takes it from here
        super().on_message_complete()
