"""DICOM TLS (PS3.15 B.1, BCP 195: TLS 1.2 or later) for the associations dicomhub accepts
and the ones it opens to its peers."""

from __future__ import annotations

import ssl

from dicomhub.dimse.callers import Peer
from dicomhub.settings_groups import Dimse


def tls_context(settings: Dimse) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.1, BCP 195: TLS 1.2 or later) when a certificate is set; peers must
    present a certificate signed by dimse_tls_ca when it is set."""
    if not (settings.tls_certfile or settings.tls_keyfile):
        return None
    if not (settings.tls_certfile and settings.tls_keyfile):
        raise ValueError("DICOM TLS needs both dimse_tls_certfile and dimse_tls_keyfile")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    if settings.tls_ca:
        context.load_verify_locations(settings.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls_context(settings: Dimse) -> ssl.SSLContext:
    """DICOM TLS to a peer: its certificate is verified (against dimse_tls_ca, else the
    system's CAs, and its host name); dicomhub presents its own certificate when it has one."""
    context = ssl.create_default_context(cafile=settings.tls_ca or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_certfile and settings.tls_keyfile:
        context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    return context


def tls_args(settings: Dimse, peer: Peer) -> dict:
    """The ``associate()`` options for an association dicomhub opens to ``peer``."""
    if not peer.tls:
        return {}
    return {"tls_args": (client_tls_context(settings), peer.host)}
