"""What a model needs besides its weights: how to prepare its input, and its class names.

:class:`Preprocessing` and :class:`LoadedModel` need only torch, so every module can read them
(:mod:`convvis.common` among them); :mod:`convvis.models` holds the code that loads weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DEFAULT_MODEL", "Preprocessing", "LoadedModel", "preprocessing_of"]

#: The model every chapter loads by default; it ships offline (see :data:`convvis.EMBEDDED_MODELS`).
DEFAULT_MODEL = "efficientnet_lite0"


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

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return mean, std

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) intensities in [0, 1] -> ``(x - mean) / std`` per channel, in ``x``'s dtype
        and on its device."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalise`: ``x * std + mean`` per channel (not clipped to [0, 1])."""
        mean, std = self._stats(x)
        return x * std + mean


class LoadedModel(nn.Module):
    """An eval-mode ImageNet classifier and what is needed to feed and read it.

    It is an ``nn.Module``: call it on an (N,3,H,W) normalised batch to get (N,1000) unnormalised
    scores S_c, and use ``.eval()``, ``.to()``, ``.parameters()``, ``.named_modules()`` as with any
    torchvision or timm model. Every convvis function accepts it, or the bare network.

    Attributes
    ----------
    model:
        The bare ``nn.Module`` (the timm or torchvision network), registered as the only child;
        layer names such as ``"bn2.act"`` are relative to it (``net.model.get_submodule(...)``).
    name:
        The name it was loaded by.
    preprocessing:
        Input size, resize size, mean/std and interpolation (:class:`Preprocessing`).
    class_names:
        The 1000 ImageNet class names, index-aligned with the scores.
    weights:
        Where the weights came from (a file path or a URL), for the record.
    """

    def __init__(self, model: nn.Module, name: str = DEFAULT_MODEL,
                 preprocessing: Preprocessing | None = None, class_names: list[str] | None = None,
                 weights: str = ""):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.name = name
        self.preprocessing = preprocessing if preprocessing is not None else Preprocessing()
        self.class_names = list(class_names) if class_names is not None else []
        self.weights = weights
        self.train(model.training)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def __repr__(self) -> str:
        return (f"LoadedModel(name={self.name!r}, preprocessing={self.preprocessing!r}, "
                f"weights={self.weights!r})")


def preprocessing_of(spec: LoadedModel | Preprocessing) -> Preprocessing:
    """The :class:`Preprocessing` of a :class:`LoadedModel`, or ``spec`` itself if it is one."""
    if isinstance(spec, LoadedModel):
        return spec.preprocessing
    if isinstance(spec, Preprocessing):
        return spec
    raise TypeError(f"expected a LoadedModel or Preprocessing, got {type(spec).__name__}")
