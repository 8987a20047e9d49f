"""The ``dicomhub`` command: the client commands (export, import) without the server's layers,
everything else through the composition root (``cli.py``)."""

from __future__ import annotations

import sys

from dicomhub import clients


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in clients.COMMANDS:
        sys.exit(clients.run(argv))
    from dicomhub.cli import main as server_main

    server_main(argv)
