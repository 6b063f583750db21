"""Sniffing and decoding input images: JPEG, PNG and WebP only, with a pixel cap."""

from __future__ import annotations

from io import BytesIO

from PIL import Image, ImageOps

from openimagine.imagetypes import sniff_image_type
from openimagine.inputs.refs import UnsupportedImage

_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes into an upright RGB image.

    The pixel count is checked from the header before any pixel is decoded, so
    a small file claiming huge dimensions (a decompression bomb) costs nothing.
    """
    kind = sniff_image_type(data)
    if kind is None:
        raise UnsupportedImage("not JPEG, PNG or WebP by its magic bytes")
    try:
        # ``formats`` keeps Pillow from trying every other plugin on these bytes.
        with Image.open(BytesIO(data), formats=[_PIL_FORMATS[kind]]) as image:
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise UnsupportedImage(
                    f"{width}x{height} image is over the {max_pixels} pixel limit"
                )
            image.load()
            return upright_rgb(image)
    except UnsupportedImage:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own global guard (Image.MAX_IMAGE_PIXELS). Its warning is not
        # turned into an error here: warnings filters are process-wide and not
        # thread-safe, and the explicit check above already runs first.
        raise UnsupportedImage(f"decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        # Pillow reports truncated and corrupt data with any of these.
        raise UnsupportedImage(f"cannot decode {kind}: {exc}") from exc


def upright_rgb(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF says and flattened to RGB: the one place images
    become RGB (input decoding and the preview engine alike)."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken EXIF must not reject a good picture
        upright = image
    if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
        # Flatten onto white: dropping alpha would turn transparent areas into
        # whatever colour the hidden pixels happen to hold (often black).
        rgba = upright.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return upright.convert("RGB")
