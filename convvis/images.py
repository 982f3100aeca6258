"""Photos in, model tensors out, and back.

Glossary (used across the book): an ``image`` is an (N,3,H,W) float tensor normalised for the
model, ``(x - mean) / std`` with ``x`` the RGB intensity in [0, 1]; a ``photo`` is an H x W x 3
float array in [0, 1] for display.

Accepted sources: a file path, the name of a sample photo in ``data/`` (``"cat"`` or
``"cat.png"``), a PIL image, a NumPy array or a torch tensor. Grayscale is replicated to three
channels, an alpha channel is composited over white, palette images are expanded, and 16-bit data
is scaled by 1/65535. Anything else gets an error that names the problem.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .loaded_model import LoadedModel, Preprocessing, preprocessing_of

__all__ = [
    "ImageSource",
    "data_dir",
    "sample_names",
    "sample_path",
    "load_annotations",
    "to_photo",
    "load_image",
    "load_images",
    "deprocess",
    "box_to_input",
    "photo_to_input",
    "box_to_photo",
]

ImageSource = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

_SUFFIXES = (".png", ".jpg", ".jpeg")


def data_dir() -> Path:
    """The folder with the sample photos and ``annotations.json``.

    ``$CONVVIS_DATA`` when set, else the ``data/`` folder of the source checkout that ``convvis``
    was installed from (``pip install -e .``).
    """
    env = os.environ.get("CONVVIS_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent / "data")
    for c in candidates:
        if (c / "annotations.json").is_file():
            return c
    raise FileNotFoundError(
        "cannot find the book's data/ folder (looked in: "
        + ", ".join(str(c) for c in candidates)
        + "). Install convvis from a checkout of the book's repository with 'pip install -e .', "
        "or set CONVVIS_DATA to the folder that holds annotations.json."
    )


def sample_names() -> list[str]:
    """File names of the sample photos in ``data/images`` (sorted)."""
    folder = data_dir() / "images"
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _SUFFIXES)


def sample_path(name: str) -> Path:
    """Path of a sample photo given its file name, with or without the extension."""
    names = sample_names()
    if name in names:
        return data_dir() / "images" / name
    stems = {Path(n).stem: n for n in names}
    if name in stems:
        return data_dir() / "images" / stems[name]
    raise FileNotFoundError(
        f"{name!r} is neither an existing file nor a sample photo; samples are: {', '.join(stems)}"
    )


def load_annotations() -> dict[str, Any]:
    """Per sample photo, its labelled objects: ImageNet class indices and a box.

    Returns ``{file name: {"objects": [{"label", "classes", "box"}]}}``; each ``box`` is
    ``[x0, y0, x1, y1]`` in pixels of the original file (x1, y1 exclusive) and ``classes`` lists
    every ImageNet index accepted as correct for that object.
    """
    with open(data_dir() / "annotations.json", encoding="utf-8") as fh:
        return json.load(fh)["images"]


def _from_path(source: str | os.PathLike) -> Image.Image:
    text = os.fspath(source)
    if isinstance(text, str) and text.startswith(("http://", "https://")):
        raise ValueError(
            f"{text!r} is a URL; convvis reads local files only. Download it first and pass the path."
        )
    path = Path(text)
    if not path.exists():
        if os.sep not in text and "/" not in text:
            path = sample_path(text)  # raises FileNotFoundError listing the samples
        else:
            raise FileNotFoundError(f"no such image file: {text}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file")
    try:
        img = Image.open(path)
        img.load()
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file that Pillow can read") from None
    return img


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png16_header(path: Path) -> tuple[int, int, int, int, int] | None:
    """(width, height, colour type, channels, interlace) of a 16-bit colour PNG, else None.

    Pillow reads 16-bit RGB, RGBA and grey+alpha PNGs at 8 bits per channel (it has no 16-bit
    colour modes), so these few files are decoded here instead. 16-bit grey opens as mode I;16.
    """
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    depth, colour, interlace = head[24], head[25], head[28]
    if depth != 16 or colour not in (2, 4, 6):
        return None
    return width, height, colour, {2: 3, 4: 2, 6: 4}[colour], interlace


def _read_png16(path: Path) -> np.ndarray:
    """Decode a 16-bit colour PNG (non-interlaced) to a float32 H x W x C array in [0, 1]."""
    width, height, colour, channels, interlace = _png16_header(path)
    if interlace:
        raise ValueError(
            f"{path} is an interlaced 16-bit PNG, which convvis cannot read; save it without interlacing"
        )
    data = bytearray()
    with open(path, "rb") as f:
        f.seek(8)
        while True:
            length_bytes = f.read(4)
            if len(length_bytes) < 4:
                break
            length = int.from_bytes(length_bytes, "big")
            kind = f.read(4)
            chunk = f.read(length)
            f.read(4)  # CRC
            if kind == b"IDAT":
                data += chunk
            elif kind == b"IEND":
                break
    try:
        raw = np.frombuffer(zlib.decompress(bytes(data)), np.uint8)
    except zlib.error as exc:
        raise ValueError(f"{path} is a damaged PNG file ({exc})") from None
    bpp = 2 * channels  # bytes per pixel
    stride = width * bpp
    if raw.size != height * (stride + 1):
        raise ValueError(f"{path} is a damaged PNG file (wrong amount of image data)")
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:  # None
            cur = line
        elif kind == 1:  # Sub: add the byte bpp to the left, a running sum per byte position
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) & 0xFF
        elif kind == 2:  # Up
            cur = (line + prev) & 0xFF
        elif kind in (3, 4):  # Average, Paeth: each pixel depends on the one decoded before it
            cur = np.empty(stride, np.int32)
            left = np.zeros(bpp, np.int32)
            upleft = np.zeros(bpp, np.int32)
            for x in range(0, stride, bpp):
                up = prev[x : x + bpp]
                if kind == 3:
                    pred = (left + up) >> 1
                else:
                    p = left + up - upleft
                    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
                    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
                left = (line[x : x + bpp] + pred) & 0xFF
                cur[x : x + bpp] = left
                upleft = up
        else:
            raise ValueError(f"{path} is a damaged PNG file (unknown row filter {kind})")
        out[y] = cur
        prev = cur
    values = (out[:, 0::2] << 8) | out[:, 1::2]  # big-endian 16-bit samples
    return (values.reshape(height, width, channels) / 65535.0).astype(np.float32)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """PIL image of any common mode -> float32 H x W x C array in [0, 1], C in {1, 3, 4}."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return (np.asarray(img, dtype=np.float32) / 65535.0)[..., None]
    if mode == "I":
        # 32-bit integer mode: PNG 16-bit grayscale often opens as "I" with values in 0..65535.
        arr = np.asarray(img, dtype=np.float64)
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError("32-bit integer image with values outside 0..65535: unknown scale")
        scale = 255.0 if arr.max() <= 255 else 65535.0
        return (arr / scale).astype(np.float32)[..., None]
    if mode == "F":
        return _float_array(np.asarray(img, dtype=np.float32), "32-bit float image")[..., None]
    if mode in ("1", "L"):
        return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[..., None]
    if mode in ("LA", "PA", "RGBA", "RGBa", "La"):
        return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    if mode in ("RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    raise ValueError(f"unsupported PIL image mode {mode!r}")


def _float_array(arr: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{what} has values in [{lo:.3g}, {hi:.3g}]; float images must lie in [0, 1] "
            "(pass uint8 0..255 or uint16 0..65535 data as integers)"
        )
    return arr.astype(np.float32)


def _array_to_float(arr: np.ndarray) -> np.ndarray:
    """NumPy array H x W, H x W x {1,3,4} -> float32 H x W x C in [0, 1]."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {arr.shape}"
        )
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"image array is too small: {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return _float_array(arr, f"{arr.dtype} image array")
    raise TypeError(
        f"image arrays must be uint8 (0..255), uint16 (0..65535) or float in [0, 1]; got {arr.dtype}"
    )


def _tensor_to_array(t: torch.Tensor) -> np.ndarray:
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {t.shape[0]}; pass them one by one")
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise ValueError(f"image tensors must be (C,H,W) with C in 1, 3, 4; got {tuple(t.shape)}")
    arr = t.detach().cpu().permute(1, 2, 0).numpy()
    if t.dtype == torch.uint8:
        return arr.astype(np.float32) / 255.0
    if t.is_floating_point():
        return _float_array(arr.astype(np.float32), f"{t.dtype} image tensor")
    raise TypeError(f"image tensors must be uint8 or floating point in [0, 1]; got {t.dtype}")


def to_photo(source: ImageSource) -> np.ndarray:
    """Read any accepted source as an H x W x 3 float32 RGB array in [0, 1] (no resizing).

    Grayscale is replicated to RGB; alpha is composited over a white background; 16-bit data is
    scaled to [0, 1]. The source itself is never modified.
    """
    if isinstance(source, (str, os.PathLike)):
        img = _from_path(source)
        if img.format == "PNG" and _png16_header(Path(img.filename)) is not None:
            arr = _read_png16(Path(img.filename))  # Pillow would drop the low 8 bits
            if arr.shape[2] == 2:  # grey + alpha -> RGBA
                arr = np.concatenate([arr[..., :1]] * 3 + [arr[..., 1:]], axis=2)
        else:
            arr = _pil_to_array(img)
    elif isinstance(source, Image.Image):
        arr = _pil_to_array(source)
    elif isinstance(source, np.ndarray):
        arr = _array_to_float(source)
    elif isinstance(source, torch.Tensor):
        arr = _array_to_float(_tensor_to_array(source))
    else:
        raise TypeError(
            "image source must be a path, a sample name, a PIL image, a NumPy array or a tensor; "
            f"got {type(source).__name__}"
        )
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        rgb, alpha = arr[..., :3], arr[..., 3:]
        arr = rgb * alpha + (1.0 - alpha)  # composite over white
    return np.ascontiguousarray(arr, dtype=np.float32)


def _resize(photo: np.ndarray, prep: Preprocessing, crop: bool = True) -> torch.Tensor:
    """H x W x 3 in [0,1] -> (3, S, S) in [0,1], with the model's interpolation (antialiased).

    ``crop``: shorter side to ``resize_size``, then the centre S x S crop (the chapters' inputs);
    otherwise the whole photo resized to S x S, aspect ratio not kept (the ILSVRC command's).
    """
    t = torch.from_numpy(np.ascontiguousarray(photo, dtype=np.float32)).permute(2, 0, 1)[None]
    if not crop:
        s = prep.input_size
        t = F.interpolate(t, size=(s, s), mode=prep.interpolation, align_corners=False, antialias=True)
        return t[0].clamp(0.0, 1.0)  # bicubic overshoots slightly
    h, w = photo.shape[:2]
    scale = prep.resize_size / min(h, w)
    nh, nw = max(prep.input_size, round(h * scale)), max(prep.input_size, round(w * scale))
    t = F.interpolate(t, size=(nh, nw), mode=prep.interpolation, align_corners=False, antialias=True)
    top, left = (nh - prep.input_size) // 2, (nw - prep.input_size) // 2
    t = t[..., top : top + prep.input_size, left : left + prep.input_size]
    return t[0].clamp(0.0, 1.0)  # bicubic overshoots slightly


def load_image(
    source: ImageSource,
    spec: LoadedModel | Preprocessing,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Read one photo and prepare it for the model.

    Returns a (1,3,S,S) float32 tensor, ``S = spec.input_size``, normalised as
    ``(x - mean) / std``. ``device`` defaults to the model's device when ``spec`` is a
    :class:`LoadedModel`, else CPU.
    """
    return load_images([source], spec, device)


def load_images(
    sources: Sequence[ImageSource],
    spec: LoadedModel | Preprocessing,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Read several photos into one (N,3,S,S) normalised batch (see :func:`load_image`)."""
    if isinstance(sources, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        raise TypeError("load_images takes a list of sources; use load_image for one")
    if len(sources) == 0:
        raise ValueError("no image sources given")
    prep = preprocessing_of(spec)
    batch = prep.normalise(torch.stack([_resize(to_photo(s), prep) for s in sources]))
    if device is None and isinstance(spec, LoadedModel):
        device = spec.device
    return batch.to(device) if device is not None else batch


def deprocess(image: torch.Tensor, spec: LoadedModel | Preprocessing) -> np.ndarray:
    """Undo the normalisation for display.

    ``image`` is (3,H,W) or (N,3,H,W); returns an H x W x 3 (or N x H x W x 3) float32 array,
    ``x * std + mean`` clipped to [0, 1]. The inverse of :func:`load_images` up to the resize.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"deprocess takes a tensor, got {type(image).__name__}")
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"expected (3,H,W) or (N,3,H,W), got {tuple(image.shape)}")
    x = preprocessing_of(spec).denormalise(image.detach().float().cpu()).clamp(0.0, 1.0)
    return x.movedim(-3, -1).numpy()


def box_to_input(
    box: Sequence[float], photo_size: tuple[int, int], spec: LoadedModel | Preprocessing
) -> tuple[float, float, float, float]:
    """Map an ``[x0, y0, x1, y1]`` box from original-photo pixels to model-input pixels.

    ``photo_size`` is the original (H, W). The box is scaled like the photo (shorter side to
    ``resize_size``), shifted by the centre crop and clipped to the ``input_size`` square; a box
    entirely outside the crop comes back with zero width or height.
    """
    prep = preprocessing_of(spec)
    h, w = photo_size
    scale = prep.resize_size / min(h, w)
    nh, nw = max(prep.input_size, round(h * scale)), max(prep.input_size, round(w * scale))
    sy, sx = nh / h, nw / w
    top, left = (nh - prep.input_size) // 2, (nw - prep.input_size) // 2
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {list(box)} is empty or not [x0, y0, x1, y1]")
    s = float(prep.input_size)

    def clip(v: float) -> float:
        return min(max(v, 0.0), s)

    return (clip(x0 * sx - left), clip(y0 * sy - top), clip(x1 * sx - left), clip(y1 * sy - top))


def photo_to_input(photo: np.ndarray, spec: LoadedModel | Preprocessing) -> torch.Tensor:
    """H x W x 3 photo in [0, 1] -> (3,S,S) normalised input: the whole photo resized to S x S.

    The no-crop twin of :func:`load_images`, used by the ILSVRC command (see ``convvis.ilsvrc``):
    the model's interpolation with antialiasing, then ``(x - mean) / std``.
    """
    prep = preprocessing_of(spec)
    return prep.normalise(_resize(photo, prep, crop=False))


def box_to_photo(box: Sequence[float], photo_size: tuple[int, int], input_size: int) -> list[float]:
    """Map ``[x0, y0, x1, y1]`` from the S x S input of :func:`photo_to_input` to photo pixels.

    The no-crop twin of :func:`box_to_input`, in the other direction. ``photo_size`` is the
    original (H, W): x scales by W / S, y by H / S (exclusive corners stay exclusive). Rounded to
    1/100 pixel so results files compare exactly.
    """
    h, w = photo_size
    sx, sy = w / input_size, h / input_size
    x0, y0, x1, y1 = box
    return [round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2)]
