import numpy as np
import pytest
from PIL import Image

from avatar_cli.errors import InputError
from avatar_cli.media.image import load_portrait


def test_square_rgb_at_its_own_size_is_unchanged(test_data):
    expected = np.asarray(Image.open(test_data / "astronaut.png").convert("RGB"))
    out = load_portrait(test_data / "astronaut.png", size=256)
    assert out.dtype == np.uint8 and out.shape == (256, 256, 3)
    np.testing.assert_array_equal(out, expected)


def test_grayscale_becomes_rgb_with_equal_channels(test_data):
    out = load_portrait(test_data / "cameraman_gray.png", size=128)
    assert out.shape == (128, 128, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_crop_takes_the_centre_and_pad_adds_black_bars(tmp_path):
    # 300 wide x 100 high: red | green | blue thirds.
    rgb = np.zeros((100, 300, 3), np.uint8)
    rgb[:, :100, 0] = 255
    rgb[:, 100:200, 1] = 255
    rgb[:, 200:, 2] = 255
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    crop = load_portrait(tmp_path / "wide.png", size=64, fit="crop")
    assert crop[32, 32].tolist() == [0, 255, 0]          # centre square is the green third
    assert crop[:, :, 0].max() < 30 and crop[:, :, 2].max() < 30
    pad = load_portrait(tmp_path / "wide.png", size=64, fit="pad")
    assert pad[:10].max() == 0 and pad[-10:].max() == 0   # black bars above and below
    assert pad[32, 3].tolist() == [255, 0, 0] and pad[32, 60].tolist() == [0, 0, 255]


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:32, :32] = (255, 0, 0)  # red top-left as stored
    image = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180 to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = load_portrait(tmp_path / "rotated.jpg", size=64)
    assert out[48, 48, 0] > 200 and out[48, 48, 1] < 60  # red is now bottom-right
    assert out[16, 16, 0] < 60


def test_rgba_is_laid_on_white_and_palette_and_cmyk_convert(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 32:, 3] = 255  # left half transparent, right half opaque red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_portrait(tmp_path / "a.png", size=64)
    assert out[10, 5].tolist() == [255, 255, 255] and out[10, 60].tolist() == [255, 0, 0]
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # CMYK red
    cmyk = load_portrait(tmp_path / "c.jpg", size=64)
    assert cmyk[32, 32, 0] > 200 and cmyk[32, 32, 1] < 60
    Image.new("P", (40, 40), 7).save(tmp_path / "p.gif")
    assert load_portrait(tmp_path / "p.gif", size=64).shape == (64, 64, 3)


def test_sixteen_bit_is_scaled_to_eight_bit(tmp_path):
    values = np.full((64, 64), 65535, np.uint16)
    values[:, 32:] = 32896  # 128.5 * 257
    Image.fromarray(values).save(tmp_path / "deep.png")
    out = load_portrait(tmp_path / "deep.png", size=64)
    assert out[5, 5].tolist() == [255, 255, 255]
    assert out[5, 60].tolist() == [128, 128, 128] or out[5, 60].tolist() == [129, 129, 129]


@pytest.mark.parametrize("shape", [(1, 1), (3000, 2000), (300, 451)])
def test_tiny_huge_and_non_square_images_load(tmp_path, shape):
    Image.new("RGB", shape[::-1], (10, 200, 30)).save(tmp_path / "x.png")
    out = load_portrait(tmp_path / "x.png", size=64)
    assert out.shape == (64, 64, 3) and out[32, 32].tolist() == [10, 200, 30]


def test_bad_images_raise_input_errors(tmp_path, test_data):
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    data = (test_data / "astronaut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    cases = {tmp_path / "missing.png": "does not exist", tmp_path: "is a folder",
             tmp_path / "text.png": "not an image", tmp_path / "empty.png": "not an image",
             tmp_path / "cut.png": "truncated"}
    for path, words in cases.items():
        with pytest.raises(InputError, match=words):
            load_portrait(path, size=64)


def test_a_100_megapixel_photo_loads_and_a_decompression_bomb_is_refused(tmp_path):
    import struct
    import zlib

    # 12000 x 8400 (100.8 MP, over Pillow's 89.5 MP default): a left half red, right half blue JPEG
    big = Image.new("RGB", (12000, 8400), (220, 30, 30))
    big.paste((30, 30, 220), (6000, 0, 12000, 8400))
    big.save(tmp_path / "big.jpg", quality=90)
    del big
    out, geometry = load_portrait(tmp_path / "big.jpg", size=64, with_geometry=True)
    assert out.shape == (64, 64, 3)
    assert out[32, 8, 0] > 180 and out[32, 56, 2] > 180  # the crop's left red, right blue
    # a face box in the file's pixels maps through the full size, whatever scale the JPEG decoder used
    assert geometry.box_to_frame((1800, 0, 8400, 8400)) == pytest.approx((0.0, 0.0, 64.0, 64.0))

    # A PNG header claiming 30000 x 30000 pixels (900 MP): refused before any decoding
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                        + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="over 400 million pixels"):
        load_portrait(tmp_path / "bomb.png", size=64)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own limit is left as it was
