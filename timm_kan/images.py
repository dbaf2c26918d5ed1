"""Open any image Pillow can open as an 8-bit RGB image without losing its meaning, or refuse it in one line.

``Image.open(f).convert('RGB')`` (what timm's ``ImageDataset`` and a naive predict do) clips 16-bit and 32-bit
greyscale to 255 (white images), clips float images, drops alpha so transparent pixels show whatever colour was
stored under them, and drops palette transparency. Here instead:

* ``'RGB'`` is returned unchanged; ``'L'``, ``'1'``, ``'CMYK'``, ``'YCbCr'``, ``'LAB'``, ``'HSV'`` and ``'RGBX'``
  (padding byte) go through Pillow's own formula conversions (ICC profiles are not applied, as in timm);
* 16-bit integer modes (``'I;16'``, ``'I;16L'``, ``'I;16B'``, ``'I;16N'``) are scaled by their full 16-bit range:
  ``round(value / 257)``, so 0 -> 0, 257 * 100 -> 100, 65535 -> 255;
* ``'I'`` (32-bit int) is treated as 16-bit data too when every value lies in 0..65535: Pillow uses ``'I'`` for
  16-bit PGM/PPM (rescaled by Pillow to 0..65535 from the file's maxval) and older Pillow versions used it for
  16-bit PNG. It is *not* treated as 8-bit when its values happen to lie in 0..255: that would brighten a dark
  16-bit image 257 times. ``'I'`` with negative values or values above 65535 has no nominal range and is refused;
* ``'F'`` (32-bit float) with every value in [0, 1] is scaled by 255, with values in [0, 255] kept (rounded);
  anything else (negative, above 255, NaN or infinite) is refused. A float image in [0, 255] whose values all
  happen to be <= 1 is read as [0, 1] data: the values cannot tell the two apart;
* images with alpha (``'RGBA'``, ``'LA'``, ``'La'``, ``'RGBa'``, ``'PA'``, ``'P'`` with a ``'transparency'`` entry
  or an RGBA palette, and ``'1'``/``'L'``/``'RGB'``/16-bit images with a ``'transparency'`` colour) are
  composited onto a **white** background (:data:`BACKGROUND`): white is what browsers and image viewers show under
  transparency and what product/photo data sets assume;
* any other mode raises :class:`ImageModeError`.

:func:`open_rgb` opens, fully decodes (truncated files fail there, naming the file) and closes a file;
:func:`check_image` gives the one-line reason a file is unusable (or ``None``); :func:`rgb_transform` puts
:func:`to_rgb` in front of a torchvision/timm transform for datasets created with ``input_img_mode=None``.
EXIF orientation is not applied (timm does not apply it either).
"""
import os
from typing import Any, Callable, Optional, Union

import numpy as np
from PIL import Image

__all__ = ['ImageModeError', 'ImageReadError', 'BACKGROUND', 'SUPPORTED_MODES', 'to_rgb', 'open_rgb',
           'check_image', 'rgb_transform']

PathLike = Union[str, 'os.PathLike[str]']

BACKGROUND = (255, 255, 255)  # what transparent pixels become (white)

_EXACT = ('1', 'L', 'CMYK', 'YCbCr', 'LAB', 'HSV', 'RGBX')  # Pillow's formula conversions lose nothing we keep
_INT16 = ('I;16', 'I;16L', 'I;16B', 'I;16N')
_ALPHA = ('RGBA', 'LA', 'La', 'RGBa', 'PA')
SUPPORTED_MODES = ('RGB',) + _EXACT + _INT16 + ('I', 'F') + _ALPHA + ('P',)
_SUPPORTED_TEXT = ("supported: RGB, 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX, alpha modes (RGBA, LA, La, RGBa, PA), "
                   "16-bit I;16* and I within 0..65535, F within [0, 1] or [0, 255]")


def _one_line(text: Any) -> str:
    return ' '.join(str(text).split())


class ImageModeError(ValueError):
    """An image whose mode (or value range) has no faithful 8-bit RGB form; the message is one line."""

    def __init__(self, source: str, mode: str, detail: str = ''):
        self.source, self.mode = source, mode
        what = f'image mode {mode!r}' + (f' {detail}' if detail else '')
        super().__init__(_one_line(f'{source}: cannot convert {what} to RGB without losing its meaning; '
                                   f'{_SUPPORTED_TEXT}'))


