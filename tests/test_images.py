"""timm_kan.images: every image Pillow opens becomes 8-bit RGB with its meaning kept, or is refused in one line."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_dataset, create_loader

from timm_kan.images import (BACKGROUND, ImageModeError, ImageReadError, check_image, open_rgb, rgb_transform,
                             to_rgb)

WHITE = BACKGROUND
assert WHITE == (255, 255, 255)


def _px(im: Image.Image) -> np.ndarray:
    assert im.mode == 'RGB'
    return np.asarray(im).astype(int)


# ---- 16-bit and 32-bit integer greyscale: scaled by the 16-bit range, not clipped to 255 ----

def test_16bit_png_ramp_is_scaled_not_clipped(tmp_path):
    path = tmp_path / 'ramp16.png'
    Image.fromarray(np.array([[0, 257 * 100, 65535, 128, 127]], dtype=np.uint16)).save(path)
    with Image.open(path) as raw:
        assert raw.mode == 'I;16'  # how Pillow 13 opens a 16-bit greyscale PNG
        assert np.asarray(raw.convert('RGB'))[0, :, 0].tolist() == [0, 255, 255, 128, 127]  # the naive clip
    px = _px(open_rgb(path))
    assert px.shape == (1, 5, 3)
    assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()
    assert px[0, :, 0].tolist() == [0, 100, 255, 0, 0]  # round(v / 257): 128 -> 0.498 -> 0


def test_16bit_big_endian_and_tiff(tmp_path):
    big = Image.fromarray(np.array([[0, 257 * 7, 65535]], dtype='>u2'))
    assert big.mode == 'I;16B'
    assert _px(to_rgb(big))[0, :, 0].tolist() == [0, 7, 255]
    path = tmp_path / 'ramp16.tif'
    Image.fromarray(np.array([[0, 257 * 200, 65535]], dtype=np.uint16)).save(path)
    assert _px(open_rgb(path))[0, :, 0].tolist() == [0, 200, 255]


def test_mode_I_is_16bit_and_out_of_range_is_refused(tmp_path):
    # Pillow opens a 16-bit PGM as 'I', rescaled to 0..65535 from its maxval
    path = tmp_path / 'ten_bit.pgm'
    path.write_bytes(b'P5\n3 1\n1023\n' + np.array([0, 511, 1023], dtype='>u2').tobytes())
    with Image.open(path) as raw:
        assert raw.mode == 'I'
    assert _px(open_rgb(path))[0, :, 0].tolist() == [0, 127, 255]
    # small values stay small: a dark 16-bit image is not brightened as if it were 8-bit
    dark = Image.fromarray(np.array([[0, 200, 257 * 3]], dtype=np.int32))
    assert dark.mode == 'I'
    assert _px(to_rgb(dark))[0, :, 0].tolist() == [0, 1, 3]
    for values in ([-1, 5], [0, 70000]):
        with pytest.raises(ImageModeError, match=r"^grid\.tif: .*'I'.*outside 0\.\.65535"):
            to_rgb(Image.fromarray(np.array([values], dtype=np.int32)), source='grid.tif')


# ---- 32-bit float ----

def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    path = tmp_path / 'unit.tif'
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)).save(path)
    with Image.open(path) as raw:
        assert raw.mode == 'F'
    assert _px(open_rgb(path))[0, :, 0].tolist() == [0, 128, 255, 64]


def test_float_in_byte_range_is_kept():
    im = Image.fromarray(np.array([[0.0, 100.4, 254.6, 255.0]], dtype=np.float32))
    assert _px(to_rgb(im))[0, :, 1].tolist() == [0, 100, 255, 255]


def test_float_out_of_range_is_refused_naming_the_file(tmp_path):
    path = tmp_path / 'hot.tif'
    Image.fromarray(np.full((2, 2), 500.0, dtype=np.float32)).save(path)
    with pytest.raises(ImageModeError) as info:
        open_rgb(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "'F'" in msg and '500' in msg and 'supported' in msg
    assert '\n' not in msg and isinstance(info.value, ValueError)
    assert check_image(path) == msg
    for bad in (-0.5, float('nan'), float('inf')):
        with pytest.raises(ImageModeError, match="'F'"):
            to_rgb(Image.fromarray(np.array([[0.5, bad]], dtype=np.float32)))


# ---- alpha: composited onto white ----

def test_rgba_png_transparent_pixel_is_white_and_opaque_keeps_colour(tmp_path):
    path = tmp_path / 'rgba.png'
    rgba = np.array([[[255, 0, 0, 0], [10, 200, 30, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba).save(path)
    with Image.open(path) as raw:
        assert raw.mode == 'RGBA'
        assert np.asarray(raw.convert('RGB'))[0, 0].tolist() == [255, 0, 0]  # the naive result: hidden red
    px = _px(open_rgb(path))
    assert px[0, 0].tolist() == list(WHITE)
    assert px[0, 1].tolist() == [10, 200, 30]
    assert px[0, 2].tolist() == [127, 127, 127]  # black at 128/255 over white: 255 * 127 / 255


def test_premultiplied_and_la_modes():
    la = Image.fromarray(np.array([[[40, 255], [40, 0], [0, 51]]], dtype=np.uint8), mode='LA')
    assert _px(to_rgb(la))[0].tolist() == [[40] * 3, [255] * 3, [204] * 3]
    rgba = Image.fromarray(np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 51]]], dtype=np.uint8))
    expected = _px(to_rgb(rgba))
    assert expected[0, 2].tolist() == [(200 * 51 + 255 * 204 + 127) // 255, (100 * 51 + 255 * 204 + 127) // 255,
                                       204]
    # premultiplied forms of the same pixels give the same colours (within the premultiplication rounding)
    assert np.abs(_px(to_rgb(rgba.convert('RGBa'))) - expected).max() <= 1
    assert np.abs(_px(to_rgb(la.convert('La'))) - _px(to_rgb(la))).max() <= 1


def test_la_png(tmp_path):
    path = tmp_path / 'la.png'
    Image.fromarray(np.array([[[90, 255], [90, 0]]], dtype=np.uint8), mode='LA').save(path)
    with Image.open(path) as raw:
        assert raw.mode == 'LA'
    assert _px(open_rgb(path))[0].tolist() == [[90] * 3, list(WHITE)]


def test_palette_png_with_transparent_index(tmp_path):
    path = tmp_path / 'pal.png'
    im = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode='P')
    im.putpalette([255, 0, 0, 0, 0, 255, 0, 128, 0])
    im.save(path, transparency=0)
    with Image.open(path) as raw:
        assert raw.mode == 'P' and raw.info.get('transparency') == 0
        assert np.asarray(raw.convert('RGB'))[0, 0].tolist() == [255, 0, 0]  # the naive result
    assert _px(open_rgb(path))[0].tolist() == [list(WHITE), [0, 0, 255], [0, 128, 0]]
    # a palette PNG without transparency is a plain lookup
    plain = tmp_path / 'pal_plain.png'
    im.save(plain)
    assert _px(open_rgb(plain))[0].tolist() == [[255, 0, 0], [0, 0, 255], [0, 128, 0]]


def test_palette_alpha_pa_and_transparency_colour():
    p = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode='P')
    p.putpalette([255, 0, 0, 0, 0, 0, 255, 255], 'RGBA')  # alpha held in the palette
    assert _px(to_rgb(p))[0].tolist() == [list(WHITE), [0, 0, 255]]
    pa = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode='P')
    pa.putpalette([255, 0, 0, 0, 0, 255])
    pa = pa.convert('PA')
    pa.putalpha(Image.fromarray(np.array([[0, 255]], dtype=np.uint8)))
    assert pa.mode == 'PA'
    assert _px(to_rgb(pa))[0].tolist() == [list(WHITE), [0, 0, 255]]
    rgb = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8))
    rgb.info['transparency'] = (1, 2, 3)  # PNG tRNS colour
    assert _px(to_rgb(rgb))[0].tolist() == [list(WHITE), [4, 5, 6]]
    grey16 = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    grey16.info['transparency'] = 65535
    assert _px(to_rgb(grey16))[0].tolist() == [[0] * 3, list(WHITE)]


# ---- exact conversions ----

def test_cmyk_jpeg_is_roughly_red(tmp_path):
    path = tmp_path / 'red.jpg'
    Image.new('CMYK', (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    with Image.open(path) as raw:
        assert raw.mode == 'CMYK'
    px = _px(open_rgb(path))
    assert np.abs(px - np.array([255, 0, 0])).max() <= 12


def test_one_bit_and_other_exact_modes(tmp_path):
    path = tmp_path / 'bits.png'
    Image.fromarray(np.array([[True, False]])).save(path)
    with Image.open(path) as raw:
        assert raw.mode == '1'
    assert _px(open_rgb(path))[0].tolist() == [[255] * 3, [0] * 3]
    assert _px(to_rgb(Image.new('L', (1, 1), 77)))[0, 0].tolist() == [77] * 3
    ycc = Image.new('RGB', (1, 1), (30, 120, 220)).convert('YCbCr')
    assert np.abs(_px(to_rgb(ycc))[0, 0] - [30, 120, 220]).max() <= 3
    hsv = Image.new('RGB', (1, 1), (30, 120, 220)).convert('HSV')
    assert np.abs(_px(to_rgb(hsv))[0, 0] - [30, 120, 220]).max() <= 5  # 8-bit hue steps of 1.4 degrees
    # Pillow's LAB holds a* and b* offset by 128; sRGB red is L*a*b* (53.2, 80.1, 67.2)
    lab_red = Image.new('LAB', (1, 1), (136, 208, 195))
    assert np.abs(_px(to_rgb(lab_red))[0, 0] - [255, 0, 0]).max() <= 12
    assert _px(to_rgb(Image.new('LAB', (1, 1), (255, 128, 128))))[0, 0].min() >= 250
    assert to_rgb(Image.new('RGBX', (1, 1), (1, 2, 3, 0))).getpixel((0, 0)) == (1, 2, 3)


def test_rgb_is_returned_unchanged():
    im = Image.new('RGB', (2, 2), (9, 8, 7))
    assert to_rgb(im) is im


# ---- unreadable files ----

def test_truncated_png_fails_naming_the_file(tmp_path):
    path = tmp_path / 'cut.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        open_rgb(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and '\n' not in msg and isinstance(info.value, OSError)
    reason = check_image(path)
    assert reason == msg


def test_check_image(tmp_path):
    good = tmp_path / 'good.png'
    Image.new('RGBA', (4, 4), (1, 2, 3, 4)).save(good)
    assert check_image(good) is None
    assert check_image(str(good)) is None
    text = tmp_path / 'notes.png'
    text.write_text('not an image')
    missing = tmp_path / 'missing.png'
    for bad in (text, missing):
        reason = check_image(bad)
        assert isinstance(reason, str) and reason.startswith(str(bad)) and '\n' not in reason


def test_unsupported_mode_names_source_mode_and_what_is_supported():
    im = Image.new('L', (1, 1))
    im._mode = 'BGR;15'  # a mode Pillow no longer builds; stands for anything unknown
    with pytest.raises(ImageModeError) as info:
        to_rgb(im, source='odd.bmp')
    msg = str(info.value)
    assert msg.startswith('odd.bmp: ') and "'BGR;15'" in msg and 'supported: RGB' in msg and '\n' not in msg


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='needs /proc/self/fd')
def test_no_leaked_file_descriptors(tmp_path):
    tif = tmp_path / 'multi.tif'  # Pillow's load() leaves multi-frame files open
    Image.new('L', (4, 4), 5).save(tif, save_all=True, append_images=[Image.new('L', (4, 4), 6)])
    rgb = tmp_path / 'plain.png'
    Image.new('RGB', (4, 4), (1, 2, 3)).save(rgb)
    cut = tmp_path / 'cut.png'
    cut.write_bytes(rgb.read_bytes()[:40])
    before = len(os.listdir('/proc/self/fd'))
    for _ in range(5):
        assert _px(open_rgb(tif))[0, 0].tolist() == [5] * 3
        assert _px(open_rgb(rgb))[0, 0].tolist() == [1, 2, 3]  # usable after its file was closed
        assert check_image(cut) is not None
    assert len(os.listdir('/proc/self/fd')) == before


# ---- wiring into timm ----

def test_rgb_transform_with_timm_dataset_and_loader(tmp_path):
    root = tmp_path / 'data'
    (root / 'a').mkdir(parents=True)
    (root / 'b').mkdir()
    Image.fromarray(np.full((8, 8), 257 * 100, dtype=np.uint16)).save(root / 'a' / 'grey16.png')
    Image.fromarray(np.tile(np.array([255, 0, 0, 0], dtype=np.uint8), (8, 8, 1))).save(root / 'b' / 'clear.png')
    ds = create_dataset('', root=str(root), input_img_mode=None)
    img, _ = ds[0]
    assert img.mode == 'I;16'  # input_img_mode=None hands over the PIL image unconverted
    marker = rgb_transform(None)
    ds.transform = marker
    loader = create_loader(ds, input_size=(3, 8, 8), batch_size=2, is_training=False, use_prefetcher=False,
                           num_workers=0, mean=(0, 0, 0), std=(1, 1, 1), crop_pct=1.0, device=torch.device('cpu'))
    assert ds.transform is not marker  # create_loader replaced it: wrap after create_loader
    ds.transform = rgb_transform(ds.transform)
    assert rgb_transform(ds.transform) is ds.transform  # not wrapped twice
    pickle.loads(pickle.dumps(ds.transform))  # spawn-started workers must be able to receive it
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0, 1]
    assert torch.allclose(x[0], torch.full_like(x[0], 100 / 255), atol=1e-6)
    assert torch.allclose(x[1], torch.ones_like(x[1]))  # transparent red is white, not red


def test_rgb_transform_names_the_file_of_a_truncated_image(tmp_path):
    path = tmp_path / 'cut.png'
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with open(path, 'rb') as f:  # as timm's folder reader passes it: a file object, so Pillow's filename is ''
        im = Image.open(f)
        with pytest.raises(ImageReadError, match='^' + str(Path(path)).replace('\\', r'\\')):
            rgb_transform(lambda x: x)(im)
