import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convvis
from convvis import Preprocessing

SMALL = Preprocessing(input_size=32, resize_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def rgb_array(h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---- the sample photos and their annotations ---------------------------------------------------


def test_samples_and_annotations_agree():
    names = convvis.sample_names()
    ann = convvis.load_annotations()
    assert 15 <= len(names) <= 25
    assert set(names) == set(ann)
    assert sum(len(a["objects"]) > 1 for a in ann.values()) >= 2  # a few photos with two objects
    for n in names:
        w, h = Image.open(convvis.sample_path(n)).size
        for obj in ann[n]["objects"]:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (n, obj)
            assert obj["classes"] and all(0 <= c < 1000 for c in obj["classes"])


def test_data_readme_covers_every_photo():
    text = (convvis.data_dir() / "README.md").read_text()
    for n in convvis.sample_names():
        assert n in text, f"data/README.md does not give the origin of {n}"


def test_sample_by_stem_or_file_name():
    assert convvis.sample_path("cat") == convvis.sample_path("cat.png")
    with pytest.raises(FileNotFoundError, match="samples are:.*cat"):
        convvis.sample_path("unicorn")


# ---- preprocessing -----------------------------------------------------------------------------


def test_load_image_shape_dtype_range(net):
    x = convvis.load_image("cat", net)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0  # mean = std = 0.5 maps [0, 1] to [-1, 1]
    assert x.device == net.device


def test_round_trip_is_exact_without_resizing():
    arr = rgb_array()
    x = convvis.load_image(arr, SMALL)
    back = convvis.deprocess(x[0], SMALL)
    np.testing.assert_allclose(back, arr / 255.0, atol=1e-5)
    assert convvis.deprocess(x, SMALL).shape == (1, 32, 32, 3)


def test_normalisation_is_per_channel():
    arr = np.full((32, 32, 3), 0.5, dtype=np.float32)
    x = convvis.load_image(arr, SMALL)[0]
    expected = (0.5 - np.array(SMALL.mean)) / np.array(SMALL.std)
    np.testing.assert_allclose(x.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)


def test_resize_then_centre_crop():
    # a 64x128 photo with black outer eighths: resized to 32x64, the black is columns 0-3 and
    # 60-63, and the centre crop (columns 16-47) must be white all through
    arr = np.full((64, 128, 3), 255, dtype=np.uint8)
    arr[:, :16] = 0
    arr[:, 112:] = 0
    photo = convvis.deprocess(convvis.load_image(arr, SMALL)[0], SMALL)
    assert photo.shape == (32, 32, 3)
    assert photo.min() > 0.99
    # and a photo that is black except in the cropped-away margins comes out black
    arr2 = 255 - arr
    assert convvis.deprocess(convvis.load_image(arr2, SMALL)[0], SMALL).max() < 0.01


def test_source_is_not_modified(net):
    arr = rgb_array(40, 50)
    copy = arr.copy()
    t = torch.rand(3, 40, 50)
    tcopy = t.clone()
    convvis.load_images([arr, t], net)
    np.testing.assert_array_equal(arr, copy)
    assert torch.equal(t, tcopy)


def test_load_images_wants_a_list(net):
    with pytest.raises(TypeError, match="list"):
        convvis.load_images("cat", net)
    with pytest.raises(ValueError, match="no image"):
        convvis.load_images([], net)
    with pytest.raises(TypeError, match="LoadedModel or Preprocessing"):
        convvis.load_image("cat", {"input_size": 224})


# ---- odd but valid inputs ----------------------------------------------------------------------


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(rgb_array()[..., 0])
    assert gray.mode == "L"
    p = convvis.to_photo(gray)
    assert p.shape == (32, 32, 3)
    assert np.array_equal(p[..., 0], p[..., 1]) and np.array_equal(p[..., 1], p[..., 2])
    assert convvis.to_photo(np.asarray(gray)).shape == (32, 32, 3)
    assert convvis.load_image("cameraman", SMALL).shape == (1, 3, 32, 32)  # a real grayscale file


def test_rgba_composites_over_white():
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red
    arr[0, 0, 3] = 255  # one opaque pixel, the rest fully transparent
    arr[0, 1, 3] = 128
    p = convvis.to_photo(Image.fromarray(arr, "RGBA"))
    np.testing.assert_allclose(p[0, 0], [1, 0, 0])
    np.testing.assert_allclose(p[1, 1], [1, 1, 1])
    np.testing.assert_allclose(p[0, 1], [1, 127 / 255, 127 / 255], atol=1e-6)
    np.testing.assert_allclose(convvis.to_photo(arr), p)


def test_palette_image_matches_its_rgb_version():
    rgb = Image.fromarray(rgb_array())
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    np.testing.assert_allclose(convvis.to_photo(pal), convvis.to_photo(pal.convert("RGB")))


def test_sixteen_bit_images_are_scaled(tmp_path):
    arr16 = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    np.testing.assert_allclose(convvis.to_photo(arr16)[..., 0], arr16 / 65535.0, atol=1e-6)
    path = tmp_path / "deep.png"
    Image.fromarray(np.tile(arr16, (8, 8))).save(path)
    p = convvis.to_photo(path)
    assert p.shape == (16, 16, 3)
    np.testing.assert_allclose(p[:2, :2, 0], arr16 / 65535.0, atol=1e-6)


def test_tensor_sources():
    t = torch.rand(3, 20, 30)
    np.testing.assert_allclose(convvis.to_photo(t), t.permute(1, 2, 0).numpy(), atol=1e-7)
    assert convvis.to_photo(torch.rand(1, 3, 20, 30)).shape == (20, 30, 3)
    assert convvis.to_photo((t * 255).to(torch.uint8)).shape == (20, 30, 3)


# ---- bad inputs get errors that name the problem ------------------------------------------------


@pytest.mark.parametrize(
    "bad, exc, pattern",
    [
        (np.zeros((8, 8, 2), np.uint8), ValueError, r"shape.*\(8, 8, 2\)"),
        (np.zeros((3, 32, 32), np.uint8), ValueError, r"shape.*\(3, 32, 32\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), ValueError, "shape"),
        (np.zeros(5, np.uint8), ValueError, "shape"),
        (np.zeros((8, 8, 3), np.int64), TypeError, "int64"),
        (np.zeros((8, 8, 3), bool), TypeError, "bool"),
        (np.full((8, 8, 3), 255.0), ValueError, r"\[0, 1\]"),
        (np.full((8, 8, 3), np.nan), ValueError, "NaN"),
        (torch.zeros(2, 3, 8, 8), ValueError, "batch of 2"),
        (torch.zeros(8, 8, 3), ValueError, r"\(C,H,W\)"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), TypeError, "int32"),
        ([1, 2, 3], TypeError, "list"),
    ],
)
def test_bad_arrays_and_types(bad, exc, pattern):
    with pytest.raises(exc, match=pattern):
        convvis.to_photo(bad)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image file"):
        convvis.to_photo(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not an image file"):
        convvis.to_photo(text)
    with pytest.raises(IsADirectoryError):
        convvis.to_photo(tmp_path)
    with pytest.raises(ValueError, match="URL"):
        convvis.to_photo("https://example.com/cat.jpg")


def test_deprocess_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(3,H,W\)"):
        convvis.deprocess(torch.zeros(1, 8, 8), SMALL)
    with pytest.raises(TypeError, match="tensor"):
        convvis.deprocess(np.zeros((3, 8, 8)), SMALL)


def test_preprocessing_validates():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(interpolation="nearest")
    with pytest.raises(ValueError, match="resize_size"):
        Preprocessing(input_size=224, resize_size=200)


# ---- boxes -------------------------------------------------------------------------------------


def test_box_to_input(net):
    # 512x512 photo: scale 0.5 to 256, crop offset 16
    assert convvis.box_to_input([0, 0, 512, 512], (512, 512), net) == (0, 0, 224, 224)
    assert convvis.box_to_input([100, 100, 200, 200], (512, 512), net) == (34, 34, 84, 84)
    # entirely in the cropped-away margin: zero width
    x0, _, x1, _ = convvis.box_to_input([0, 0, 20, 20], (512, 512), net)
    assert x0 == x1 == 0
    with pytest.raises(ValueError, match="empty"):
        convvis.box_to_input([5, 5, 5, 9], (512, 512), net)


# ---- 16-bit PNGs --------------------------------------------------------------------------------


def _png16(path, arr, filter_type):
    """Write a 16-bit PNG by hand with one row filter for every row (colour type 2 or 6)."""
    h, w, c = arr.shape
    raw = arr.astype(">u2").tobytes()
    stride, bpp = w * c * 2, c * 2
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride).astype(np.int32)
    out = bytearray()
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        cur = rows[y]
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if filter_type == 0:
            f = cur
        elif filter_type == 1:
            f = cur - left
        elif filter_type == 2:
            f = cur - prev
        elif filter_type == 3:
            f = cur - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            f = cur - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        out += bytes([filter_type]) + bytes((f & 0xFF).astype(np.uint8))
        prev = cur

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 2 if c == 3 else 6, 0, 0, 0])
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.mark.parametrize("filter_type", range(5))
def test_16_bit_rgb_pngs_keep_their_precision(tmp_path, filter_type):
    rng = np.random.default_rng(filter_type)
    arr = rng.integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    arr[0, 0] = (1, 2, 65535)  # values that 8 bits cannot tell apart
    path = tmp_path / "x.png"
    _png16(path, arr, filter_type)
    photo = convvis.to_photo(path)
    np.testing.assert_allclose(photo, arr / 65535.0, atol=1e-7)
    assert photo[0, 0, 0] != photo[0, 0, 1]


def test_16_bit_rgba_png_is_composited(tmp_path):
    arr = np.zeros((4, 5, 4), np.uint16)
    arr[..., 0], arr[..., 3] = 65535, 32768  # red at about half opacity over white
    _png16(tmp_path / "a.png", arr, 4)
    photo = convvis.to_photo(tmp_path / "a.png")
    a = 32768 / 65535
    np.testing.assert_allclose(photo[0, 0], [1.0, 1 - a, 1 - a], atol=1e-6)
