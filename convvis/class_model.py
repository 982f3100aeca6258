"""Class model visualisation by gradient ascent (paper Sect. 2, Eq. 1).

    I* = argmax_I  S_c(I) - lambda * ||I||_2^2                                          (Eq. 1)

with the network's weights fixed, S_c the *unnormalised* class score, starting from the zero image
of the model's normalised input space. The paper's zero is the training set's mean *image* (its
network subtracted it); ours is the colour ``mean`` of the model's preprocessing in every pixel,
mid-grey for the embedded models (mean = std = 0.5). For display the normalisation is undone
(:func:`convvis.deprocess`).

The code is split the way later work (lucent) split it, so each part can change on its own:

* **objectives** (what to maximise), composable: ``ClassScore() - 1e-3 * L2()``;
* **parametrisations** (how the image is represented): pixels, or a Fourier basis with decorrelated
  colours;
* **transforms** (random jitter, scale, rotation applied before each forward pass) and post-step
  regularisers (blur every k steps);
* **the loop**: :func:`visualise`, batched over classes, seeded, with a history per step.

The paper gives no value for lambda, the step size, the optimiser or the number of steps: every
default below is **our choice**, stated where it is set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .common import (
    Target,
    as_module,
    check_eval_mode,
    check_image,
    class_names_of,
    deprecated_argument,
    frozen_parameters,
    num_classes_of,
    resolve_targets,
)
from .loaded_model import LoadedModel, preprocessing_of
from .models import load_model

__all__ = [
    "Context",
    "Objective",
    "ClassScore",
    "ClassProbability",
    "L2",
    "TotalVariation",
    "PixelImage",
    "FourierImage",
    "Jitter",
    "RandomScale",
    "RandomRotate",
    "BlurEvery",
    "History",
    "Result",
    "visualise",
    "paper_preset",
    "legible_preset",
    "class_model_preset",
    "class_model_presets",
    "fourier_image",
    "RandomAffine",
    "Legibility",
    "legibility",
    "LEGIBILITY_JUDGES",
    "PAPER_LAMBDA",
    "colour_sqrt_cov",
    "Snapshots",
    "paper_checkpoints",
]

# Our choices for the paper's configuration (the paper states none of them).
PAPER_LAMBDA = 1e-3  # weight of the L2 penalty, as in CS231n's exercise for this paper
PAPER_LR = 2.0  # plain gradient ascent step on normalised pixels
PAPER_STEPS = 100

# Our choices for the legible preset (lucent's priors, tuned with the judges of `legibility`; see
# legible_preset and benchmarks/class_models.py).
LEGIBLE_LAMBDA = 0.0
LEGIBLE_LR = 0.1
LEGIBLE_STEPS = 256
LEGIBLE_DECAY = 1.5
LEGIBLE_AFFINE = {"pad": 12, "jitter": 8, "scales": (0.9, 1.1), "degrees": 10.0, "mode": "nearest"}
# Networks that judge legibility: not the default model, and they ship offline like it.
LEGIBILITY_JUDGES = ("efficientnet_lite1", "efficientnet_lite2")


# ---- objectives ---------------------------------------------------------------------------------


@dataclass
class Context:
    """What an objective can look at: the scores (N,K), the image (N,3,H,W), the targets (N,)."""

    scores: torch.Tensor
    image: torch.Tensor
    targets: torch.Tensor


class Objective:
    """A per-image quantity to *maximise*, shape (N,). Objectives add, subtract and scale."""

    name = "objective"

    def __call__(self, ctx: Context) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __add__(self, other: Objective) -> Objective:
        return _Combined([(1.0, self), (1.0, other)])

    def __sub__(self, other: Objective) -> Objective:
        return _Combined([(1.0, self), (-1.0, other)])

    def __mul__(self, k: float) -> Objective:
        return _Combined([(float(k), self)])

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return _Combined([(-1.0, self)])

    def __repr__(self) -> str:
        return self.name


class _Combined(Objective):
    def __init__(self, terms: list[tuple[float, Objective]]):
        flat: list[tuple[float, Objective]] = []
        for w, o in terms:
            if isinstance(o, _Combined):
                flat += [(w * w2, o2) for w2, o2 in o.terms]
            else:
                flat.append((w, o))
        self.terms = flat
        self.name = " ".join(f"{'+' if w >= 0 else '-'} {abs(w):g}*{o.name}" for w, o in flat).lstrip("+ ")

    def __call__(self, ctx: Context) -> torch.Tensor:
        # a term weighted 0 (the legible preset's lambda = 0) adds nothing: skip its forward and
        # backward pass. The first term is always computed, so the result is a tensor of shape (N,)
        live = [(w, o) for i, (w, o) in enumerate(self.terms) if w != 0 or i == 0]
        return sum(w * o(ctx) for w, o in live)


class ClassScore(Objective):
    """S_c(I): the unnormalised score (logit) of each image's target class. The paper's choice."""

    name = "S_c"

    def __call__(self, ctx: Context) -> torch.Tensor:
        return ctx.scores.gather(1, ctx.targets[:, None])[:, 0]


class ClassProbability(Objective):
    """P_c(I) = softmax(S(I))_c. The paper found optimising it gave poorer visualisations."""

    name = "P_c"

    def __call__(self, ctx: Context) -> torch.Tensor:
        return ctx.scores.softmax(dim=1).gather(1, ctx.targets[:, None])[:, 0]


class L2(Objective):
    """||I||_2^2 per image, in normalised input space (subtract it, with a weight lambda)."""

    name = "||I||^2"

    def __call__(self, ctx: Context) -> torch.Tensor:
        return ctx.image.flatten(1).pow(2).sum(dim=1)


class TotalVariation(Objective):
    """Sum of squared differences between neighbouring pixels (subtract it to smooth the image)."""

    name = "TV"

    def __call__(self, ctx: Context) -> torch.Tensor:
        x = ctx.image
        dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).sum(1)
        dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).sum(1)
        return dh + dw


# ---- parametrisations ---------------------------------------------------------------------------


class PixelImage(nn.Module):
    """The image is its own parameter, (N,3,H,W), in normalised input space; zero init = the
    preprocessing's mean colour in every pixel (mid-grey for the embedded models)."""

    def __init__(self, n: int, size: int = 224, init_std: float = 0.0, generator=None, device=None):
        super().__init__()
        init = torch.zeros(n, 3, size, size)
        if init_std:
            init = torch.randn((n, 3, size, size), generator=generator) * init_std
        self.pixels = nn.Parameter(init.to(device))

    def forward(self) -> torch.Tensor:
        return self.pixels


