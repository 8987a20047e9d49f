"""Accept negotiation with conversion (PS3.18 section 8.7): q-values, mixed lists, defaults."""

from __future__ import annotations

import pytest

from dicomhub.dicom.codecs import TARGETS
from dicomhub.dicom.mediatype import Item, negotiate, parse_accept
from dicomhub.errors import InvalidRequest, NotAcceptable

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
J2K = "1.2.840.10008.1.2.4.90"
JLS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
MPEG2 = "1.2.840.10008.1.2.4.100"
ALL = frozenset(TARGETS)


def served(accept: str, *items: Item, single: bool = True):
    choice = negotiate(parse_accept(accept), list(items), single_allowed=single)
    return choice.multipart, choice.served


def test_no_transfer_syntax_means_explicit_vr_little_endian_for_instances():
    j2k = Item(J2K, ALL)
    assert served("application/dicom", j2k) == (False, [("application/dicom", EXPLICIT)])
    multipart = 'multipart/related; type="application/dicom"'
    assert served(multipart, j2k, Item(IMPLICIT, ALL), single=False) == (
        True,
        [("application/dicom", EXPLICIT)] * 2,
    )


def test_lossy_instances_stay_as_stored_without_a_syntax():
    assert served("application/dicom", Item(JPEG, ALL))[1] == [("application/dicom", JPEG)]


def test_star_and_no_accept_mean_as_stored():
    item = Item(J2K, ALL)
    assert served("application/dicom; transfer-syntax=*", item)[1] == [("application/dicom", J2K)]
    assert served("*/*", item) == (True, [("application/dicom", J2K)])
    assert negotiate([], [item], single_allowed=True).served == [("application/dicom", J2K)]


def test_q_values_order_the_ranges():
    item = Item(EXPLICIT, ALL)
    accept = (
        f"application/dicom; transfer-syntax={JLS}; q=0.4, "
        f"application/dicom; transfer-syntax={RLE}; q=0.9, "
        f"application/dicom; transfer-syntax={J2K}; q=0.5"
    )
    assert served(accept, item)[1] == [("application/dicom", RLE)]
    # q=0 means "not acceptable"
    with pytest.raises(NotAcceptable):
        served(f"application/dicom; transfer-syntax={RLE}; q=0", item)


def test_first_range_every_item_can_take_wins():
    stored_mpeg = Item(MPEG2)  # video cannot be converted: only as stored
    accept = (
        f'multipart/related; type="application/dicom"; transfer-syntax={J2K}, '
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5'
    )
    multipart, out = served(accept, Item(EXPLICIT, ALL), stored_mpeg, single=False)
    assert out == [("application/dicom", EXPLICIT), ("application/dicom", MPEG2)]
    multipart, out = served(accept, Item(EXPLICIT, ALL), single=False)
    assert out == [("application/dicom", J2K)]


def test_single_part_needs_one_item():
    item = Item(EXPLICIT, ALL)
    with pytest.raises(NotAcceptable) as caught:
        served("application/dicom", item, item, single=False)
    assert "as multipart/related" in str(caught.value)
    multipart, _ = served(
        'application/dicom, multipart/related; type="application/dicom"; q=0.1',
        item,
        item,
        single=False,
    )
    assert multipart


def test_406_lists_what_can_be_produced():
    with pytest.raises(NotAcceptable) as caught:
        served(f"application/dicom; transfer-syntax={MPEG2}", Item(EXPLICIT, frozenset({RLE})))
    message = str(caught.value)
    assert f"application/dicom; transfer-syntax={RLE}" in message
    assert f"application/dicom; transfer-syntax={EXPLICIT}" in message


def test_frame_media_types_and_their_defaults():
    frames = Item(EXPLICIT, ALL, frames=True)
    assert served("image/jp2", frames)[1] == [("image/jp2", J2K)]
    assert served("image/jls", frames)[1] == [("image/jls", JLS)]
    assert served("image/dicom-rle", frames)[1] == [("image/dicom-rle", RLE)]
    assert served("image/jpeg", frames)[1] == [("image/jpeg", JPEG_LOSSLESS)]  # the D syntax
    assert served(f"image/jpeg; transfer-syntax={JPEG}", frames)[1] == [("image/jpeg", JPEG)]
    # image/jp2 cannot carry an RLE syntax
    with pytest.raises(NotAcceptable):
        served(f"image/jp2; transfer-syntax={RLE}", frames)


def test_frames_stored_compressed():
    j2k = Item(J2K, ALL, frames=True)
    octets = "multipart/related; type=application/octet-stream"
    # without a syntax, octet-stream means uncompressed
    assert served(octets, j2k) == (True, [("application/octet-stream", EXPLICIT)])
    # with transfer-syntax=* (what OHIF sends), the stored bytes, labelled with their syntax
    assert served(octets + "; transfer-syntax=*", j2k)[1] == [("application/octet-stream", J2K)]
    assert served('multipart/related; type="image/jp2"', j2k)[1] == [("image/jp2", J2K)]
    assert served("*/*", j2k) == (True, [("image/jp2", J2K)])


def test_malformed_accept_is_400():
    with pytest.raises(InvalidRequest):
        parse_accept("application/dicom; q=high")
    with pytest.raises(InvalidRequest):
        parse_accept("dicom")
