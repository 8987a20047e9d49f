"""Pixel data codecs, one frame at a time (PS3.5 section 8 and annex A.4).

Decoding is pydicom's, with its pylibjpeg, pyjpegls and Pillow plugins. Encoding is pydicom's for
RLE, JPEG-LS and JPEG 2000, and imagecodecs' for JPEG (libjpeg-turbo: baseline, extended and
lossless) and High-Throughput JPEG 2000 (OpenJPH). Frames go in and out as bytes; the image they
belong to is described by a ``PixelInfo``.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, replace

import imagecodecs
import numpy as np
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, get_encoder
from pydicom.pixels.utils import pack_bits

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE = "1.2.840.10008.1.2.5"

NATIVE = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, DEFLATED, BIG_ENDIAN})
OCTETS = "application/octet-stream"
DEFAULT_QUALITY = 90  # of lossy targets when the request names none


@dataclass(frozen=True)
class Syntax:
    uid: str
    name: str
    media: str  # how one frame of it is served (PS3.18 table 8.7.3-5)
    lossy: bool = False
    method: str = ""  # Lossy Image Compression Method (0028,2114) of a lossy syntax


def _syntaxes(*rows: Syntax) -> dict[str, Syntax]:
    return {s.uid: s for s in rows}


SYNTAXES = _syntaxes(
    Syntax(IMPLICIT_VR_LE, "Implicit VR Little Endian", OCTETS),
    Syntax(EXPLICIT_VR_LE, "Explicit VR Little Endian", OCTETS),
    Syntax(DEFLATED, "Deflated Explicit VR Little Endian", OCTETS),
    Syntax(BIG_ENDIAN, "Explicit VR Big Endian", OCTETS),
    Syntax(JPEG_BASELINE, "JPEG Baseline (Process 1)", "image/jpeg", True, "ISO_10918_1"),
    Syntax(JPEG_EXTENDED, "JPEG Extended (Process 2 & 4)", "image/jpeg", True, "ISO_10918_1"),
    Syntax(JPEG_LOSSLESS, "JPEG Lossless (Process 14)", "image/jpeg"),
    Syntax(JPEG_LOSSLESS_SV1, "JPEG Lossless SV1 (Process 14, Selection Value 1)", "image/jpeg"),
    Syntax(JPEG_LS, "JPEG-LS Lossless", "image/jls"),
    Syntax(JPEG_LS_NEAR, "JPEG-LS Near-Lossless", "image/jls", True, "ISO_14495_1"),
    Syntax(J2K_LOSSLESS, "JPEG 2000 Lossless", "image/jp2"),
    Syntax(J2K, "JPEG 2000", "image/jp2", True, "ISO_15444_1"),
    Syntax("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Lossless", "image/jpx"),
    Syntax("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2", "image/jpx", True, "ISO_15444_2"),
    Syntax(HTJ2K_LOSSLESS, "HTJ2K Lossless", "image/jphc"),
    Syntax(HTJ2K_LOSSLESS_RPCL, "HTJ2K Lossless RPCL", "image/jphc"),
    Syntax(HTJ2K, "HTJ2K", "image/jphc", True, "ISO_15444_15"),
    Syntax(RLE, "RLE Lossless", "image/dicom-rle"),
    *(
        Syntax(f"1.2.840.10008.1.2.4.{n}", f"MPEG video ({n})", media, True, method)
        for n, media, method in (
            (100, "video/mpeg2", "ISO_13818_2"),
            (101, "video/mpeg2", "ISO_13818_2"),
            (102, "video/mp4", "ISO_14496_10"),
            (103, "video/mp4", "ISO_14496_10"),
            (104, "video/mp4", "ISO_14496_10"),
            (105, "video/mp4", "ISO_14496_10"),
            (106, "video/mp4", "ISO_14496_10"),
            (107, "video/H265", "ISO_23008_2"),
            (108, "video/H265", "ISO_23008_2"),
        )
    ),
)

# What each frame media type means without a transfer-syntax parameter (PS3.18 table 8.7.3-5).
MEDIA_DEFAULTS = {
    OCTETS: EXPLICIT_VR_LE,
    "image/jpeg": JPEG_LOSSLESS_SV1,
    "image/jls": JPEG_LS,
    "image/jp2": J2K_LOSSLESS,
    "image/jphc": HTJ2K_LOSSLESS,
    "image/dicom-rle": RLE,
}

# The syntaxes dicomhub writes. Implicit VR and Big Endian are not used on the web (PS3.18 8.7.3).
TARGETS = (
    EXPLICIT_VR_LE,
    DEFLATED,
    RLE,
    JPEG_LS,
    JPEG_LS_NEAR,
    J2K_LOSSLESS,
    J2K,
    HTJ2K_LOSSLESS,
    HTJ2K,
    JPEG_LOSSLESS_SV1,
    JPEG_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
)


def frame_syntax(uid: str) -> str:
    """The syntax stored frames are in: native little endian frames (Implicit, Explicit or
    Deflated) are the same bytes as Explicit VR Little Endian ones."""
    return EXPLICIT_VR_LE if uid in (IMPLICIT_VR_LE, DEFLATED) else uid


@functools.cache
def decodable(uid: str) -> bool:
    if uid in NATIVE:
        return True
    try:
        return get_decoder(uid).is_available
    except NotImplementedError:
        return False


def describe(uid: str) -> str:
    syntax = SYNTAXES.get(uid)
    return f"{syntax.name} ({uid})" if syntax else uid


_PIXEL_MODULE = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "SamplesPerPixel",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
)


@dataclass(frozen=True)
class PixelInfo:
    """The Image Pixel module (PS3.3 C.7.6.3) of an instance's integer Pixel Data."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    planar: int
    frames: int
    pixel_vr: str = "OW"  # decides the byte order of big endian 8-bit data

    @classmethod
    def of(cls, ds: Dataset) -> PixelInfo | None:
        """None when ``ds`` has no complete Image Pixel module."""
        try:
            bits_allocated = int(ds.BitsAllocated)
            return cls(
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                samples=int(ds.get("SamplesPerPixel", 1) or 1),
                bits_allocated=bits_allocated,
                bits_stored=int(ds.get("BitsStored") or bits_allocated),
                signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
                photometric=str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip(),
                planar=int(ds.get("PlanarConfiguration", 0) or 0),
                frames=max(1, int(ds.get("NumberOfFrames", 1) or 1)),
                pixel_vr=ds["PixelData"].VR if "PixelData" in ds else "OW",
            )
        except (AttributeError, TypeError, ValueError):
            return None

    @staticmethod
    def defect(ds: Dataset) -> str:
        """Why ``of`` found no complete Image Pixel module in ``ds``."""
        for keyword in _PIXEL_MODULE:
            value = ds.get(keyword)
            if value is None or value == "":
                if keyword in ("Rows", "Columns", "BitsAllocated"):
                    return f"{keyword} is missing"
                continue
            try:
                int(value)
            except (TypeError, ValueError):
                return f"{keyword} {str(value)[:32]!r} is not an integer"
        return "it is incomplete"

    @property
    def valid(self) -> bool:
        return (
            self.rows > 0
            and self.columns > 0
            and self.samples in (1, 3, 4)
            and self.bits_allocated in (1, 8, 16, 32, 64)
            and 0 < self.bits_stored <= self.bits_allocated
        )

    def options(self) -> dict:
        """pydicom's decoding and encoding options for one frame."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": int(self.signed),
            "photometric_interpretation": self.photometric,
            "planar_configuration": self.planar,
            "number_of_frames": 1,
        }


def cannot_encode(info: PixelInfo, source: str, target: str) -> str | None:
    """Why frames of ``info`` stored in ``source`` cannot be written in ``target``; None if
    they can."""
    if target == source:
        return None
    if not decodable(source):
        return f"pixel data in {describe(source)} cannot be decoded here"
    if target not in TARGETS:
        return f"{describe(target)} is not a syntax dicomhub converts to"
    if not info.valid:
        return "the Image Pixel module is incomplete or unsupported"
    if source == BIG_ENDIAN and info.pixel_vr == "OW" and info.bits_allocated == 8:
        if frame_bytes(info) % 2 and info.frames > 1:  # one frame is read with its pad byte
            return "8-bit big endian OW frames of odd length cannot be read"
    if target in NATIVE:
        return None
    lossy, bits = SYNTAXES[target].lossy, info.bits_stored
    if info.bits_allocated == 1 and target != RLE:
        return "1-bit pixel data is only converted to uncompressed syntaxes or RLE"
    if info.samples not in (1, 3) and target != RLE:
        return f"{info.samples} samples per pixel"
    if lossy and info.photometric == "PALETTE COLOR":
        return "palette colour indices cannot be compressed lossily"
    limits = {
        JPEG_BASELINE: 8,
        JPEG_EXTENDED: 12,
        JPEG_LOSSLESS: 16,
        JPEG_LOSSLESS_SV1: 16,
        JPEG_LS: 16,
        JPEG_LS_NEAR: 16,
        J2K_LOSSLESS: 24,
        J2K: 24,
        HTJ2K_LOSSLESS: 16,
        HTJ2K: 16,
        RLE: 16,
    }
    if bits > limits[target] or info.bits_allocated > max(8, limits[target]):
        return f"{bits}-bit samples exceed what {describe(target)} holds"
    if lossy and info.signed and target in (JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_NEAR):
        return f"signed samples are not written in {describe(target)}"
    if target == RLE and info.bits_allocated not in (8, 16):
        return f"{info.bits_allocated}-bit samples exceed what {describe(target)} holds here"
    return None


def decode(info: PixelInfo, source: str, frame: bytes) -> tuple[np.ndarray, str]:
    """One frame as an array shaped (rows, columns[, samples]) and its photometric
    interpretation. YCbCr colour becomes RGB, as in pydicom's own decoding of the instance, so a
    lossless target holds exactly the pixels a reader of the original gets."""
    ds = Dataset()
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = BIG_ENDIAN if source == BIG_ENDIAN else EXPLICIT_VR_LE
    options = info.options() | {"pixel_keyword": "PixelData"}
    if source in NATIVE:
        decoder, src = get_decoder(ds.file_meta.TransferSyntaxUID), frame
    else:
        decoder, src = get_decoder(source), encapsulate([frame])
    if source == BIG_ENDIAN:
        options["pixel_vr"] = info.pixel_vr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array, properties = decoder.as_array(src, index=0, **options)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array, str(properties.get("photometric_interpretation", info.photometric))


def encode(
    info: PixelInfo, array: np.ndarray, photometric: str, target: str, quality: int | None
) -> tuple[bytes, PixelInfo]:
    """One decoded frame written in ``target``, with the Image Pixel module it now has."""
    out = replace(info, photometric=photometric, planar=0)
    quality = quality or DEFAULT_QUALITY
    if target in NATIVE:
        return _native(out, array), out
    if target == RLE:
        out = replace(out, planar=1) if info.samples > 1 else out  # one segment per sample
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = get_encoder(RLE).encode(np.ascontiguousarray(array), **out.options())
        return data, out
    if target in (JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1):
        return _jpeg(out, array, target, quality)
    lossless = not SYNTAXES[target].lossy
    if target in (J2K_LOSSLESS, J2K):
        levels = int(np.log2(min(info.rows, info.columns)))  # wavelet levels the image allows
        data = imagecodecs.jpeg2k_encode(
            np.ascontiguousarray(array),
            level=0 if lossless else _j2k_psnr(quality, info.bits_stored),
            codecformat="J2K",
            reversible=lossless,
            resolutions=max(1, min(6, levels + 1)),
            mct=False,
            bitspersample=info.bits_stored,
        )
        return data, out
    if target in (HTJ2K_LOSSLESS, HTJ2K):
        step = None if lossless else 10 ** -(1 + 3 * quality / 100)  # quantisation step
        return imagecodecs.htj2k_encode(array, level=step, reversible=lossless), out
    error = 0 if lossless else max(1, round((100 - quality) / 10))
    if not info.signed:
        return imagecodecs.jpegls_encode(np.ascontiguousarray(array), level=error), out
    # JPEG-LS has no sign: pydicom writes the stored bits with the precision Bits Stored gives
    options = out.options() | ({"jls_error": error} if error else {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_encoder(target).encode(np.ascontiguousarray(array), **options), out


def _native(info: PixelInfo, array: np.ndarray) -> bytes:
    if info.bits_allocated == 1:
        return pack_bits(array.ravel(), pad=False)
    dtype = np.dtype(f"{'i' if info.signed else 'u'}{info.bits_allocated // 8}").newbyteorder("<")
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def _stored_bits(array: np.ndarray, info: PixelInfo) -> np.ndarray:
    """Signed samples as the unsigned ``bits_stored``-bit patterns that hold them."""
    if not info.signed:
        return np.ascontiguousarray(array)
    unsigned = array.astype(np.dtype(f"u{array.dtype.itemsize}"))
    return np.ascontiguousarray(unsigned & ((1 << info.bits_stored) - 1))


def _jpeg(info: PixelInfo, array: np.ndarray, target: str, quality: int) -> tuple[bytes, PixelInfo]:
    lossless = target in (JPEG_LOSSLESS, JPEG_LOSSLESS_SV1)
    bits = info.bits_stored if lossless else (8 if info.bits_stored <= 8 else 12)
    dtype = np.uint8 if bits <= 8 else np.uint16
    data = np.ascontiguousarray(_stored_bits(array, info), dtype=dtype)
    kwargs: dict = {"bitspersample": bits}
    out = info
    if lossless:
        kwargs.update(lossless=True, predictor=1 if target == JPEG_LOSSLESS_SV1 else 6)
        if info.samples == 3:
            kwargs.update(colorspace="RGB", outcolorspace="RGB")
    else:
        kwargs.update(level=quality, subsampling="444")
        if info.samples == 3:  # stored as YCbCr, full resolution (PS3.5 8.2.1)
            kwargs.update(colorspace="RGB", outcolorspace="YCbCr")
            out = replace(info, photometric="YBR_FULL")
    return imagecodecs.jpeg8_encode(data, **kwargs), out


def _j2k_psnr(quality: int, bits: int) -> float:
    """A JPEG-like quality (1-100) as the PSNR in dB that OpenJPEG aims at."""
    return 20 + 0.3 * quality + 6.02 * (bits - 8)


def frame_bytes(info: PixelInfo) -> int:
    """The length of one native frame."""
    bits = info.rows * info.columns * info.samples * info.bits_allocated
    if info.photometric == "YBR_FULL_422":
        bits = info.rows * info.columns * 2 * info.bits_allocated
    return (bits + 7) // 8


def convert(
    info: PixelInfo, source: str, target: str, frame: bytes, quality: int | None = None
) -> tuple[bytes, PixelInfo]:
    """One stored frame written in ``target`` (run in a worker process)."""
    array, photometric = decode(info, source, frame)
    return encode(info, array, photometric, target, quality)
