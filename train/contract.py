"""The contract between the loop and a family, written down as types.

Every family subclasses `Family` and provides its four abstract methods; a family that
misses one cannot be constructed, and the error names it. Beyond those, a family
offers optional capabilities, each a small runtime-checkable Protocol:

  HasLikelihood   eval_step: per-example bits/dim etc. on the test split (--mode=eval)
  HasImageGrids   image_grids: reconstructions/interpolations of real images
  CountsNFE       sample_with_nfe: samplers whose network evaluations are data-dependent
  Conditional     conditioning + sample_with_condition: --label / --prompt
  Editable        edit_process + edit_eps_fn: inpaint, colorize, SDEdit, interpolate, SR3

`capabilities(family)` reads them once, when the family is built (train/families.py);
the loop, evaluation and the edit driver consult that record and never probe a family.
`require(caps, name, why)` raises the one-line error that says what is missing.

The smallest family to read as an example is `train/vae.py`.
"""

import abc
import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import numpy as np

from models import diffusion as diffusion_lib
from sampling.guidance import Conditioning
from train.state import TrainState

# 'image' (uint8 NHWC; float32 [B, D] where DatasetInfo.kind == 'points') and the
# dataset's other keys.
Batch = dict[str, Any]
Metrics = dict[str, jax.Array]
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


class Family(abc.ABC):
  """Required of every family: built as `Family(config, image_shape, num_classes)`.

  All methods are pure functions of their arguments (the loop jits them); nothing here
  touches files or devices.
  """

  image_shape: tuple[int, ...]      # (H, W, C); points: (D,)
  # Class-conditional families: how many classes. `sample(params, rng, n)` then
  # conditions sample i on label i % num_classes (sampling.common.cycled_labels), the
  # labels --mode=sample writes beside the samples. 0: no class labels.
  num_classes: int = 0

  @abc.abstractmethod
  def init(self, rng: jax.Array, example_batch: Batch) -> TrainState:
    """A fresh TrainState (params, EMA params, optimizer state, step 0, rng)."""

  @abc.abstractmethod
  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """One update; metrics are scalars and include 'loss'."""

  @abc.abstractmethod
  def sample(self, params: Any, rng: jax.Array, num_samples: int) -> jax.Array:
    """uint8 NHWC samples from `sampling_params(state)` (points: float32 [N, D])."""

  @abc.abstractmethod
  def sampler_settings(self) -> dict[str, Any]:
    """The sampler and its settings, recorded beside every sample and metric."""

  def sampling_params(self, state: TrainState, use_ema: bool = True) -> Any:
    """What `sample` takes: the EMA or the raw params (a GAN adds batch-norm state)."""
    return state.ema_params if use_ema else state.params


@runtime_checkable
class HasLikelihood(Protocol):
  def eval_step(self, params: Any, batch: Batch, rng: jax.Array) -> Metrics:
    """Per-example [B] metrics on test data, e.g. bits/dim of a bound ('bpd_vlb')."""


@runtime_checkable
class HasImageGrids(Protocol):
  def image_grids(self, params: Any, images: jax.Array,
                  rng: jax.Array) -> dict[str, jax.Array]:
    """Named uint8 grids made from real images (reconstructions, interpolations)."""


@runtime_checkable
class CountsNFE(Protocol):
  def sample_with_nfe(self, params: Any, rng: jax.Array,
                      num_samples: int) -> tuple[jax.Array, jax.Array]:
    """(uint8 NHWC samples, network evaluations per sample) for adaptive samplers."""


@runtime_checkable
class Conditional(Protocol):
  conditioning: Conditioning

  def sample_with_condition(self, params: Any, rng: jax.Array, condition: jax.Array,
                            num_samples: int) -> jax.Array:
    """uint8 NHWC samples of p(x | condition), guided by conditioning.guidance_weight."""


@dataclasses.dataclass(frozen=True)
class EditProcess:
  """The Gaussian process an edit walks, read the way a DDPM reads it."""

  diffusion: diffusion_lib.GaussianDiffusion            # all T steps (DDIM inversion)
  sampling_diffusion: diffusion_lib.GaussianDiffusion   # the steps ancestral edits take
  sampling_timesteps: np.ndarray | None                 # their original indices, or None
  var_type: str                                         # the ancestral step's variance
  clip_denoised: bool
  superres_factor: int = 0                              # > 0: an SR3 model
  upsample_method: str = "bicubic"


@runtime_checkable
class Editable(Protocol):
  edit_process: EditProcess

  def edit_eps_fn(self, params: Any, condition: jax.Array | None = None,
                  guidance_weight: float | None = None) -> EpsFn:
    """eps(x, t) on `edit_process.diffusion`'s steps, guided as the config says."""


CAPABILITIES = dict(likelihood=HasLikelihood, image_grids=HasImageGrids,
                    counts_nfe=CountsNFE, conditional=Conditional, editable=Editable)


@dataclasses.dataclass(frozen=True)
class Capabilities:
  """Which optional capabilities a family has; read once when it is built."""

  family: str
  likelihood: bool
  image_grids: bool
  counts_nfe: bool
  conditional: bool
  editable: bool


def capabilities(family: Family, name: str) -> Capabilities:
  """Checks the contract of `family` (config.model.family `name`) and its capabilities."""
  if not isinstance(family, Family):
    raise TypeError(f"The {name!r} family ({type(family).__name__}) does not subclass "
                    "train.contract.Family.")
  return Capabilities(family=name, **{key: isinstance(family, protocol)
                                      for key, protocol in CAPABILITIES.items()})


def require(caps: Capabilities, capability: str, why: str) -> None:
  """A one-line error when the family lacks `capability` (a key of CAPABILITIES)."""
  if not getattr(caps, capability):
    protocol = CAPABILITIES[capability]
    members = sorted({*getattr(protocol, "__annotations__", {}),
                      *(m for m in vars(protocol) if not m.startswith("_"))})
    raise ValueError(f"{why} needs a family with the {protocol.__name__} capability "
                     f"({', '.join(members)}); config.model.family={caps.family!r} "
                     "has none.")
