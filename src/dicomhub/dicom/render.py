"""Rendered images (PS3.18 section 8.3.5.1 and 10.4.1.1.3): pixels as a consumer image.

Grayscale goes through the Modality LUT (rescale or LUT), then the VOI: the requested window,
else the stored VOI LUT or window, else the frame's range; MONOCHROME1 is inverted. Colour is
converted to RGB (palette through its lookup tables). The result is cropped and scaled to the
viewport and encoded as JPEG, PNG or GIF (animated for several frames) by Pillow.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr, write_dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from dicomhub.dicom.codecs import DEFAULT_QUALITY, PixelInfo, decode
from dicomhub.errors import InvalidRequest

MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif")
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_PRESENTATION = (0x00080060, 0x00181063)  # Modality, Frame Time
_PER_FRAME = (0x00289145, 0x00289132)  # Pixel Value Transformation, Frame VOI LUT
_SHARED, _PER_FRAME_GROUPS = 0x52009229, 0x52009230


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    region: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh (negative: flipped)


@dataclass(frozen=True)
class Params:
    media: str = "image/jpeg"
    quality: int = DEFAULT_QUALITY
    window: tuple[float, float, str] | None = None  # center, width, function
    viewport: Viewport | None = None


def parse_params(query, media: str, default_viewport: Viewport | None = None) -> Params:
    """The rendering query parameters (PS3.18 section 8.3.5.1); 400 for malformed ones."""
    quality = DEFAULT_QUALITY
    if query.get("quality") is not None:
        quality = _int(query["quality"], "quality")
        if not 1 <= quality <= 100:
            raise InvalidRequest("quality must be an integer from 1 to 100")
    window = None
    if query.get("window") is not None:
        parts = [p.strip() for p in query["window"].split(",")]
        if len(parts) not in (2, 3):
            raise InvalidRequest("window is center,width[,function]")
        center, width = _float(parts[0], "window center"), _float(parts[1], "window width")
        function = (parts[2] if len(parts) == 3 else "linear").upper().replace("-", "_")
        if function not in WINDOW_FUNCTIONS:
            raise InvalidRequest("the window function is linear, linear-exact or sigmoid")
        minimum = 1 if function == "LINEAR" else 0
        if width < minimum or (function != "LINEAR" and width <= 0):
            raise InvalidRequest(f"window width must be at least {minimum} (and above 0)")
        window = (center, width, function)
    viewport = default_viewport
    if query.get("viewport") is not None:
        parts = [p.strip() for p in query["viewport"].split(",")]
        if len(parts) not in (2, 6):
            raise InvalidRequest("viewport is vw,vh or vw,vh,sx,sy,sw,sh")
        vw, vh = (_int(p, "viewport size") for p in parts[:2])
        if not (1 <= vw <= 8192 and 1 <= vh <= 8192):
            raise InvalidRequest("viewport width and height are 1 to 8192")
        region = tuple(_int(p, "viewport region") for p in parts[2:]) if len(parts) == 6 else None
        viewport = Viewport(vw, vh, region)
    return Params(media, quality, window, viewport)


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an integer, not {text[:40]!r}") from exc


def _float(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be a number, not {text[:40]!r}") from exc
    if not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a finite number")
    return value


def presentation(header: Dataset, frame: int) -> bytes:
    """The attributes rendering frame ``frame`` (1-based) needs: the Image Pixel and
    presentation attributes of group 0028, with an enhanced multi-frame instance's shared and
    per-frame rescale and window in place (PS3.3 C.7.6.16). Encoded as an Explicit VR Little
    Endian data set: what crosses to the worker process is bytes (pydicom's converted values
    need not pickle), and palette and LUT data keep a known VR and byte order however the
    instance was stored (``look`` reads them back)."""
    ds = Dataset()
    for element in header:
        if element.tag.group == 0x0028 or element.tag in _PRESENTATION:
            ds.add(element)
    for groups in _functional_groups(header, frame):
        for tag in _PER_FRAME:
            if tag in groups and groups[tag].value:
                for element in groups[tag].value[0]:
                    ds.add(element)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(out, correct_ambiguous_vr(ds, True))
    return out.getvalue()


def look(data: bytes) -> Dataset:
    """The presentation attributes ``presentation`` encoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True)


