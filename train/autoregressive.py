"""The autoregressive family: PixelCNN, Gated PixelCNN and PixelCNN++.

p(x) = prod_t p(x_t | x_<t), exact, so the loss is the negative log-likelihood of the
data under teacher forcing (every conditional evaluated in one pass on the true image),
reported in bits per dimension: -log p(x) / (H W C ln 2).

Two likelihoods, `config.model.likelihood`:
- 'categorical': a 256-way softmax per sub-pixel, in raster order and R -> G -> B
  within a pixel (van den Oord et al. 2016a, 2016b; models/pixelcnn.py);
- 'logistic_mixture': a discretized logistic mixture per whole pixel, RGB coupled
  inside the pixel (Salimans et al. 2017; models/pixelcnnpp.py, models/logistic_mixture.py).

Sampling is the naive sampler: one network evaluation per sub-pixel (categorical) or
per pixel (mixture), on the whole canvas, in one compiled `lax.fori_loop`; the key of
position t is fold_in(rng, t).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from evaluation.iwae import nats_to_bits_per_dim
from models import pixelcnn as pixelcnn_models
from train import optim as optim_lib
from train.state import TrainState, ema_update

# Network name -> the likelihood its outputs parameterise.
NETWORK_LIKELIHOODS = {
    "pixelcnn": "categorical",
    "gated_pixelcnn": "categorical",
    "pixelcnnpp": "logistic_mixture",
}
LIKELIHOODS = ("categorical", "logistic_mixture")
SAMPLER = "naive_autoregressive"
NUM_LEVELS = 256


def scale_images(levels: jax.Array) -> jax.Array:
  """Levels 0..255 (uint8 or int) -> float32 in [-1, 1] (level k -> k / 127.5 - 1)."""
  return levels.astype(jnp.float32) / 127.5 - 1.0


def to_levels(x: jax.Array) -> jax.Array:
  """[-1, 1] on the 256-level grid -> int32 levels 0..255."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, NUM_LEVELS - 1).astype(jnp.int32)


