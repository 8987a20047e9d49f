"""Who may use the DIMSE service: an allow-list of calling AE titles (optionally bound to an
address), each with its permissions (``--dimse-callers``), e.g.
``CT1=store,PACS@10.0.0.5=store+find+retrieve``. Empty: any caller may do everything. And the
data partition each caller addresses (``--dimse-partitions``)."""

from __future__ import annotations

from dataclasses import dataclass

from dicomhub.model import PARTITION_NAME

PERMISSIONS = ("store", "find", "retrieve")


@dataclass(frozen=True)
class Caller:
    ae_title: str
    address: str | None  # None: from anywhere
    permissions: frozenset[str]


class Callers:
    def __init__(self, spec: str):
        self.callers: list[Caller] = []
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            who, sep, granted = entry.partition("=")
            ae_title, _, address = who.strip().partition("@")
            permissions = frozenset(p.strip() for p in granted.split("+") if p.strip())
            unknown = permissions - set(PERMISSIONS)
            if not sep or not ae_title or len(ae_title) > 16 or not permissions or unknown:
                raise ValueError(
                    f"dimse_callers entry {entry!r}: write AET[@address]=permission[+...], "
                    f"an AE title of 1-16 characters, permissions among {', '.join(PERMISSIONS)}"
                )
            self.callers.append(Caller(ae_title, address or None, permissions))

    @property
    def open(self) -> bool:
        return not self.callers

    @property
    def ae_titles(self) -> list[str]:
        return sorted({c.ae_title for c in self.callers})

    def allows(self, ae_title: str, address: str, permission: str) -> bool:
        if self.open:
            return True
        return any(
            c.ae_title == ae_title.strip()
            and c.address in (None, address)
            and permission in c.permissions
            for c in self.callers
        )


def caller_of(event) -> tuple[str, str]:
    """The calling AE title and network address of a pynetdicom event's association."""
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), requestor.address


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    tls: bool = False  # DICOM TLS on the associations dicomhub opens to it

    def __str__(self) -> str:
        return f"{'tls://' if self.tls else ''}{self.host}:{self.port}"


def parse_partitions(spec: str) -> dict[str, str]:
    """The data partition of each calling AE title: AET=partition, comma-separated (a caller
    not named: the default partition). ValueError names what is wrong."""
    found: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        ae_title, sep, partition = (part.strip() for part in entry.partition("="))
        if not sep or not ae_title or len(ae_title) > 16 or "\\" in ae_title:
            raise ValueError(f"--dimse-partitions: {entry!r} is not AET=partition")
        if not PARTITION_NAME.fullmatch(partition):
            raise ValueError(
                f"--dimse-partitions: {partition!r} is not a partition name (1 to 64 characters "
                "of A-Z, a-z, 0-9, '_', '.', '-')"
            )
        if ae_title in found:
            raise ValueError(f"--dimse-partitions: {ae_title} is named twice")
        found[ae_title] = partition
    return found


def parse_peers(spec: str) -> dict[str, Peer]:
    """``--dimse-peers`` (``AET=host:port`` or ``AET=tls://host:port``, comma-separated): the
    AEs dicomhub opens associations to (C-MOVE destinations, storage commitment reports)."""
    peers = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        ae_title, sep, address = entry.partition("=")
        tls = address.strip().startswith("tls://")
        host, _, port = address.strip().removeprefix("tls://").rpartition(":")
        if (
            not sep
            or not ae_title.strip()
            or len(ae_title.strip()) > 16
            or not host
            or not (port.isdigit() and 0 < int(port) < 65536)
        ):
            raise ValueError(
                f"dimse_peers entry {entry!r}: write AET=host:port or AET=tls://host:port"
            )
        peers[ae_title.strip()] = Peer(host, int(port), tls)
    return peers