class ImageReadError(OSError):
    """A file that cannot be opened or fully decoded (missing, not an image, truncated); one-line message."""

    def __init__(self, source: str, cause: BaseException):
        self.source = source
        super().__init__(_one_line(f'{source}: cannot read image ({type(cause).__name__}: {cause})'))


def _source_of(im: Image.Image, default: str = 'image') -> str:
    """The file an image came from, for messages: Pillow leaves ``filename`` empty for file objects (timm's
    folder reader passes ``open(path, 'rb')``), whose ``name`` still holds the path."""
    name = getattr(im, 'filename', '') or getattr(getattr(im, 'fp', None), 'name', '')
    return os.fspath(name) if isinstance(name, (str, os.PathLike)) and name else default


def _load(im: Image.Image, source: str) -> None:
    try:
        im.load()
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib/struct errors...
        raise ImageReadError(source, e) from e


def _composite(colour: np.ndarray, alpha: np.ndarray, premultiplied: bool = False) -> Image.Image:
    """Colour (H, W, 3) uint8 over :data:`BACKGROUND` with alpha (H, W) uint8, rounded to nearest."""
    c = colour.astype(np.uint32)
    a = alpha.astype(np.uint32)[..., None]
    bg = np.asarray(BACKGROUND, dtype=np.uint32)
    if premultiplied:  # colour already holds c * a / 255
        out = c * 255 + bg * (255 - a)
    else:
        out = c * a + bg * (255 - a)
    return Image.fromarray(((out + 127) // 255).astype(np.uint8))  # 'RGB' from (H, W, 3) uint8


def _grey_to_rgb(grey: np.ndarray, alpha: Optional[np.ndarray]) -> Image.Image:
    if alpha is None:
        return Image.fromarray(grey).convert('RGB')  # 'L' from (H, W) uint8
    return _composite(np.repeat(grey[..., None], 3, axis=2), alpha)


def _trns_alpha(values: np.ndarray, im: Image.Image) -> Optional[np.ndarray]:
    """Alpha for a greyscale image whose 'transparency' entry names one transparent value (PNG tRNS)."""
    trns = im.info.get('transparency')
    if not isinstance(trns, (int, np.integer)) or isinstance(trns, bool):
        return None
    return np.where(values == trns, 0, 255).astype(np.uint8)


def _int_to_rgb(im: Image.Image, source: str) -> Image.Image:
    values = np.asarray(im)
    if im.mode == 'I' and values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > 65535:  # a 16-bit container is the only nominal range we can assume for 'I'
            raise ImageModeError(source, im.mode, f'with values in [{lo}, {hi}] (outside 0..65535)')
    # full 16-bit range to 8 bits: round(v / 257), exact at 0 and 65535 since 65535 = 255 * 257
    grey = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return _grey_to_rgb(grey, _trns_alpha(values, im))


def _float_to_rgb(im: Image.Image, source: str) -> Image.Image:
    values = np.asarray(im, dtype=np.float64)
    if values.size:
        if not np.isfinite(values).all():
            raise ImageModeError(source, im.mode, 'with NaN or infinite values')
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > 255:
            raise ImageModeError(source, im.mode, f'with values in [{lo:g}, {hi:g}] (outside [0, 1] and [0, 255])')
        if hi <= 1:  # normalised data: 1.0 is full white
            values = values * 255
    grey = np.floor(values + 0.5).clip(0, 255).astype(np.uint8)
    return _grey_to_rgb(grey, None)


def _has_alpha(im: Image.Image) -> bool:
    if im.mode in _ALPHA:
        return True
    if im.mode == 'P' and getattr(im.palette, 'mode', '') == 'RGBA':  # alpha lives in the palette itself
        return True
    return im.mode in ('1', 'L', 'RGB', 'P') and 'transparency' in im.info


def to_rgb(im: Image.Image, source: Optional[str] = None) -> Image.Image:
    """``im`` as an 8-bit ``'RGB'`` image that means the same thing (see the module docstring for each mode).

    ``'RGB'`` without a transparency colour is returned as is (the same object); every other mode gives a new
    image. Transparent pixels become :data:`BACKGROUND` (white). ``source`` names the image in messages
    (default: its file name, else ``'image'``). Raises :class:`ImageModeError` (a ``ValueError``) for a mode or
    value range without a faithful 8-bit form, and :class:`ImageReadError` (an ``OSError``) when a lazily opened
    file fails to decode.
    """
    source = source or _source_of(im)
    mode = im.mode
    if mode not in SUPPORTED_MODES:
        raise ImageModeError(source, mode)
    _load(im, source)  # a lazily opened file fails here, named, and not inside the next transform
    if mode == 'RGB' and 'transparency' not in im.info:
        return im
    if mode in _INT16 or mode == 'I':
        return _int_to_rgb(im, source)
    if mode == 'F':
        return _float_to_rgb(im, source)
    if _has_alpha(im):
        if mode == 'RGBa':
            rgba = np.asarray(im)
            return _composite(rgba[..., :3], rgba[..., 3], premultiplied=True)
        if mode == 'La':
            la = np.asarray(im)
            return _composite(np.repeat(la[..., :1], 3, axis=2), la[..., 1], premultiplied=True)
        # Pillow's RGBA conversion applies 'transparency' entries, RGBA palettes and PA alpha
        rgba = np.asarray(im.convert('RGBA'))
        return _composite(rgba[..., :3], rgba[..., 3])
    return im.convert('RGB')  # exact modes and 'P' without transparency


def open_rgb(path: PathLike) -> Image.Image:
    """Open ``path``, decode it fully and return it as 8-bit RGB (:func:`to_rgb`); the file is closed on return.

    Raises :class:`ImageReadError` (an ``OSError``) naming the file when it is missing, not an image, truncated or
    corrupt, and :class:`ImageModeError` (a ``ValueError``) when its mode or values have no faithful RGB form.
    Multi-frame files give their first frame. Truncated files fail unless ``ImageFile.LOAD_TRUNCATED_IMAGES``
    was switched on elsewhere.
    """
    source = os.fspath(path)
    try:
        im = Image.open(source)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise ImageReadError(source, e) from e
    with im:  # closes the file even for multi-frame formats (TIFF, GIF) that load() leaves open
        _load(im, source)
        out = to_rgb(im, source)
        if out is im:
            out = im.copy()  # closing destroys the pixels of ``im`` itself
    return out


def check_image(path: PathLike) -> Optional[str]:
    """``None`` when :func:`open_rgb` can read ``path``, else the one-line reason. Decodes the whole image (slower
    than ``Image.verify()``, but catches truncated data and unsupported modes) and keeps nothing."""
    try:
        open_rgb(path).close()
    except (ImageModeError, ImageReadError) as e:
        return str(e)
    return None


class _RGBFirst:
    """``img -> transform(to_rgb(img))``; a module-level class, so DataLoader workers can pickle it (spawn)."""

    def __init__(self, transform: Optional[Callable[[Image.Image], Any]]):
        self.transform = transform

    def __call__(self, img: Image.Image) -> Any:
        rgb = to_rgb(img)
        return rgb if self.transform is None else self.transform(rgb)

    def __repr__(self) -> str:
        return f'rgb_transform({self.transform!r})'


def rgb_transform(transform: Optional[Callable[[Image.Image], Any]]) -> Callable[[Image.Image], Any]:
    """A callable ``img -> transform(to_rgb(img))`` (``transform`` may be ``None``) for datasets that hand over the
    PIL image unconverted, i.e. timm's ``create_dataset(..., input_img_mode=None)``.

    timm's ``create_loader`` replaces ``dataset.transform`` with its own ``create_transform(...)``, so wrap *after*
    it and before the first iteration (workers copy the dataset when they start)::

        ds = create_dataset('', root=root, split='train', is_training=True, input_img_mode=None)
        loader = create_loader(ds, input_size=(3, 224, 224), batch_size=64, is_training=True)
        ds.transform = rgb_transform(ds.transform)

    Wrapping an already wrapped transform does not wrap it twice.
    """
    if isinstance(transform, _RGBFirst):
        return transform
    return _RGBFirst(transform)
