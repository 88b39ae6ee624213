"""Portrait in: any Pillow format -> square RGB of the render size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

FITS = ("crop", "pad")
# Largest image decoded (pixels): 4.5x Pillow's decompression-bomb default, so that 100+ MP phone and
# camera photos load; beyond it a file is refused as a likely decompression bomb.
MAX_PIXELS = 400_000_000


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. 16-bit and float images are scaled, alpha is laid on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            peak = 1.0
        image = Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


class Geometry:
    """How input-image pixels map onto the square frame: frame = (p - crop) * scale + pad."""

    def __init__(self, width: int, height: int, size: int, fit: str, scale: float | None = None):
        self.width, self.height = width, height
        side = min(width, height) if fit == "crop" else max(width, height)
        self.scale = size / side if scale is None else scale
        if fit == "source":  # the whole image, scaled: no crop, no padding
            self.offset = (0, 0)
        elif fit == "crop":
            self.offset = (-((width - side) // 2), -((height - side) // 2))
        else:
            self.offset = ((side - width) // 2, (side - height) // 2)

    def box_to_frame(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """(x, y, w, h) in input-image pixels -> the same box in frame pixels."""
        x, y, w, h = box
        return ((x + self.offset[0]) * self.scale, (y + self.offset[1]) * self.scale, w * self.scale, h * self.scale)


AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif"})


def looks_like_audio(path: str | Path) -> bool:
    """Whether ``path`` is speech by its suffix or its first bytes (RIFF/WAVE, ID3 or an MPEG audio frame,
    fLaC, OggS, FORM/AIFF): used to say "the order is IMAGE AUDIO" when the two are swapped."""
    path = Path(path)
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return (head[:4] == b"RIFF" and head[8:12] == b"WAVE") or head[:3] == b"ID3" or head[:4] in (b"fLaC", b"OggS") \
        or (head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC")) or (len(head) > 1 and head[0] == 0xFF
                                                                          and head[1] & 0xE0 == 0xE0)


def _decode(path: str | Path, draft: int) -> tuple[Image.Image, float]:
    """Open an image file: EXIF orientation applied, JPEGs decoded at a reduced scale of at least
    ``draft`` pixels a side; returns (8-bit RGB image, full width / decoded width).

    Raises:
        InputError: the file is missing, unreadable, not an image, truncated or too large.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path} does not exist; check the path")
    if path.is_dir():
        raise InputError(f"image {path} is a folder; give an image file")
    default_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            with Image.open(path) as opened:
                full_width = opened.size[0]
                if opened.format == "JPEG":  # decode big JPEGs at 1/2..1/8 scale (still >= the draft size)
                    opened.draft("RGB", (draft, draft))
                draft_scale = full_width / opened.size[0]
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        if looks_like_audio(path):
            raise InputError(f"{path} looks like audio, not an image: the order is IMAGE AUDIO "
                             f"(avatar render portrait.png speech.wav)") from None
        raise InputError(f"{path} is not an image Pillow can read; give a PNG, JPEG, WebP, ... portrait") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"image {path} has over {MAX_PIXELS // 1_000_000} million pixels, too many to decode "
                         f"safely; downscale it first") from None
    except PermissionError:
        raise InputError(f"image {path} is not readable (permission denied); check its permissions") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = "truncated or corrupt" if "truncated" in str(err) or "broken" in str(err) else str(err)
        raise InputError(f"image {path} cannot be decoded ({reason}); re-export it") from None
    finally:
        Image.MAX_IMAGE_PIXELS = default_limit
    return _to_rgb(image), draft_scale


def load_source(path: str | Path, max_side: int = 1920, with_geometry: bool = False):
    """Read a portrait at its own aspect ratio, as Ditto loads its source image: decoded as
    :func:`load_portrait` decodes (EXIF, modes), then Ditto's load rule (``media/face_crop.py``
    :func:`fit_source_size`: longest side at most ``max_side``, both sides even).

    Returns:
        (H, W, 3) uint8 RGB; with ``with_geometry`` also the :class:`Geometry` mapping file pixels
        (after EXIF orientation) onto it.

    Raises:
        InputError: as :func:`load_portrait`.
    """
    from .face_crop import fit_source_size

    image, draft_scale = _decode(path, max_side)
    full_width, full_height = round(image.size[0] * draft_scale), round(image.size[1] * draft_scale)
    array = fit_source_size(np.asarray(image, dtype=np.uint8).copy(), max_side)
    geometry = Geometry(full_width, full_height, max_side, "source", scale=array.shape[1] / full_width)
    return (array, geometry) if with_geometry else array


def load_portrait(path: str | Path, size: int = 512, fit: str = "crop", with_geometry: bool = False):
    """Read a portrait image and make it a square of ``size`` pixels.

    Applies the EXIF orientation; converts grayscale, palette, RGBA/LA (on white), CMYK, 16-bit
    and float images to 8-bit RGB; then ``fit="crop"`` cuts the centred largest square, or
    ``fit="pad"`` pads the short side with black to a square; then resizes (Lanczos).

    Args:
        path: image file in any format Pillow reads.
        size: output side in pixels.
        fit: "crop" or "pad".

    Returns:
        (size, size, 3) uint8 RGB array; with ``with_geometry`` also the :class:`Geometry` that
        maps input-image pixels to it (after EXIF orientation).

    Raises:
        InputError: the file is missing, unreadable, not an image or truncated.
    """
    if fit not in FITS:
        raise InputError(f"--fit must be one of {', '.join(FITS)} (got {fit!r})")
    image, draft_scale = _decode(path, 2 * size)
    width, height = image.size
    # --face-box is in the file's pixels: map from the full size, whatever scale JPEG decoding used
    geometry = Geometry(round(width * draft_scale), round(height * draft_scale), size, fit)
    if fit == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    else:
        side = max(width, height)
        canvas = Image.new("RGB", (side, side), (0, 0, 0))
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        image = canvas
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8).copy()
    return (array, geometry) if with_geometry else array
