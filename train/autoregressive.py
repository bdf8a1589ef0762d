"""The autoregressive family: PixelCNN, Gated PixelCNN, PixelRNN and PixelCNN++.

p(x) = prod_t p(x_t | x_<t), exact, so the loss is the negative log-likelihood of the
data under teacher forcing (every conditional evaluated in one pass on the true image),
reported in bits per dimension: -log p(x) / (H W C ln 2).

Networks (`config.model.name`): 'pixelcnn', 'gated_pixelcnn' (models/pixelcnn.py),
'row_lstm', 'diagonal_bilstm' (PixelRNN, models/pixelrnn.py), 'pixelcnnpp'
(models/pixelcnnpp.py). Likelihoods (`config.model.likelihood`; None = the network's
own, the first of its NETWORK_LIKELIHOODS below):
- 'categorical': a 256-way softmax per sub-pixel, in raster order and R -> G -> B
  within a pixel (van den Oord et al. 2016a, 2016b);
- 'bernoulli': binary data, one logit per sub-pixel (the sigmoid output of the
  PixelRNN paper's binarized MNIST models, table 1), for the same four networks. The
  uint8 images are binarized inside the family (`config.model.binarization`, by
  datasets/transforms.py's `binarize`, as in the VAE family): 'dynamic' draws
  x ~ Bernoulli(pixel / 255) at every step (eval draws the test set once from the
  eval rng), 'threshold' is x = [pixel >= 128], 'binary' reads data already stored
  as 0/1 (tfds 'binarized_mnist'). Samples are 0 or 255.
  Bits/dim are then per binary dimension; binarized MNIST papers report `nll_nats`;
- 'logistic_mixture': a discretized logistic mixture per whole pixel, RGB coupled
  inside the pixel (Salimans et al. 2017; models/pixelcnnpp.py, models/logistic_mixture.py).

Samplers (`config.sampling.method`):
- 'naive': one network evaluation per sub-pixel (per pixel for the mixture) on the
  whole canvas, in one compiled `lax.fori_loop`; the key of position t is
  fold_in(rng, t). Any network.
- 'fast': the same draws from cached activations (sampling/fast_autoregressive.py,
  Ramachandran et al. 2017): one pixel's worth of the network per sub-pixel
  (PixelCNN and Gated PixelCNN, categorical or Bernoulli).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from datasets import transforms
from models import distributions
from models import masked_conv
from models import logistic_mixture
from models import pixelcnn as pixelcnn_models
from models import pixelcnnpp
from models import pixelrnn as pixelrnn_models
from sampling import common as sampling_common
from sampling import fast_autoregressive
from train import contract
from train import optim as optim_lib
from train.state import TrainState

# Network name -> the likelihoods its outputs can parameterise (the first: default).
NETWORK_LIKELIHOODS = {
    "pixelcnn": ("categorical", "bernoulli"),
    "gated_pixelcnn": ("categorical", "bernoulli"),
    "row_lstm": ("categorical", "bernoulli"),
    "diagonal_bilstm": ("categorical", "bernoulli"),
    "pixelcnnpp": ("logistic_mixture",),
}
LIKELIHOODS = ("categorical", "bernoulli", "logistic_mixture")
CONDITIONAL_NETWORKS = ("gated_pixelcnn", "pixelcnnpp")
# config.sampling.method -> the sampler's recorded name. 'naive_autoregressive' is
# the name configs used before the fast sampler existed.
SAMPLING_METHODS = {"naive": "naive_autoregressive",
                    "naive_autoregressive": "naive_autoregressive",
                    "fast": "fast_autoregressive"}
FAST_NETWORKS = ("pixelcnn", "gated_pixelcnn")
NUM_LEVELS = 256
_BINARIZE = 1     # fold_in purpose of the binarization key inside a step's rng


def categorical_log_likelihood(logits: jax.Array, levels: jax.Array) -> jax.Array:
  """log p(x) = sum over sub-pixels of log softmax(logits)[level], in nats.

  logits [B, H, W, C, 256], levels [B, H, W, C] -> [B].
  """
  return jnp.sum(distributions.categorical_log_likelihood(levels, logits), axis=(1, 2, 3))


def bernoulli_log_likelihood(logits: jax.Array, bits: jax.Array) -> jax.Array:
  """log p(x) = sum over sub-pixels of log Bernoulli(x; sigmoid(logit)), in nats.

  logits [B, H, W, C, 1], bits {0, 1} [B, H, W, C] -> [B].
  """
  per_subpixel = distributions.bernoulli_log_likelihood(bits.astype(jnp.float32),
                                                        logits[..., 0].astype(jnp.float32))
  return jnp.sum(per_subpixel, axis=(1, 2, 3))


def bernoulli_as_categorical(logits: jax.Array) -> jax.Array:
  """One Bernoulli logit l [..., 1] -> two-class logits [0, l] [..., 2].

  softmax([0, l])[1] = sigmoid(l), so the categorical sampler draws x ~ Bernoulli.
  """
  return jnp.concatenate([jnp.zeros_like(logits), logits], axis=-1)


# --------------------------------------------------------------------- sampling
def sample_subpixels(logits_fn: Callable[[jax.Array], jax.Array], rng: jax.Array,
                     shape: tuple[int, int, int, int],
                     num_positions: int | None = None) -> jax.Array:
  """Naive sampling, one sub-pixel at a time: uint8 [N, H, W, C].

  logits_fn maps a canvas of int32 levels [N, H, W, C] to categorical logits
  [N, H, W, C, K] (K = 256, or 2 for binary data). Position t = (i * W + j) * C + c,
  i.e. raster order and R, G, B within a pixel; the network runs on the whole canvas
  at every one of the H W C positions. num_positions < H W C draws only the first
  ones (the rest stay 0): benchmarks time a few steps of a long loop with it.
  """
  n, h, w, c = shape
  num_positions = h * w * c if num_positions is None else num_positions

  def body(t, canvas):
    i, rest = jnp.divmod(t, w * c)
    j, channel = jnp.divmod(rest, c)
    logits = logits_fn(canvas)
    num_classes = logits.shape[-1]
    logits = jax.lax.dynamic_slice(logits, (0, i, j, channel, 0),
                                   (n, 1, 1, 1, num_classes)).reshape(n, num_classes)
    value = jax.random.categorical(jax.random.fold_in(rng, t), logits, axis=-1)
    return jax.lax.dynamic_update_slice(canvas, value.astype(jnp.int32).reshape(n, 1, 1, 1),
                                        (0, i, j, channel))

  canvas = jax.lax.fori_loop(0, num_positions, body, jnp.zeros(shape, jnp.int32))
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
    pixel = transforms.centered_to_uint8(
        draw_fn(jax.random.fold_in(rng, t), pixel_params)).astype(jnp.int32)
    return jax.lax.dynamic_update_slice(canvas, pixel, (0, i, j, 0))

  canvas = jax.lax.fori_loop(0, h * w, body, jnp.zeros(shape, jnp.int32))
  return canvas.astype(jnp.uint8)


# ----------------------------------------------------------------------- family
def _check_likelihood(name: str, likelihood: str) -> None:
  if likelihood not in LIKELIHOODS:
    raise ValueError(f"config.model.likelihood={likelihood!r}; choose one of "
                     f"{LIKELIHOODS}.")
  allowed = NETWORK_LIKELIHOODS[name]
  if likelihood not in allowed:
    raise ValueError(f"config.model.name={name!r} outputs a "
                     f"{' or '.join(map(repr, allowed))} likelihood, but "
                     f"config.model.likelihood={likelihood!r}; set "
                     f"model.likelihood={allowed[0]!r}.")


class Autoregressive(contract.Family):
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
    # None: the network's own likelihood, the first of its NETWORK_LIKELIHOODS.
    self.likelihood = (NETWORK_LIKELIHOODS[name][0] if m.likelihood is None
                       else m.likelihood)
    _check_likelihood(name, self.likelihood)
    self.binarization = None
    if self.likelihood == "bernoulli":
      self.binarization = m.binarization
      if self.binarization not in transforms.BINARIZATIONS:
        raise ValueError(f"config.model.binarization={self.binarization!r}; the "
                         f"Bernoulli likelihood needs one of {transforms.BINARIZATIONS}.")
    conditional = bool(m.conditional)
    if conditional and num_classes <= 0:
      raise ValueError(f"config.model.conditional=True but {config.data.dataset!r} has "
                       "no class labels.")
    if conditional and name not in CONDITIONAL_NETWORKS:
      network = "The PixelCNN" if name == "pixelcnn" else "PixelRNN"
      raise ValueError(f"{network} is unconditional: set model.conditional=False or "
                       "model.name='gated_pixelcnn' for class-conditional models.")
    self.num_classes = num_classes if conditional else 0
    self.dropout = float(m.dropout)
    self.sampler = self._sampler_name(name)
    if self.likelihood == "logistic_mixture":
      self.model = pixelcnnpp.PixelCNNPP(
          nr_filters=m.nr_filters, nr_resnet=m.nr_resnet,
          nr_logistic_mix=m.nr_logistic_mix, dropout=self.dropout,
          num_classes=self.num_classes)
    else:
      self.model = self._subpixel_network(name)
    self.tx = optim_lib.make_optimizer(config.optim)

  def _sampler_name(self, name: str) -> str:
    method = self.config.sampling.method
    if method not in SAMPLING_METHODS:
      raise ValueError(f"config.sampling.method={method!r}; the autoregressive family "
                       f"samples with one of {tuple(SAMPLING_METHODS)}.")
    sampler = SAMPLING_METHODS[method]
    if sampler == SAMPLING_METHODS["fast"] and name not in FAST_NETWORKS:
      raise ValueError(f"config.sampling.method='fast' caches the activations of "
                       f"{FAST_NETWORKS} only, not of model.name={name!r}; set "
                       "sampling.method='naive'.")
    return sampler

  def _subpixel_network(self, name: str):
    """The categorical/Bernoulli network: 256 or 1 outputs per sub-pixel."""
    m = self.config.model
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
    masked_conv.check_kernel_sizes(m.kernel_size, m.first_kernel_size)
    num_levels = 1 if self.likelihood == "bernoulli" else NUM_LEVELS
    common = dict(num_channels=num_channels, ch=m.ch, num_layers=m.num_layers,
                  kernel_size=m.kernel_size, first_kernel_size=m.first_kernel_size,
                  head_features=m.head_features, num_levels=num_levels)
    if name == "pixelcnn":
      return pixelcnn_models.PixelCNN(**common)
    if name == "gated_pixelcnn":
      return pixelcnn_models.GatedPixelCNN(**common, num_classes=self.num_classes)
    return pixelrnn_models.PixelRNN(**common, layer_type=name,
                                    skip_connections=bool(m.skip_connections))

  # ------------------------------------------------------------------ network
  def _labels(self, batch: dict[str, Any]) -> jax.Array | None:
    return batch["label"].astype(jnp.int32) if self.num_classes else None

  def network_input(self, data: jax.Array) -> jax.Array:
    """Modelled data (levels 0..255, or bits {0, 1}) -> the network's input in [-1, 1]."""
    if self.likelihood == "bernoulli":
      return transforms.unit_to_centered(data)
    return transforms.uint8_to_centered(data)

  def prepare(self, images: jax.Array, rng: jax.Array) -> jax.Array:
    """uint8 images -> the modelled data: int32 levels, or bits for 'bernoulli'."""
    if self.likelihood == "bernoulli":
      return transforms.binarize(images, rng, self.binarization).astype(jnp.int32)
    return images.astype(jnp.int32)

  def apply(self, params, data: jax.Array, y: jax.Array | None = None, *,
            train: bool = False, rng: jax.Array | None = None) -> jax.Array:
    """Network outputs for modelled data [B, H, W, C]: logits [B, H, W, C, 256]
    (categorical), [B, H, W, C, 1] (bernoulli) or mixture parameters [B, H, W, K]."""
    rngs = {"dropout": rng} if train and self.dropout > 0 else {}
    return self.model.apply({"params": params}, self.network_input(data), y, train=train,
                            rngs=rngs)

  def log_likelihood(self, params, data: jax.Array, y: jax.Array | None = None, *,
                     train: bool = False, rng: jax.Array | None = None) -> jax.Array:
    """log p(x) in nats per example [B] of modelled data [B, H, W, C] (see `prepare`)."""
    out = self.apply(params, data, y, train=train, rng=rng)
    if self.likelihood == "categorical":
      return categorical_log_likelihood(out, data)
    if self.likelihood == "bernoulli":
      return bernoulli_log_likelihood(out, data)
    return logistic_mixture.log_prob(transforms.uint8_to_centered(data), out,
                                 num_mixtures=self.config.model.nr_logistic_mix)

  # ----------------------------------------------------------------- training
  def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
    data = self.prepare(example_batch["image"][:1], rng)
    y = self._labels(example_batch)
    y = None if y is None else y[:1]
    params = self.model.init({"params": rng, "dropout": rng}, self.network_input(data), y,
                             train=False)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                      tx=self.tx)

  def loss(self, params, batch: dict[str, Any], rng: jax.Array):
    """Mean negative log-likelihood in bits/dim (teacher forcing)."""
    data = self.prepare(batch["image"], jax.random.fold_in(rng, _BINARIZE))
    log_lik = self.log_likelihood(params, data, self._labels(batch), train=True, rng=rng)
    return jnp.mean(distributions.nats_to_bits_per_dim(-log_lik, self.num_dims))

  def train_step(self, state: TrainState, batch: dict[str, Any]):
    rng = jax.random.fold_in(state.rng, state.step)
    loss, grads = jax.value_and_grad(self.loss)(state.params, batch, rng)
    return optim_lib.apply_gradients(state, grads, self.config.optim, loss=loss)

  # --------------------------------------------------------------- evaluation
  def eval_step(self, params, batch: dict[str, Any],
                rng: jax.Array) -> dict[str, jax.Array]:
    """Exact per-example bits/dim ('bpd') and negative log-likelihood in nats.

    The likelihood is deterministic; rng only draws a dynamic binarization.
    """
    data = self.prepare(batch["image"], rng)
    nll = -self.log_likelihood(params, data, self._labels(batch))
    return dict(bpd=distributions.nats_to_bits_per_dim(nll, self.num_dims), nll_nats=nll)

  # ----------------------------------------------------------------- sampling
  def sample(self, params, rng: jax.Array, num_samples: int) -> jax.Array:
    """uint8 NHWC samples; conditional models cycle the classes; binary data 0 / 255."""
    y = sampling_common.cycled_labels(num_samples, self.num_classes)
    shape = (num_samples, *self.image_shape)
    if self.likelihood == "logistic_mixture":
      num_mixtures = self.config.model.nr_logistic_mix

      def draw(key, pixel_params):
        return logistic_mixture.sample(key, pixel_params, num_mixtures=num_mixtures)

      return sample_pixels(lambda canvas: self.apply(params, canvas, y), draw, rng, shape)
    to_logits = (bernoulli_as_categorical if self.likelihood == "bernoulli"
                 else lambda out: out)
    if self.sampler == SAMPLING_METHODS["fast"]:
      canvas = fast_autoregressive.sample_subpixels(
          self.model, params, rng, shape, input_fn=self.network_input,
          logits_fn=to_logits, labels=y).astype(jnp.uint8)
    else:
      canvas = sample_subpixels(lambda data: to_logits(self.apply(params, data, y)), rng,
                                shape)
    return transforms.unit_to_uint8(canvas) if self.likelihood == "bernoulli" else canvas

  def num_network_evaluations(self) -> int:
    h, w, c = self.image_shape
    return h * w if self.likelihood == "logistic_mixture" else h * w * c

  def sampler_settings(self) -> dict[str, Any]:
    m = self.config.model
    fast = self.sampler == SAMPLING_METHODS["fast"]
    settings = dict(
        sampler=self.sampler, nfe=self.num_network_evaluations(),
        # What one of the nfe evaluations computes.
        evaluation=("one pixel, cached activations" if fast else "whole canvas"),
        network=m.name, likelihood=self.likelihood,
        order=("raster, whole pixels" if self.likelihood == "logistic_mixture"
               else "raster, R->G->B within a pixel"),
        conditional=bool(self.num_classes),
        use_ema=self.config.sampling.use_ema)
    if self.binarization is not None:
      settings["binarization"] = self.binarization
    return settings
