"""The command-line clients of a server (``dicomhub export``, ``import``, ``subscriptions``):
HTTP clients built on the standard library, separate from the server's layers (``import
--data-dir`` alone stores through an archive of its own). ``dicomhub.main`` runs them without
importing the server, so they start in a tenth of the time."""

from __future__ import annotations

import argparse
import importlib

TOKEN_SAFE = dict(allow_abbrev=False)  # --token is not --token-file: no flag carries the token
COMMANDS = {  # name: (module, help, description)
    "export": (
        "dicomhub.clients.export",
        "export studies from a running server to a destination (an HTTP client)",
        "Export instances from a running dicomhub server (POST /v2/export), follow the job and "
        "print its result. Exit status: 0 completed, 1 failed, 2 refused by the server.",
    ),
    "import": (
        "dicomhub.clients.importer",
        "import DICOM files into a running server over STOW-RS (an HTTP client)",
        "Send files, folders (recursively), ZIP and tar files and DICOMDIR media to a running "
        "dicomhub server (STOW-RS), in parallel and resumably, and print what was stored, "
        "already there, refused or skipped. Exit status: 0 all stored or already there, 1 some "
        "refused or the server unreachable, 2 bad command line or requests refused by the "
        "server (401, 403), 130 interrupted.",
    ),
    "subscriptions": (
        "dicomhub.clients.subscriptions",
        "manage the webhook subscriptions of a running server (an HTTP client)",
        "List, create, read, pause, resume and delete webhook subscriptions of a running "
        "dicomhub server (/v2/subscriptions, the admin action), list their dead letters and "
        "replay one. Exit status: 0 done, 1 the server unreachable, 2 refused by the server "
        "or a bad command line.",
    ),
}


def add_parsers(commands, only: str | None = None) -> None:
    """Add the client commands (or the one named ``only``) to ``commands`` (subparsers)."""
    for name, (module, help_text, description) in COMMANDS.items():
        if only in (None, name):
            parser = commands.add_parser(
                name, help=help_text, description=description, **TOKEN_SAFE
            )
            importlib.import_module(module).add_arguments(parser)


def run(argv: list[str]) -> int:
    """Run the client command ``argv[0]`` (one of COMMANDS); its exit status."""
    parser = argparse.ArgumentParser(prog="dicomhub")
    add_parsers(parser.add_subparsers(dest="command", required=True), only=argv[0])
    args = parser.parse_args(argv)
    return importlib.import_module(COMMANDS[args.command][0]).run(args)