def _functional_groups(header: Dataset, frame: int) -> list[Dataset]:
    out = []
    shared = header.get(_SHARED)
    if shared is not None and shared.value:
        out.append(shared.value[0])
    per_frame = header.get(_PER_FRAME_GROUPS)
    if per_frame is not None and 0 < frame <= len(per_frame.value):
        out.append(per_frame.value[frame - 1])
    return out


def render(
    info: PixelInfo, source: str, frames: list[bytes], encoded: list[bytes], params: Params
) -> bytes:
    """Frames (each with its presentation attributes, see ``presentation``) as one image, or an
    animated GIF."""
    looks = [look(data) for data in encoded]
    images = [
        _viewport(Image.fromarray(to_8bit(info, source, f, ds, params.window)), params.viewport)
        for f, ds in zip(frames, looks, strict=True)
    ]
    out = io.BytesIO()
    if params.media == "image/png":
        images[0].save(out, "PNG", optimize=False, compress_level=6)
    elif params.media == "image/gif":
        duration = int(float(looks[0].get("FrameTime", 100) or 100))
        frames_p = [i.convert("P", palette=Image.Palette.ADAPTIVE) for i in images]
        frames_p[0].save(
            out, "GIF", save_all=len(frames_p) > 1, append_images=frames_p[1:], duration=duration
        )
    else:
        images[0].save(out, "JPEG", quality=params.quality)
    return out.getvalue()


def to_8bit(info: PixelInfo, source: str, frame: bytes, ds: Dataset, window=None) -> np.ndarray:
    """One frame as 8-bit grayscale (rows, columns) or RGB (rows, columns, 3)."""
    array, photometric = decode(info, source, frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if photometric == "PALETTE COLOR":
            return _scale_bits(apply_color_lut(array, ds))
        if info.samples > 1:
            return _scale_bits(array, info.bits_stored)
        values = apply_modality_lut(array, ds).astype(np.float64)
        if window is None and "VOILUTSequence" in ds:
            return _voi_lut(values, ds, photometric)
    center, width, function = window or _stored_window(ds) or _range_window(values)
    out = _window(values, center, width, function)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def _stored_window(ds: Dataset) -> tuple[float, float, str] | None:
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if center is None or width is None or function not in WINDOW_FUNCTIONS or width <= 0:
        return None
    return center, max(width, 1.0) if function == "LINEAR" else width, function


def _first(value) -> float | None:
    """The first value of a (possibly multi-valued) number; None when there is none."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _range_window(values: np.ndarray) -> tuple[float, float, str]:
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, high - low, "LINEAR_EXACT" if high > low else "LINEAR"


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI windowing to 0..255 (PS3.3 C.11.2.1.2)."""
    if function == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        y = np.clip((x - center) / width + 0.5, 0.0, 1.0) * 255.0
    else:
        if width <= 1:
            y = np.where(x > center - 0.5, 255.0, 0.0)
        else:
            y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) * 255.0
    return np.rint(y).astype(np.uint8)


def _voi_lut(values: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    item = ds.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2]) or 16
    out = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
    top = float(2**bits - 1)
    if out.max() > top:  # some LUTs declare fewer bits than their entries use
        top = float(out.max())
    y = np.rint(np.clip(out / top, 0, 1) * 255).astype(np.uint8)
    return 255 - y if photometric == "MONOCHROME1" else y


def _scale_bits(array: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Colour samples to 8 bits."""
    if bits is None:
        bits = 16 if array.dtype.itemsize > 1 else 8
    if bits > 8:
        array = np.right_shift(array.astype(np.uint32), bits - 8)
    return np.clip(array, 0, 255).astype(np.uint8)


def _viewport(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """Crop to the region (flipping for negative sizes), then fit in the viewport."""
    if viewport is None:
        return image
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        sw, sh = sw or image.width - sx, sh or image.height - sy
        box = (min(sx, sx + sw), min(sy, sy + sh), max(sx, sx + sw), max(sy, sy + sh))
        box = (max(0, box[0]), max(0, box[1]), min(image.width, box[2]), min(image.height, box[3]))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidRequest("the viewport region lies outside the image")
        image = image.crop(box)
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS) if size != image.size else image