# Colour decorrelation: the square root of the RGB covariance of natural photos, measured on the
# book's own sample photos (in [0, 1] units; convvis.class_model.colour_sqrt_cov recomputes it).
_RGB_SQRT_COV = torch.tensor([
    [0.2323, 0.1126, 0.0563],
    [0.1126, 0.1963, 0.0967],
    [0.0563, 0.0967, 0.2164],
])


class FourierImage(nn.Module):
    """The image as a 2-D Fourier spectrum per decorrelated colour channel (as in later work).

    Frequencies are scaled by ``1 / max(f, 1/size) ** decay`` so that gradient steps change low
    frequencies more than high ones (natural images have a 1/f spectrum), and the three channels
    are mixed by the square root of the photos' RGB covariance, so that a step changes colours the
    way they co-vary in photos. The output is an (N,3,H,W) image in normalised input space.

    ``bounded=False`` (default): the map from parameters to image is linear (the mixed colours are
    divided by the model's ``std``), so the L2 penalty of Eq. 1 keeps its meaning, and colours may
    leave the displayable range. ``bounded=True`` (the legible preset, as lucent does): the mixed
    colours go through a sigmoid to [0, 1] and are then normalised with ``mean`` and ``std``, so
    every pixel is a colour a screen can show. Either way the zero spectrum is the zero image of
    the normalised space (the preprocessing's mean colour; with ``bounded=True`` that needs
    ``mean`` = 0.5, which holds for the embedded models, mid-grey).
    """

    def __init__(self, n: int, size: int = 224, std: Sequence[float] = (0.5, 0.5, 0.5), decay: float = 1.0,
                 device=None, *, mean: Sequence[float] = (0.5, 0.5, 0.5), bounded: bool = False):
        super().__init__()
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        freq = torch.sqrt(fx**2 + fy**2)
        scale = 1.0 / torch.clamp(freq, min=1.0 / size) ** decay
        self.register_buffer("scale", (scale / scale.max()).to(device))
        std_t = torch.tensor([float(v) for v in std])
        # bounded: the matrix scaled so that its largest column has norm 1 (as lucent does), so that
        # a unit of spectrum moves a colour channel by about one sigmoid unit, not a quarter of one
        mix = _RGB_SQRT_COV / _RGB_SQRT_COV.norm(dim=0).max() if bounded else _RGB_SQRT_COV / std_t[:, None]
        self.register_buffer("mix", mix.to(device))
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1).to(device))
        self.register_buffer("std", std_t.view(1, 3, 1, 1).to(device))
        self.size, self.bounded = size, bounded
        # Speed-ups: each saves one elementwise pass over the batch per step, and the values equal
        # the plain definition to float32 rounding (tests/test_class_model.py holds them equal):
        # * the 1/f scale and irfft2's constant factor size / 8 are one multiplication (`gain`);
        # * sigmoid(x) = (1 + tanh(x / 2)) / 2, so the colour matrix carries the 1/2 (`half_mix`)
        #   and the squashing is one tanh; with mean = std = 0.5 (the embedded models),
        #   (sigmoid(x) - mean) / std is that tanh itself.
        # The choices that depend on mean and std are made here, not per step (a device sync on a GPU).
        self.register_buffer("gain", self.scale * (size / 8), persistent=False)
        self.register_buffer("half_mix", (mix / 2 if bounded else mix).to(device), persistent=False)
        self.mid_grey = all(float(v) == 0.5 for v in mean)
        self.unit_std = all(float(v) == 0.5 for v in std)
        self.spectrum = nn.Parameter(torch.zeros(n, 3, size, size // 2 + 1, 2, device=device))

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.gain  # 1/f scaling
        decorrelated = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
        n = decorrelated.shape[0]
        # mix the colours: (3,3) @ (N,3,H*W), a batched matmul on views
        mixed = torch.matmul(self.half_mix, decorrelated.reshape(n, 3, -1)).view(n, 3, self.size, self.size)
        if not self.bounded:
            return mixed
        # colour = sigmoid(x + logit(mean)) in [0, 1] (the zero spectrum is the mean colour), then
        # (colour - mean) / std = tanh((x + logit(mean)) / 2) * 0.5 / std + (0.5 - mean) / std;
        # mixed holds x / 2
        if not self.mid_grey:
            mixed = mixed + torch.logit(self.mean) / 2
        half = torch.tanh(mixed)
        if self.mid_grey and self.unit_std:
            return half
        return torch.addcmul((0.5 - self.mean) / self.std, half, 0.5 / self.std)


def fourier_image(decay: float = 1.0, bounded: bool = True) -> Callable[..., FourierImage]:
    """A parametrisation *factory* for :func:`visualise`'s ``param``: it builds a
    :class:`FourierImage` with one image per target, at the run's size and device, and with the
    model's own ``mean`` and ``std`` (0.5 when the model carries no preprocessing)."""

    def make(n: int, size: int, device, preprocessing) -> FourierImage:
        mean = preprocessing.mean if preprocessing is not None else (0.5, 0.5, 0.5)
        std = preprocessing.std if preprocessing is not None else (0.5, 0.5, 0.5)
        return FourierImage(n, size, std=std, mean=mean, decay=decay, bounded=bounded, device=device)

    make.__qualname__ = f"fourier_image(decay={decay:g}, bounded={bounded})"
    return make


# ---- transforms ---------------------------------------------------------------------------------


class Jitter:
    """Roll the image by a random offset of up to ``pixels`` in each direction (per step, per batch)."""

    def __init__(self, pixels: int = 16):
        self.pixels = pixels

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        dy, dx = (int(v) for v in torch.randint(-self.pixels, self.pixels + 1, (2,), generator=g))
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


class RandomScale:
    """Rescale by a random factor in ``scales`` (then crop or pad back to the input size)."""

    def __init__(self, scales: Sequence[float] = (0.95, 1.0, 1.05)):
        self.scales = list(scales)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = self.scales[int(torch.randint(len(self.scales), (1,), generator=g))]
        if s == 1.0:
            return x
        size = x.shape[-1]
        y = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        new = y.shape[-1]
        if new >= size:
            o = (new - size) // 2
            return y[..., o : o + size, o : o + size]
        p = size - new
        return F.pad(y, (p // 2, p - p // 2, p // 2, p - p // 2))


class RandomRotate:
    """Rotate by a random angle (degrees) drawn from ``angles``."""

    def __init__(self, angles: Sequence[float] = (-5, 0, 5)):
        self.angles = list(angles)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        a = math.radians(self.angles[int(torch.randint(len(self.angles), (1,), generator=g))])
        if a == 0:
            return x
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                             dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False, padding_mode="reflection")


class RandomAffine:
    """Lucent's transform stack (pad, jitter, random scale, random rotation, jitter) as one resampling.

    Each image of the batch gets its own draw: a scale factor uniform in ``scales``, an angle
    uniform in ``[-degrees, degrees]``, and a shift of each axis uniform in ``[-(pad + jitter),
    pad + jitter]`` pixels, applied about the image centre. What the shift uncovers is filled with
    the zero image (the preprocessing's mean colour: mid-grey for the embedded models), which is
    what padding with mid-grey then jittering does. The output has the input's size, so the
    network runs at its usual input size and a step costs one forward and backward pass plus one
    ``grid_sample`` (lucent pads the canvas to 248 pixels and resamples four times).

    ``mode``: ``"bilinear"`` interpolates between the four nearest pixels; ``"nearest"`` (the
    legible preset's) copies the nearest one, which is cheaper (``benchmarks/class_models.py``
    times a step). Each step draws a new sub-pixel offset, so over the steps the gradient still
    reaches every pixel.

    ``pad`` and ``jitter`` are in pixels of the image; their sum is the largest shift. A
    configuration under which a draw could leave no pixel of the image in the frame is refused by
    :meth:`check` (which :func:`visualise` calls with the image size before the first step).
    """

    def __init__(self, pad: int = 12, jitter: int = 8, scales: tuple[float, float] = (0.9, 1.1),
                 degrees: float = 10.0, mode: str = "bilinear"):
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.mode = mode
        if pad < 0 or jitter < 0:
            raise ValueError(f"pad and jitter must be at least 0 pixels, got pad={pad}, jitter={jitter}")
        lo, hi = (float(v) for v in scales)
        if not 0 < lo <= hi:
            raise ValueError(f"scales must be (low, high) with 0 < low <= high, got {tuple(scales)}")
        if not 0 <= degrees <= 180:
            raise ValueError(f"degrees must be in [0, 180], got {degrees}")
        self.pad, self.jitter, self.scales, self.degrees = int(pad), int(jitter), (lo, hi), float(degrees)

    def __repr__(self) -> str:
        return (f"RandomAffine(pad={self.pad}, jitter={self.jitter}, scales={self.scales}, "
                f"degrees={self.degrees:g}, mode={self.mode!r})")

    def check(self, size: int) -> None:
        """Refuse a configuration that can move a ``size`` x ``size`` image out of the frame.

        Along each axis the image, scaled by at least ``scales[0]``, reaches ``scales[0] * size / 2``
        pixels from its centre (rotation only widens that); a shift of ``size / 2`` plus that much
        leaves nothing of it in the frame.
        """
        shift = self.pad + self.jitter
        if self.pad >= size:
            raise ValueError(
                f"padding of {self.pad} pixels is not smaller than the {size}-pixel image: "
                "a shift could move the image out of the frame entirely"
            )
        limit = size / 2 + self.scales[0] * size / 2
        if shift >= limit:
            raise ValueError(
                f"pad + jitter = {shift} pixels could move the {size}-pixel image (scaled by down to "
                f"{self.scales[0]:g}) out of the frame entirely; keep it below {limit:g}"
            )

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        u = torch.rand((n, 4), generator=g).to(device=x.device, dtype=x.dtype)
        lo, hi = self.scales
        scale = lo + (hi - lo) * u[:, 0]
        angle = torch.deg2rad((2 * u[:, 1] - 1) * self.degrees)
        reach = self.pad + self.jitter
        # shifts in affine_grid's units: the frame spans [-1, 1], i.e. 2 / size per pixel
        tx = (2 * u[:, 2] - 1) * reach * 2 / w
        ty = (2 * u[:, 3] - 1) * reach * 2 / h
        # affine_grid maps output coordinates to input ones: the inverse of "scale, rotate, shift"
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([
            torch.stack([cos, sin, -(cos * tx + sin * ty)], dim=1),
            torch.stack([-sin, cos, -(-sin * tx + cos * ty)], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode=self.mode, padding_mode="zeros", align_corners=False)


class BlurEvery:
    """Every ``every`` steps, blur the pixel parameters with a Gaussian of ``sigma`` (CS231n style).

    A post-step regulariser for :class:`PixelImage` only: it changes the parameters, not the
    forward pass.
    """

    def __init__(self, sigma: float = 0.5, every: int = 10):
        self.sigma, self.every = sigma, every

    def __call__(self, param: nn.Module, step: int) -> None:
        if not isinstance(param, PixelImage):
            raise TypeError("BlurEvery works on a PixelImage parametrisation")
        if (step + 1) % self.every:
            return
        r = max(1, int(math.ceil(3 * self.sigma)))
        ax = torch.arange(-r, r + 1, dtype=param.pixels.dtype, device=param.pixels.device)
        k = torch.exp(-(ax**2) / (2 * self.sigma**2))
        k = k / k.sum()
        with torch.no_grad():
            x = param.pixels
            kw, kh = k.view(1, 1, 1, -1).expand(3, 1, 1, -1), k.view(1, 1, -1, 1).expand(3, 1, -1, 1)
            x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kw, groups=3)
            x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), kh, groups=3)
            param.pixels.copy_(x)


class Snapshots:
    """A post-step hook for :func:`visualise` that keeps a copy of the image at given step counts.

    ``steps``: the step counts at which to copy (1 = after the first optimiser step; positive
    integers, any order, repeats ignored). After the run, ``images`` maps each step count the run
    reached to the (N,3,H,W) image at that point, on the CPU, in normalised input space (what
    ``Result.image`` would have been, had the run stopped there). It changes nothing in the run.
    """

    def __init__(self, steps: Sequence[int]):
        steps = list(steps)
        if not steps or any(isinstance(n, bool) or int(n) != n or n < 1 for n in steps):
            raise ValueError(f"Snapshots needs positive integer step counts, got {steps!r}")
        self.steps = tuple(sorted({int(n) for n in steps}))
        self.images: dict[int, torch.Tensor] = {}

    def __call__(self, param: nn.Module, step: int) -> None:
        if step + 1 in self.steps:  # visualise counts steps from 0; a step count from 1
            with torch.no_grad():
                self.images[step + 1] = param().detach().cpu().clone()


# ---- the loop -----------------------------------------------------------------------------------


@dataclass
class History:
    """Per step (rows) and image (columns): objective, score S_c, probability P_c, ||I||_2, and
    two summaries of the competing classes (their mean score, and their log-sum-exp)."""

    objective: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    probability: list[np.ndarray] = field(default_factory=list)
    norm: list[np.ndarray] = field(default_factory=list)
    other_scores: list[np.ndarray] = field(default_factory=list)  # mean score of the other classes
    # log-sum-exp of the other classes' scores: the log of the softmax's competition, so that
    # log(P_c / (1 - P_c)) = S_c - lse_others
    lse_others: list[np.ndarray] = field(default_factory=list)

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.stack(v) for k, v in self.__dict__.items()}


@dataclass
class Result:
    """``image``: (N,3,H,W) in normalised input space (deprocess it for display); ``targets``: (N,)."""

    image: torch.Tensor
    targets: torch.Tensor
    history: dict[str, np.ndarray]
    objective: str


def visualise(
    model: nn.Module,
    target: Target = None,
    objective: Objective | None = None,
    *,
    preset: str = "paper",
    param: nn.Module | Callable[..., nn.Module] | None = None,
    transforms: Sequence[Callable] | None = None,
    post_step: Sequence[Callable] | None = None,
    steps: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    size: int = 224,
    seed: int = 0,
    progress: bool = True,
    targets: Target = None,
) -> Result:
    """Gradient ascent on ``objective`` for one image per target class, all in one batch.

    Every argument left at ``None`` takes its value from the named ``preset``
    (:func:`class_model_presets`): ``"paper"`` (Eq. 1 as the paper states it, our step size and
    step count) or ``"legible"`` (lucent's priors). Arguments given explicitly override the preset.

    Parameters
    ----------
    model:
        Eval-mode classifier giving unnormalised scores. Its weights are held fixed (their
        ``requires_grad`` flags are switched off for the run and restored afterwards).
    target:
        The class of each image to create: an int or class name (one image), or a sequence /
        tensor of them, (N,). Required. Checked before any step: non-integers, unknown names and
        out-of-range classes raise. ``targets=`` is its deprecated spelling.
    objective:
        What to maximise, per image; the paper's is ``ClassScore() - PAPER_LAMBDA * L2()``.
    preset:
        The name of a preset; an unknown name raises and lists the known ones.
    param:
        Image parametrisation: a module that produces one (C,H,W) image per target (default
        :class:`PixelImage`, zero init as in the paper), or a factory
        ``make(n, size, device, preprocessing)`` such as :func:`fourier_image`.
    transforms:
        Callables ``(image, generator) -> image`` applied before each forward pass (jitter, ...).
        A transform with a ``check(size)`` method (:class:`RandomAffine`) is checked first.
    post_step:
        Callables ``(param, step)`` applied after each optimiser step (e.g. :class:`BlurEvery`).
    steps, lr, optimizer:
        Number of steps, step size, and ``"sgd"`` (plain gradient ascent) or ``"adam"``.
    seed:
        Seeds a private generator for initialisation noise and transforms (the global RNG is untouched).
    progress:
        Show a ``tqdm`` progress bar.

    Returns
    -------
    Result
        The final images (N,3,H,W) in normalised space, and a history of the objective, the
        target score S_c, its softmax probability, the image norm, and the mean and log-sum-exp of
        the other classes' scores at every step (arrays of shape (steps, N)).
    """
    target = deprecated_argument("visualise", "targets", targets, "target", target)
    settings = class_model_preset(preset)
    given = {"objective": objective, "param": param, "transforms": transforms, "post_step": post_step,
             "steps": steps, "lr": lr, "optimizer": optimizer}
    settings.update({k: v for k, v in given.items() if v is not None})
    objective, param, transforms = settings["objective"], settings.get("param"), settings["transforms"]
    post_step, steps, lr = settings["post_step"], settings["steps"], settings["lr"]
    optimizer = settings["optimizer"]
    module = as_module(model)
    check_eval_mode(module)
    device = next(module.parameters()).device
    if target is None:
        raise ValueError("visualise needs the target classes to create (there is no top-1 class of nothing)")
    n_classes = num_classes_of(model)
    if n_classes is None:  # no class names and no final Linear layer: ask the model once
        with torch.no_grad():
            n_classes = module(torch.zeros(1, 3, size, size, device=device)).shape[1]
    t = resolve_targets(target, num_classes=n_classes, class_names=class_names_of(model), device=device)
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an Objective, got {type(objective).__name__}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    for tr in transforms:
        if hasattr(tr, "check"):
            tr.check(size)
    g = torch.Generator(device="cpu").manual_seed(seed)
    if param is None:
        param = PixelImage(len(t), size, device=device)
    elif not isinstance(param, nn.Module):  # a factory
        param = param(len(t), size, device, getattr(model, "preprocessing", None))
    with torch.no_grad():
        first = param()
    if first.ndim != 4 or first.shape[0] != len(t):
        raise ValueError(
            f"the parametrisation produces images of shape {tuple(first.shape)}, but there are "
            f"{len(t)} target(s): it must produce one (C,H,W) image per target, ({len(t)}, C, H, W)"
        )
    if optimizer == "sgd":
        opt = torch.optim.SGD(param.parameters(), lr=lr)
    elif optimizer == "adam":
        opt = _adam(list(param.parameters()), lr)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', not {optimizer!r}")
    recorded: dict[str, list[torch.Tensor]] = {name: [] for name in History.__dataclass_fields__}
    block: dict[str, list[torch.Tensor]] = {"scores": [], "objective": [], "norm": []}

    def summarise():
        """The history of the steps in ``block``, computed for all of them at once (fewer, larger
        operations: each one is a kernel launch the host must issue on a GPU); kept on the device."""
        if not block["scores"]:
            return
        scores = torch.stack(block["scores"])  # (steps, N, K)
        index = t.view(1, -1, 1).expand(scores.shape[0], -1, 1)
        s = scores.gather(2, index)[..., 0]
        others = scores.scatter(2, index, float("-inf"))
        for name, v in (("objective", torch.stack(block["objective"])), ("score", s),
                        ("probability", scores.softmax(2).gather(2, index)[..., 0]),
                        ("norm", torch.stack(block["norm"])),
                        ("other_scores", (scores.sum(2) - s) / (scores.shape[2] - 1)),
                        ("lse_others", torch.logsumexp(others, dim=2))):
            recorded[name].append(v)
        for v in block.values():
            v.clear()

    with frozen_parameters(module):
        for step in tqdm(range(steps), disable=not progress, desc="class models", leave=False):
            image = param()
            x = image
            for tr in transforms:
                x = tr(x, g)
            scores = module(x.contiguous(memory_format=torch.channels_last))
            value = objective(Context(scores, image, t))
            opt.zero_grad(set_to_none=True)
            (-value.sum()).backward()  # maximise; only the image parameters require gradients
            opt.step()
            for hook in post_step:
                hook(param, step)
            with torch.no_grad():  # recorded on the device; read back once, after the last step
                block["scores"].append(scores.detach())
                block["objective"].append(value.detach())
                block["norm"].append(image.detach().flatten(1).norm(dim=1))
                if len(block["scores"]) == _HISTORY_BLOCK:
                    summarise()
        with torch.no_grad():
            summarise()
    with torch.no_grad():
        final = param().detach()
    hist = History(**_read_back(recorded))
    return Result(final, t.cpu(), hist.as_arrays(), repr(objective))


#: Steps whose history ``visualise`` summarises together: enough to make the summaries' operations
#: rare, few enough that the scores kept meanwhile stay small (64 x N x classes floats).
_HISTORY_BLOCK = 64


def _read_back(recorded: dict[str, list[torch.Tensor]]) -> dict[str, list[np.ndarray]]:
    """Blocks of (steps, N) tensors -> per-step NumPy arrays, read from the device in one go when
    their dtypes and devices agree (they do for a model's scores), else one read per series."""
    series = {k: torch.cat(v) for k, v in recorded.items()}  # (steps, N) each, from (block, N) blocks
    if len({(v.dtype, v.device) for v in series.values()}) == 1:
        values = torch.stack(list(series.values())).cpu().numpy()  # (series, steps, N): one read
        return {k: list(values[i]) for i, k in enumerate(series)}
    return {k: list(v.cpu().numpy()) for k, v in series.items()}


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam with its fused kernel where torch has one for the device (one pass over the parameters
    instead of several: a measurable share of a class-model step), plain Adam elsewhere."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or no fused kernel for the device
        return torch.optim.Adam(params, lr=lr)


def paper_preset(lam: float = PAPER_LAMBDA) -> dict:
    """The paper's configuration as keyword arguments for :func:`visualise`.

    Zero initial image, objective S_c - lambda ||I||^2 on the unnormalised score, no transforms,
    plain gradient ascent. lambda, the step size and the number of steps are our choices (the paper
    gives none).
    """
    return {"objective": ClassScore() - lam * L2(), "transforms": (), "post_step": (), "optimizer": "sgd",
            "lr": PAPER_LR, "steps": PAPER_STEPS}


def paper_checkpoints(
    model: LoadedModel,
    target: Target,
    lambdas: Sequence[float],
    checkpoints: Sequence[int],
    judges: Sequence = LEGIBILITY_JUDGES,
    k: int = 5,
    progress: bool = False,
) -> tuple[dict, dict]:
    """Eq. 1 with the paper preset, run long, for several lambdas, judged at several step counts.

    For each lambda one :func:`visualise` call with ``paper_preset(lam)`` (unnormalised score, L2
    penalty, zero start, plain gradient ascent with step ``PAPER_LR``) and ``max(checkpoints)``
    steps, all targets in one batch; :class:`Snapshots` keeps the images at the checkpoints. Each
    kept image is then scored by ``model`` itself and judged by :func:`legibility`.

    Parameters
    ----------
    model:
        The :class:`convvis.LoadedModel` to make the images on.
    target:
        The classes, as for :func:`visualise` (N,).
    lambdas:
        The L2 weights, each >= 0.
    checkpoints:
        Step counts (positive integers) at which the images are scored and judged.
    judges, k:
        As for :func:`legibility` (names or loaded models; not ``model``).
    progress:
        Show a progress bar per lambda.

    Returns
    -------
    (report, images)
        ``report`` is JSON-ready: ``model``, ``classes``, ``class_names``, ``lambdas``,
        ``checkpoints``, ``judges``, ``k``, ``lr``, ``optimizer`` and ``rows``, one row per
        (lambda, step count) with per-class lists: ``own`` (``score`` S_c, ``probability`` P_c and
        ``rank``, 0 = top-1, under ``model``, and the image's ``norm`` ||I||_2) and ``judges``
        (judge name -> ``rank`` and ``probability``). ``images`` maps ``(lam, step)`` to the
        (N,3,H,W) image in ``model``'s normalised input space, on the CPU.
    """
    if not isinstance(model, LoadedModel):
        raise TypeError(f"model must be a convvis.LoadedModel (judging needs its preprocessing), "
                        f"got {type(model).__name__}")
    lambdas = [float(lam) for lam in lambdas]
    if not lambdas or any(not math.isfinite(lam) or lam < 0 for lam in lambdas):
        raise ValueError(f"lambdas must be finite and >= 0, got {lambdas!r}")
    snap = Snapshots(checkpoints)  # checks the step counts
    judges = [j if isinstance(j, LoadedModel) else load_model(j, device=model.device) for j in judges]
    module = as_module(model)
    t = resolve_targets(target, num_classes=num_classes_of(model), class_names=class_names_of(model),
                        device="cpu")
    settings = paper_preset()
    report = {"model": model.name, "classes": t.tolist(),
              "class_names": [model.class_names[int(c)] for c in t] if model.class_names else None,
              "lambdas": lambdas, "checkpoints": list(snap.steps), "judges": [j.name for j in judges],
              "k": int(k), "lr": settings["lr"], "optimizer": settings["optimizer"], "rows": []}
    images: dict[tuple[float, int], torch.Tensor] = {}
    for lam in lambdas:
        snap = Snapshots(report["checkpoints"])
        visualise(model, t, **{**paper_preset(lam), "steps": max(snap.steps), "post_step": (snap,)},
                  progress=progress)
        for n in snap.steps:
            x = snap.images[n]
            with torch.no_grad():
                scores = module(x.to(model.device)).float().cpu()
            own = scores.gather(1, t[:, None])
            said = legibility(x.to(model.device), t, model, judges=judges, k=k)
            report["rows"].append({
                "lambda": lam, "step": n,
                "own": {"score": own[:, 0].tolist(), "norm": x.flatten(1).norm(dim=1).tolist(),
                        "probability": scores.softmax(1).gather(1, t[:, None])[:, 0].tolist(),
                        "rank": (scores > own).sum(1).tolist()},
                "judges": {name: {"rank": v.ranks.tolist(), "probability": v.probability.tolist()}
                           for name, v in said.items()},
            })
            images[lam, n] = x
    return report, images


def legible_preset(lam: float = LEGIBLE_LAMBDA) -> dict:
    """Class models a person can recognise: lucent's priors, as keyword arguments for :func:`visualise`.

    Not the paper's method: the objective is still S_c - lambda ||I||^2 on the unnormalised score,
    but the image is a bounded, colour-decorrelated Fourier spectrum (:func:`fourier_image`), each
    step sees it through a random shift, scale and rotation resampled to the nearest pixel
    (:class:`RandomAffine`), and Adam takes
    ``LEGIBLE_STEPS`` steps. Every value is our choice, tuned by looking at the images and by
    :func:`legibility` with judges that took no part in the optimisation.
    """
    return {"objective": ClassScore() - lam * L2(), "param": fourier_image(decay=LEGIBLE_DECAY, bounded=True),
            "transforms": (RandomAffine(**LEGIBLE_AFFINE),), "post_step": (), "optimizer": "adam",
            "lr": LEGIBLE_LR, "steps": LEGIBLE_STEPS}


_PRESETS: dict[str, Callable[[], dict]] = {"paper": paper_preset, "legible": legible_preset}


def class_model_presets() -> list[str]:
    """The names :func:`visualise` and :func:`class_model_preset` accept."""
    return list(_PRESETS)


def class_model_preset(name: str, **overrides) -> dict:
    """The named preset's keyword arguments for :func:`visualise`, with ``overrides`` applied.

    >>> class_model_preset("legible", steps=64)["steps"]
    64
    """
    if not isinstance(name, str) or name not in _PRESETS:
        known = ", ".join(repr(k) for k in _PRESETS)
        raise ValueError(f"there is no class-model preset {name!r}; the presets are {known}")
    settings = _PRESETS[name]()
    unknown = set(overrides) - set(settings)
    if unknown:
        raise TypeError(f"preset {name!r} has no setting(s) {sorted(unknown)}; it has {sorted(settings)}")
    settings.update(overrides)
    return settings


# ---- legibility ---------------------------------------------------------------------------------


@dataclass
class Legibility:
    """How one judge classifies a batch of class models.

    ``ranks``: (N,) rank of each image's target class among the judge's scores (0 = top-1);
    ``predicted``: (N,) the judge's top-1 class for each image; ``probability``: (N,) the judge's
    softmax probability of each image's target class, in [0, 1] (``None`` when not recorded);
    ``top1`` and ``topk``: the fractions of images with rank 0 and rank < ``k``.
    """

    judge: str
    ranks: np.ndarray
    k: int
    predicted: np.ndarray
    probability: np.ndarray | None = None

    @property
    def top1(self) -> float:
        return float((self.ranks == 0).mean())

    @property
    def topk(self) -> float:
        return float((self.ranks < self.k).mean())

    def __repr__(self) -> str:
        return (f"Legibility({self.judge}: top-1 {self.top1:.2f}, top-{self.k} {self.topk:.2f}, "
                f"n={len(self.ranks)})")


def legibility(
    images: torch.Tensor,
    target: Target = None,
    source=None,
    judges: Sequence = LEGIBILITY_JUDGES,
    k: int = 5,
    *,
    targets: Target = None,
) -> dict[str, Legibility]:
    """Transfer legibility: how often networks that took no part in the optimisation see the class.

    Patterns that only fool the network they were made on seldom transfer; images that carry the
    class do. Each image is brought back to [0, 1] with ``source``'s preprocessing, resized (no
    crop) to each judge's input size, normalised for the judge, and classified.

    Parameters
    ----------
    images:
        (N,3,H,W) class models in ``source``'s normalised input space (``Result.image``).
    target:
        The class each image was made for (N,), as for :func:`visualise` (required; ``targets=``
        is its deprecated spelling).
    source:
        The :class:`convvis.LoadedModel` the images were made on (its preprocessing is read).
    judges:
        Names for :func:`convvis.load_model` or loaded models; default EfficientNet-Lite1 and -Lite2,
        which ship offline. A judge should not be ``source``.
    k:
        The second cut-off (top-k), default 5.

    Returns
    -------
    dict
        Judge name -> :class:`Legibility` (``.top1``, ``.topk``, ``.ranks``, ``.predicted``,
        ``.probability``).
    """
    target = deprecated_argument("legibility", "targets", targets, "target", target)
    check_image(images)
    if not isinstance(source, LoadedModel):
        raise TypeError("source must be the convvis.LoadedModel the images were made on (its preprocessing "
                        f"is needed to undo the normalisation), got {type(source).__name__}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not judges:
        raise ValueError("legibility needs at least one judge")
    t = resolve_targets(target, num_classes=num_classes_of(source), class_names=class_names_of(source),
                        n=len(images), device="cpu")
    pixels = preprocessing_of(source).denormalise(images.detach().float()).clamp(0, 1)  # what the reader sees
    out: dict[str, Legibility] = {}
    for judge in judges:
        net = judge if isinstance(judge, LoadedModel) else load_model(judge, device=images.device)
        if net is source or net.name == source.name:
            raise ValueError(f"a judge must not be the network the images were made on ({source.name})")
        prep = preprocessing_of(net)
        x = F.interpolate(pixels, size=(prep.input_size, prep.input_size), mode="bilinear",
                          align_corners=False, antialias=True)
        x = prep.normalise(x)
        with torch.no_grad():
            scores = as_module(net)(x.to(net.device)).float().cpu()
        target_score = scores.gather(1, t[:, None])
        ranks = (scores > target_score).sum(1).numpy()
        probability = scores.softmax(1).gather(1, t[:, None])[:, 0].numpy()
        out[net.name] = Legibility(net.name, ranks, int(k), scores.argmax(1).numpy(), probability)
    return out


def colour_sqrt_cov(photos: Sequence[np.ndarray]) -> np.ndarray:
    """Square root (symmetric) of the RGB covariance of H x W x 3 photos in [0, 1]."""
    pix = np.concatenate([p.reshape(-1, 3) for p in photos]).astype(np.float64)
    cov = np.cov(pix, rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