def categorical_log_likelihood(logits: jax.Array, levels: jax.Array) -> jax.Array:
  """log p(x) = sum over sub-pixels of log softmax(logits)[level], in nats.

  logits [B, H, W, C, 256], levels [B, H, W, C] -> [B].
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, levels.astype(jnp.int32)[..., None], axis=-1)
  return jnp.sum(picked, axis=(1, 2, 3, 4))


# --------------------------------------------------------------------- sampling
def sample_subpixels(logits_fn: Callable[[jax.Array], jax.Array], rng: jax.Array,
                     shape: tuple[int, int, int, int]) -> jax.Array:
  """Naive sampling, one sub-pixel at a time: uint8 [N, H, W, C].

  logits_fn maps a canvas of int32 levels [N, H, W, C] to logits [N, H, W, C, 256].
  Position t = (i * W + j) * C + c, i.e. raster order and R, G, B within a pixel; the
  network runs on the whole canvas at every one of the H W C positions.
  """
  n, h, w, c = shape

  def body(t, canvas):
    i, rest = jnp.divmod(t, w * c)
    j, channel = jnp.divmod(rest, c)
    logits = jax.lax.dynamic_slice(logits_fn(canvas), (0, i, j, channel, 0),
                                   (n, 1, 1, 1, NUM_LEVELS)).reshape(n, NUM_LEVELS)
    value = jax.random.categorical(jax.random.fold_in(rng, t), logits, axis=-1)
    return jax.lax.dynamic_update_slice(canvas, value.astype(jnp.int32).reshape(n, 1, 1, 1),
                                        (0, i, j, channel))

  canvas = jax.lax.fori_loop(0, h * w * c, body, jnp.zeros(shape, jnp.int32))
  return canvas.astype(jnp.uint8)


def sample_pixels(params_fn: Callable[[jax.Array], jax.Array],
                  draw_fn: Callable[[jax.Array, jax.Array], jax.Array], rng: jax.Array,
                  shape: tuple[int, int, int, int]) -> jax.Array:
  """Naive sampling, one whole pixel at a time: uint8 [N, H, W, C].

  params_fn maps a canvas of int32 levels [N, H, W, C] to per-pixel distribution
  parameters [N, H, W, K]; draw_fn(rng, params [N, 1, 1, K]) draws that pixel, floats
  in [-1, 1] on the 256-level grid [N, 1, 1, C]. H W network evaluations.
  """
  n, h, w, c = shape

  def body(t, canvas):
    i, j = jnp.divmod(t, w)
    params = params_fn(canvas)
    pixel_params = jax.lax.dynamic_slice(params, (0, i, j, 0), (n, 1, 1, params.shape[-1]))
    pixel = to_levels(draw_fn(jax.random.fold_in(rng, t), pixel_params))
    return jax.lax.dynamic_update_slice(canvas, pixel, (0, i, j, 0))

  canvas = jax.lax.fori_loop(0, h * w, body, jnp.zeros(shape, jnp.int32))
  return canvas.astype(jnp.uint8)


# ----------------------------------------------------------------------- family
def _logistic_mixture_modules():
  """(models.logistic_mixture, models.pixelcnnpp), imported only when used."""
  try:
    return (importlib.import_module("models.logistic_mixture"),
            importlib.import_module("models.pixelcnnpp"))
  except ModuleNotFoundError as e:
    raise ValueError("config.model.likelihood='logistic_mixture' needs "
                     "models/logistic_mixture.py and models/pixelcnnpp.py, which are not "
                     f"in this checkout ({e}).") from e


class Autoregressive:
  """Exact-likelihood autoregressive image models; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
               num_classes: int):
    self.config = config
    m = config.model
    self.image_shape = tuple(image_shape)
    self.num_dims = math.prod(self.image_shape)
    name = m.name
    if name not in NETWORK_LIKELIHOODS:
      raise ValueError(f"config.model.name={name!r}; choose one of "
                       f"{tuple(NETWORK_LIKELIHOODS)}.")
    self.likelihood = m.get("likelihood", NETWORK_LIKELIHOODS[name])
    if self.likelihood not in LIKELIHOODS:
      raise ValueError(f"config.model.likelihood={self.likelihood!r}; choose one of "
                       f"{LIKELIHOODS}.")
    if self.likelihood != NETWORK_LIKELIHOODS[name]:
      raise ValueError(f"config.model.name={name!r} outputs a "
                       f"{NETWORK_LIKELIHOODS[name]!r} likelihood, but "
                       f"config.model.likelihood={self.likelihood!r}; set "
                       f"model.likelihood={NETWORK_LIKELIHOODS[name]!r}.")
    conditional = bool(m.get("conditional", False))
    if conditional and num_classes <= 0:
      raise ValueError(f"config.model.conditional=True but {config.data.dataset!r} has "
                       "no class labels.")
    if conditional and name == "pixelcnn":
      raise ValueError("The PixelCNN is unconditional: set model.conditional=False or "
                       "model.name='gated_pixelcnn' for class-conditional models.")
    self.num_classes = num_classes if conditional else 0
    self.dropout = float(m.get("dropout", 0.0))
    if self.likelihood == "categorical":
      self.model = self._categorical_network(name, m)
      self.mixture = None
    else:
      self.mixture, pixelcnnpp = _logistic_mixture_modules()
      self.model = pixelcnnpp.PixelCNNPP(
          nr_filters=m.nr_filters, nr_resnet=m.nr_resnet,
          nr_logistic_mix=m.nr_logistic_mix, dropout=self.dropout,
          num_classes=self.num_classes)
    self.tx = optim_lib.make_optimizer(config.optim)

  def _categorical_network(self, name: str, m: ml_collections.ConfigDict):
    num_channels = self.image_shape[-1]
    if self.dropout:
      raise ValueError(f"The {name} network has no dropout; set model.dropout=0, got "
                       f"{self.dropout}.")
    if m.ch < num_channels:
      raise ValueError(f"config.model.ch={m.ch} cannot hold one feature group per colour "
                       f"channel ({num_channels}); use ch >= {num_channels}.")
    if m.num_layers < 1 or m.head_features < num_channels:
      raise ValueError(f"config.model.num_layers must be >= 1 and head_features >= "
                       f"{num_channels}, got {m.num_layers} and {m.head_features}.")
    for field in ("kernel_size", "first_kernel_size"):
      if m[field] < 3 or m[field] % 2 == 0:
        raise ValueError(f"config.model.{field} must be odd and >= 3, got {m[field]}.")
    common = dict(num_channels=num_channels, ch=m.ch, num_layers=m.num_layers,
                  kernel_size=m.kernel_size, first_kernel_size=m.first_kernel_size,
                  head_features=m.head_features)
    if name == "pixelcnn":
      return pixelcnn_models.PixelCNN(**common)
    return pixelcnn_models.GatedPixelCNN(**common, num_classes=self.num_classes)

  # ------------------------------------------------------------------ network
  def _labels(self, batch: dict[str, Any]) -> jax.Array | None:
    return batch["label"].astype(jnp.int32) if self.num_classes else None

  def apply(self, params, levels: jax.Array, y: jax.Array | None = None, *,
            train: bool = False, rng: jax.Array | None = None) -> jax.Array:
    """Network outputs for images of levels [B, H, W, C]: logits [B, H, W, C, 256]
    (categorical) or mixture parameters [B, H, W, K] (logistic_mixture)."""
    rngs = {"dropout": rng} if train and self.dropout > 0 else {}
    return self.model.apply({"params": params}, scale_images(levels), y, train=train,
                            rngs=rngs)

  def log_likelihood(self, params, levels: jax.Array, y: jax.Array | None = None, *,
                     train: bool = False, rng: jax.Array | None = None) -> jax.Array:
    """log p(x) in nats per example [B] of images of levels [B, H, W, C]."""
    out = self.apply(params, levels, y, train=train, rng=rng)
    if self.likelihood == "categorical":
      return categorical_log_likelihood(out, levels)
    return self.mixture.log_prob(scale_images(levels), out,
                                 num_mixtures=self.config.model.nr_logistic_mix)

  # ----------------------------------------------------------------- training
  def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
    images = example_batch["image"][:1]
    y = self._labels(example_batch)
    y = None if y is None else y[:1]
    params = self.model.init({"params": rng, "dropout": rng}, scale_images(images), y,
                             train=False)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                      tx=self.tx)

  def loss(self, params, batch: dict[str, Any], rng: jax.Array):
    """Mean negative log-likelihood in bits/dim (teacher forcing)."""
    log_lik = self.log_likelihood(params, batch["image"], self._labels(batch), train=True,
                                  rng=rng)
    return jnp.mean(nats_to_bits_per_dim(-log_lik, self.num_dims))

  def train_step(self, state: TrainState, batch: dict[str, Any]):
    rng = jax.random.fold_in(state.rng, state.step)
    loss, grads = jax.value_and_grad(self.loss)(state.params, batch, rng)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(state.ema_params, params, self.config.optim.ema_decay)
    metrics = dict(loss=loss, grad_norm=optax.global_norm(grads),
                   learning_rate=optim_lib.learning_rate_schedule(self.config.optim)(
                       state.step))
    return state.replace(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state), metrics

  # --------------------------------------------------------------- evaluation
  def eval_step(self, params, batch: dict[str, Any],
                rng: jax.Array) -> dict[str, jax.Array]:
    """Exact per-example bits/dim ('bpd') and negative log-likelihood in nats."""
    del rng   # the likelihood is exact and deterministic
    nll = -self.log_likelihood(params, batch["image"], self._labels(batch))
    return dict(bpd=nats_to_bits_per_dim(nll, self.num_dims), nll_nats=nll)

  # ----------------------------------------------------------------- sampling
  def sample(self, params, rng: jax.Array, num_samples: int) -> jax.Array:
    """uint8 NHWC samples by the naive sampler; conditional models cycle the classes."""
    y = (jnp.arange(num_samples, dtype=jnp.int32) % self.num_classes
         if self.num_classes else None)
    shape = (num_samples, *self.image_shape)
    network = lambda canvas: self.apply(params, canvas, y)  # noqa: E731
    if self.likelihood == "categorical":
      return sample_subpixels(network, rng, shape)
    num_mixtures = self.config.model.nr_logistic_mix

    def draw(key, pixel_params):
      return self.mixture.sample(key, pixel_params, num_mixtures=num_mixtures)

    return sample_pixels(network, draw, rng, shape)

  def num_network_evaluations(self) -> int:
    h, w, c = self.image_shape
    return h * w * c if self.likelihood == "categorical" else h * w

  def sampler_settings(self) -> dict[str, Any]:
    m = self.config.model
    return dict(sampler=SAMPLER, nfe=self.num_network_evaluations(),
                network=m.name, likelihood=self.likelihood,
                order="raster, R->G->B within a pixel" if self.likelihood == "categorical"
                else "raster, whole pixels",
                conditional=bool(self.num_classes),
                use_ema=self.config.sampling.use_ema)
