"""The demo's two real transforms, as plain functions and as ETL server classes.

- thumbnail: decode an image with Pillow, bound it to 256x256 (aspect kept,
  ``Image.thumbnail``), flatten any transparency onto white, convert to RGB and
  encode JPEG at quality 85. An image with more pixels than
  ``PIL.Image.MAX_IMAGE_PIXELS`` raises ``PIL.Image.DecompressionBombError``
  before any pixel is decoded. (Pillow by itself only *warns* between 1x and 2x
  that limit and raises above 2x; the openclipart set has eleven 168-megapixel
  images in that band, each costing ~700 MB to decode, so every image over the
  limit is refused here.)
- zstd: compress with zstandard at level 3 (the frame records the content size).

Both are deterministic: the same input bytes and the same library versions give
the same output bytes, so a result fetched from the cluster can be checked
against :func:`thumbnail_jpeg` / :func:`zstd_compress` run locally.

:class:`ThumbnailETL` and :class:`ZstdETL` subclass the official SDK's
``FastAPIServer``, so ``client.etl(name).init_class(dependencies=[...])(Cls)``
accepts them; their ``transform`` lets exceptions propagate, which the ETL
server turns into a per-object error (the job, run with ``cont_on_err``, goes on).
Pod dependencies: ``["Pillow"]`` and ``["zstandard"]`` (:data:`DEPENDENCIES`).
"""

from __future__ import annotations

import io
import warnings

import zstandard
from aistore.sdk.etl.webserver.fastapi_server import FastAPIServer
from PIL import Image

__all__ = [
    "DEPENDENCIES",
    "JPEG_QUALITY",
    "THUMB_SIZE",
    "ZSTD_LEVEL",
    "ThumbnailETL",
    "ZstdETL",
    "thumbnail_jpeg",
    "zstd_compress",
    "zstd_decompress",
]

THUMB_SIZE = (256, 256)
JPEG_QUALITY = 85
ZSTD_LEVEL = 3
#: pod-side PyPI packages per ETL class name (``init_class(dependencies=...)``)
DEPENDENCIES = {"ThumbnailETL": ["Pillow"], "ZstdETL": ["zstandard"]}


def _open_checked(data: bytes) -> Image.Image:
    """Open (header only) and refuse images over ``Image.MAX_IMAGE_PIXELS``."""
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        # Pillow warns between 1x and 2x the limit; make that the same error as above 2x
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombWarning as e:
            raise Image.DecompressionBombError(str(e)) from None
    if limit is not None and im.width * im.height > limit:  # catch_warnings is process-global: re-check
        im.close()
        raise Image.DecompressionBombError(
            f"Image size ({im.width * im.height} pixels) exceeds limit of {limit} pixels, "
            "could be decompression bomb DOS attack."
        )
    return im


def thumbnail_jpeg(data: bytes) -> bytes:
    """A JPEG thumbnail (at most 256x256, RGB, quality 85) of an encoded image.

    Args:
        data: the encoded image (any format Pillow reads).

    Returns:
        JPEG bytes; deterministic for given input and Pillow version.

    Raises:
        PIL.Image.DecompressionBombError: more pixels than ``Image.MAX_IMAGE_PIXELS``.
        PIL.UnidentifiedImageError, OSError: not a readable image.
    """
    with _open_checked(data) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
        elif im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        im.thumbnail(THUMB_SIZE)
        if im.mode == "RGBA":
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


def zstd_compress(data: bytes) -> bytes:
    """zstandard level 3, one frame with the content size; deterministic for a given zstd version."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


def zstd_decompress(data: bytes) -> bytes:
    """Inverse of :func:`zstd_compress`.

    Raises:
        zstandard.ZstdError: not a valid frame.
    """
    return zstandard.ZstdDecompressor().decompress(data)


def _read(data: bytes | str) -> bytes:
    """With ``direct_file_access`` the first stage gets a file path instead of bytes."""
    if isinstance(data, str):
        with open(data, "rb") as f:
            return f.read()
    return data


class ThumbnailETL(FastAPIServer):
    """ETL server: image -> JPEG thumbnail (:func:`thumbnail_jpeg`); errors are per object."""

    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        return thumbnail_jpeg(_read(data))

    def get_mime_type(self) -> str:
        return "image/jpeg"


class ZstdETL(FastAPIServer):
    """ETL server: bytes -> zstd frame (:func:`zstd_compress`)."""

    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        return zstd_compress(_read(data))

    def get_mime_type(self) -> str:
        return "application/zstd"
