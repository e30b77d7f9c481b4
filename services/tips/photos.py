"""Photo attachments of tips, re-encoded so that nothing but the pixels survives.

A phone photo carries the tipster's identity: EXIF GPS coordinates, the camera's serial number,
maker notes, XMP, text chunks, ICC profiles naming a device. The only safe copy is a new image
made from the decoded pixels: the type is taken from the bytes (never from the declared type),
sizes are bounded before decoding (decompression bombs), the EXIF orientation is applied, and
the pixels are written to a fresh JPEG, PNG or WebP with no metadata at all.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from safehub.kernel.errors import SafeHubError

__all__ = ["ACCEPTED_MIME", "CleanImage", "PhotoRejectedError", "clean_image"]

# Pillow logs every EXIF tag it reads at DEBUG, values and all (GPS, device serials): a
# service logging at DEBUG must not write a photo's metadata into its logs.
logging.getLogger("PIL").setLevel(logging.INFO)

#: Pillow format → the MIME type it is served as. Only these decoders are ever run on upload.
ACCEPTED_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
#: ISO BMFF brands of HEIF/HEIC and AVIF (what iPhones send by default).
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif"}
JPEG_QUALITY = 85


class PhotoRejectedError(SafeHubError):
    """An upload that is not an acceptable photo; ``field`` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field


@dataclass(frozen=True)
class CleanImage:
    """A re-encoded photo with no metadata."""

    data: bytes
    mime: str
    width: int
    height: int


def _is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def _to_srgb(image: Image.Image) -> Image.Image:
    """Colours kept when the ICC profile is dropped: wide-gamut (Display P3) becomes sRGB."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA"):
        return image
    try:
        converted = ImageCms.profileToProfile(
            image,
            ImageCms.ImageCmsProfile(io.BytesIO(icc)),
            ImageCms.createProfile("sRGB"),
            outputMode=image.mode,
        )
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # an unreadable profile: the pixels as they are
    assert converted is not None  # profileToProfile returns None only with inPlace=True
    return converted


def _output_mode(image: Image.Image, fmt: str) -> str:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if fmt == "JPEG":
        return "L" if image.mode in ("1", "L") else "RGB"
    if fmt == "PNG" and image.mode in ("1", "L", "I;16"):
        return image.mode
    return "RGBA" if has_alpha else "RGB"


def _fresh(image: Image.Image, mode: str) -> Image.Image:
    """A new image holding only ``image``'s pixels: no info, no palette, no EXIF object."""
    pixels = image.convert(mode) if image.mode != mode else image
    return Image.frombytes(mode, pixels.size, pixels.tobytes())


def _normal_mime(declared: str) -> str:
    mime = declared.split(";", 1)[0].strip().lower()
    return _ALIASES.get(mime, mime)


def clean_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    declared_mime: str | None = None,
    field: str = "photo",
    mime_field: str = "content_type",
) -> CleanImage:
    """Check ``data`` is a JPEG, PNG or WebP within the limits, and re-encode it bare.

    ``declared_mime`` is what the client said it sent: checked against the bytes, never used
    to choose a decoder. Errors name ``field`` (or ``mime_field``) and the limit broken.
    """
    if not data:
        raise PhotoRejectedError(field, "is empty")
    if len(data) > max_bytes:
        raise PhotoRejectedError(field, f"must be at most {max_bytes} bytes")
    if _is_heif(data):
        raise PhotoRejectedError(
            field, "is a HEIC/HEIF or AVIF image, which is not supported: send JPEG, PNG or WebP"
        )
    try:
        # Pillow raises past twice its own MAX_IMAGE_PIXELS (and only warns below that: the
        # check on max_pixels below refuses those; warnings.catch_warnings is not thread-safe).
        image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_MIME))
    except Image.DecompressionBombError:
        raise PhotoRejectedError(field, f"must have at most {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise PhotoRejectedError(field, "is not a JPEG, PNG or WebP image") from None
    with image:
        fmt = image.format or ""
        mime = ACCEPTED_MIME[fmt]
        if declared_mime is not None and _normal_mime(declared_mime) != mime:
            raise PhotoRejectedError(mime_field, f"does not match the content ({mime})")
        width, height = image.size
        # Checked on the header, before a single pixel is decoded.
        if width < 1 or height < 1 or width * height > max_pixels:
            raise PhotoRejectedError(field, f"must have at most {max_pixels} pixels")
        try:
            # Only the first frame of an animation is kept (a photo, not a clip).
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image) or image  # None only with in_place=True
            clean = _fresh(_to_srgb(upright), _output_mode(upright, fmt))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            raise PhotoRejectedError(field, "is truncated or corrupt") from None
    out = io.BytesIO()
    if fmt == "JPEG":
        clean.save(out, "JPEG", quality=JPEG_QUALITY)
    elif fmt == "PNG":
        clean.save(out, "PNG")
    else:
        clean.save(out, "WEBP", quality=JPEG_QUALITY)
    return CleanImage(out.getvalue(), mime, clean.width, clean.height)
