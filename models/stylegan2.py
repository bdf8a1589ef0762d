"""StyleGAN2 at small resolutions (Karras et al. 2020; the StyleGAN2-ADA 'cifar' setup).

Generator: a mapping network z (+ class embedding) -> w with equalized learning rate
(lr multiplier 0.01) and a tracked average w_avg (for the truncation trick); a
synthesis network from a learned 4x4 constant through modulated/demodulated 3x3 convs
(eq. 1-3 of the paper), per-pixel noise inputs with learned strengths, and the 'skip'
output architecture (toRGB at every resolution, up-sampled and summed). Style mixing
(regularisation by two latents with a random crossover) happens in train mode.

Discriminator: 'orig' (plain; the ADA 'cifar' configuration) or 'resnet' blocks of
3x3 convs with [1,3,3,1] low-pass down-sampling, then minibatch standard deviation
(Karras et al. 2018), a 3x3 conv, two dense layers, and for classes the projection
onto a class embedding mapped by its own network (the ADA conditional discriminator).

Up/down-sampling uses the separable [1,3,3,1] FIR filter (upfirdn2d), with the
reference padding: an up-sampling 3x3 conv is a stride-2 transposed conv followed by
the filter (gain 4); a down-sampling 3x3 conv is the filter followed by a stride-2 conv.
Activations are LeakyReLU(0.2) times sqrt(2). Not implemented: the float16 activation
clamp (conv_clamp, only relevant to mixed precision) and path-length regularisation.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LRELU_GAIN = math.sqrt(2.0)
W_AVG_COLLECTION = "w_avg"


def lrelu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, 0.2) * LRELU_GAIN


def normalize_2nd_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def fir_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> np.ndarray:
  f = np.asarray(taps, np.float64)
  f = np.outer(f, f)
  return (f / f.sum()).astype(np.float32)


def upfirdn2d(x: jax.Array, f: np.ndarray, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0), gain: float = 1.0) -> jax.Array:
  """Up-sample by zero insertion, pad, filter with f (depthwise), down-sample. NHWC."""
  b, h, w, c = x.shape
  if up > 1:
    x = jnp.zeros((b, h * up, w * up, c), x.dtype).at[:, ::up, ::up, :].set(x)
  x = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
  kernel = jnp.asarray(f * gain, x.dtype)[::-1, ::-1, None, None]
  kernel = jnp.tile(kernel, (1, 1, 1, c))
  x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=c)
  return x[:, ::down, ::down, :] if down > 1 else x


def upsample2d(x: jax.Array, f: np.ndarray) -> jax.Array:
  """2x up-sampling with the FIR filter: [B, H, W, C] -> [B, 2H, 2W, C]."""
  fw = f.shape[0]
  return upfirdn2d(x, f, up=2, pad=((fw + 1) // 2, (fw - 2) // 2), gain=4.0)


class EqualDense(nn.Module):
  """Dense layer with equalized learning rate: weights stored N(0, 1/lr_mul^2) and
  scaled at run time by lr_mul / sqrt(fan_in); the bias (stored as bias_init) by lr_mul."""
  features: int
  lr_multiplier: float = 1.0
  bias_init: float = 0.0
  activation: str = "linear"

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    w = self.param("kernel", nn.initializers.normal(1.0 / self.lr_multiplier),
                   (fan_in, self.features))
    b = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
    y = x @ (w * (self.lr_multiplier / math.sqrt(fan_in))) + b * self.lr_multiplier
    return lrelu(y) if self.activation == "lrelu" else y


class EqualConv(nn.Module):
  """Conv with equalized learning rate; optional [1,3,3,1] FIR down-sampling by 2."""
  features: int
  kernel_size: int = 3
  down: bool = False
  use_bias: bool = True
  activation: str = "lrelu"
  gain: float = 1.0

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    fan_in = x.shape[-1] * k * k
    w = self.param("kernel", nn.initializers.normal(1.0), (k, k, x.shape[-1], self.features))
    w = w * (1.0 / math.sqrt(fan_in))
    if self.down:
      f = fir_filter()
      p = k // 2     # reference: conv padding k//2 plus the filter's share
      x = upfirdn2d(x, f, pad=(p + (f.shape[0] - 1) // 2, p + (f.shape[0] - 2) // 2))
      y = jax.lax.conv_general_dilated(x, w, (2, 2), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    y = lrelu(y) if self.activation == "lrelu" else y
    return y * self.gain


def modulated_conv(x: jax.Array, weight: jax.Array, styles: jax.Array, *,
                   demodulate: bool = True, up: bool = False) -> jax.Array:
  """Karras et al. 2020, eq. 1-3: w'_ijk = s_i w_ijk, w''_ijk = w'_ijk /
  sqrt(sum_ik w'^2 + eps), as one grouped conv over the batch. x: [B, H, W, I],
  weight: [k, k, I, O], styles: [B, I]."""
  b, h, w_, i = x.shape
  k, _, _, o = weight.shape
  wmod = weight[None] * styles[:, None, None, :, None]               # [B, k, k, I, O]
  if demodulate:
    dcoefs = jax.lax.rsqrt(jnp.sum(jnp.square(wmod), axis=(1, 2, 3)) + 1e-8)  # [B, O]
    wmod = wmod * dcoefs[:, None, None, None, :]
  # Grouped conv: the batch becomes groups of the channel axis.
  xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, w_, b * i)
  wg = jnp.transpose(wmod, (1, 2, 3, 0, 4)).reshape(k, k, i, b * o)
  dn = ("NHWC", "HWIO", "NHWC")
  if up:
    # Transposed conv with stride 2 and no padding: [H, W] -> [2H + 1, 2W + 1].
    y = jax.lax.conv_general_dilated(xg, wg, (1, 1), [(k - 1, k - 1)] * 2,
                                     lhs_dilation=(2, 2), dimension_numbers=dn,
                                     feature_group_count=b)
  else:
    y = jax.lax.conv_general_dilated(xg, wg, (1, 1), "SAME", dimension_numbers=dn,
                                     feature_group_count=b)
  ho, wo = y.shape[1], y.shape[2]
  y = jnp.transpose(y.reshape(ho, wo, b, o), (2, 0, 1, 3))
  if up:
    y = upfirdn2d(y, fir_filter(), pad=(1, 1), gain=4.0)       # low-pass: -> [2H, 2W]
  return y


class SynthesisLayer(nn.Module):
  """Modulated 3x3 conv (+ optional 2x up-sampling), noise, bias, lrelu."""
  features: int
  up: bool = False

  @nn.compact
  def __call__(self, x, w, noise_rng, randomize_noise: bool = True):
    styles = EqualDense(x.shape[-1], bias_init=1.0, name="affine")(w)
    weight = self.param("weight", nn.initializers.normal(1.0),
                        (3, 3, x.shape[-1], self.features))
    x = modulated_conv(x, weight, styles, demodulate=True, up=self.up)
    strength = self.param("noise_strength", nn.initializers.zeros, ())
    if randomize_noise:
      noise = jax.random.normal(noise_rng, (*x.shape[:3], 1), x.dtype)
    else:
      noise = jnp.zeros((*x.shape[:3], 1), x.dtype)
    x = x + noise * strength
    return lrelu(x + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, x, w):
    styles = EqualDense(x.shape[-1], bias_init=1.0, name="affine")(w)
    styles = styles / math.sqrt(x.shape[-1])       # weight gain 1/sqrt(fan_in), 1x1
    weight = self.param("weight", nn.initializers.normal(1.0),
                        (1, 1, x.shape[-1], self.channels))
    x = modulated_conv(x, weight, styles, demodulate=False)
    return x + self.param("bias", nn.initializers.zeros, (self.channels,))


class MappingNetwork(nn.Module):
  """z (and/or a class embedding) -> w: normalise, num_layers x EqualDense lrelu with
  lr multiplier 0.01; tracks w_avg (decay 0.995) in train mode when `track_w_avg`."""
  w_dim: int
  num_layers: int
  num_classes: int = 0
  lr_multiplier: float = 0.01
  track_w_avg: bool = True
  w_avg_beta: float = 0.995

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False, truncation_psi: float = 1.0):
    parts = []
    if z is not None:
      parts.append(normalize_2nd_moment(z))
    if self.num_classes:
      y = EqualDense(self.w_dim, name="embed")(jax.nn.one_hot(labels, self.num_classes))
      parts.append(normalize_2nd_moment(y))
    x = jnp.concatenate(parts, axis=-1)
    for i in range(self.num_layers):
      x = EqualDense(self.w_dim, lr_multiplier=self.lr_multiplier, activation="lrelu",
                     name=f"fc{i}")(x)
    if self.track_w_avg:
      w_avg = self.variable(W_AVG_COLLECTION, "w_avg", jnp.zeros, (self.w_dim,))
      if train and not self.is_initializing():
        batch_mean = jnp.mean(jax.lax.stop_gradient(x), axis=0)
        w_avg.value = batch_mean + (w_avg.value - batch_mean) * self.w_avg_beta
      if truncation_psi != 1.0:   # the truncation trick: w_avg + psi (w - w_avg)
        x = w_avg.value + truncation_psi * (x - w_avg.value)
    return x


class StyleGAN2Generator(nn.Module):
  """Mapping + synthesis ('skip' architecture). channels[i] is the width at side
  4 * 2**i; len(channels) = log2(side / 4) + 1."""
  image_shape: tuple[int, int, int]
  channels: Sequence[int]
  w_dim: int = 512
  mapping_layers: int = 8
  num_classes: int = 0
  style_mixing_prob: float = 0.0

  @property
  def num_ws(self) -> int:
    return 2 * len(self.channels)    # 1 + 2 per up-sampling block + the last toRGB

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False, truncation_psi: float = 1.0,
               randomize_noise: bool = True):
    side, _, c = self.image_shape
    if 4 * 2 ** (len(self.channels) - 1) != side:
      raise ValueError(f"StyleGAN2 generator: config.model.ch_mult needs "
                       f"log2({side}/4) + 1 = {int(math.log2(max(side, 1) / 4)) + 1} "
                       f"entries for {side}x{side} images, got {len(self.channels)}.")
    mapping = MappingNetwork(self.w_dim, self.mapping_layers, self.num_classes,
                             name="mapping")
    w = mapping(z, labels, train, truncation_psi)
    ws = jnp.repeat(w[:, None, :], self.num_ws, axis=1)
    if train and self.style_mixing_prob > 0:
      # Style mixing regularisation (Karras et al. 2019, sec. 3.1): from a random
      # crossover layer on, the styles of a second latent.
      rng = self.make_rng("noise")
      z_rng, cut_rng, p_rng = jax.random.split(rng, 3)
      w2 = mapping(jax.random.normal(z_rng, z.shape, z.dtype), labels, False)
      cutoff = jax.random.randint(cut_rng, (), 1, self.num_ws)
      cutoff = jnp.where(jax.random.uniform(p_rng) < self.style_mixing_prob, cutoff,
                         self.num_ws)
      mix = (jnp.arange(self.num_ws) >= cutoff)[None, :, None]
      ws = jnp.where(mix, w2[:, None, :], ws)
    noise_rng = self.make_rng("noise") if randomize_noise else jax.random.PRNGKey(0)
    noise_rngs = jax.random.split(noise_rng, self.num_ws)
    const = self.param("const", nn.initializers.normal(1.0), (4, 4, self.channels[0]))
    x = jnp.broadcast_to(const, (z.shape[0], 4, 4, self.channels[0]))
    f = fir_filter()
    w_idx = 0
    img = None
    for res_i, ch in enumerate(self.channels):
      if res_i == 0:
        x = SynthesisLayer(ch, name="b4_conv1")(x, ws[:, 0], noise_rngs[0], randomize_noise)
        w_idx = 1
      else:
        r = 4 * 2 ** res_i
        x = SynthesisLayer(ch, up=True, name=f"b{r}_conv0")(
            x, ws[:, w_idx], noise_rngs[w_idx], randomize_noise)
        x = SynthesisLayer(ch, name=f"b{r}_conv1")(
            x, ws[:, w_idx + 1], noise_rngs[w_idx + 1], randomize_noise)
        w_idx += 2
        img = upsample2d(img, f)
      # toRGB shares its w with the next block's first conv (the reference indexing).
      y = ToRGB(c, name=f"b{4 * 2 ** res_i}_torgb")(x, ws[:, w_idx])
      img = y if img is None else img + y
    return img


class MinibatchStd(nn.Module):
  """Appends the mean over channels and pixels of the per-group standard deviation
  (groups of `group_size` examples i, i + n, i + 2n, ...), `num_features` maps."""
  group_size: int = 4
  num_features: int = 1

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    g = min(self.group_size, n)
    if n % g:
      raise ValueError(f"Minibatch-std group size {g} must divide the batch size {n}; "
                       "change config.model.mbstd_group_size or the batch size.")
    f = self.num_features
    y = x.reshape(g, n // g, h, w, f, c // f)
    y = y - jnp.mean(y, axis=0)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)      # [n/g, h, w, f, c/f]
    y = jnp.mean(y, axis=(1, 2, 4))                           # [n/g, f]
    y = jnp.tile(y, (g, 1))[:, None, None, :]                 # [n, 1, 1, f]
    return jnp.concatenate([x, jnp.broadcast_to(y, (n, h, w, f))], axis=-1)


class StyleGAN2Discriminator(nn.Module):
  """channels[i] is the width at side 4 * 2**i (as in the generator)."""
  image_shape: tuple[int, int, int]
  channels: Sequence[int]
  num_classes: int = 0
  architecture: str = "resnet"       # 'orig' | 'resnet'
  mbstd_group_size: int = 4
  mbstd_num_features: int = 1
  mapping_layers: int = 8            # the class-embedding network (conditional only)

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    del train
    if self.architecture not in ("orig", "resnet"):
      raise ValueError(f"config.model.d_architecture={self.architecture!r}; choose "
                       "'orig' or 'resnet'.")
    chans = list(self.channels)
    x = EqualConv(chans[-1], kernel_size=1, name="fromrgb")(x)
    for res_i in range(len(chans) - 1, 0, -1):
      r = 4 * 2 ** res_i
      out_ch = chans[res_i - 1]
      h = EqualConv(chans[res_i], name=f"b{r}_conv0")(x)
      if self.architecture == "resnet":
        skip = EqualConv(out_ch, kernel_size=1, down=True, use_bias=False,
                         activation="linear", gain=math.sqrt(0.5), name=f"b{r}_skip")(x)
        x = skip + EqualConv(out_ch, down=True, gain=math.sqrt(0.5), name=f"b{r}_conv1")(h)
      else:
        x = EqualConv(out_ch, down=True, name=f"b{r}_conv1")(h)
    x = MinibatchStd(self.mbstd_group_size, self.mbstd_num_features)(x)
    x = EqualConv(chans[0], name="b4_conv")(x)
    x = EqualDense(chans[0], activation="lrelu", name="b4_fc")(x.reshape(x.shape[0], -1))
    if not self.num_classes:
      return EqualDense(1, name="b4_out")(x)[:, 0]
    cmap_dim = chans[0]
    out = EqualDense(cmap_dim, name="b4_out")(x)
    cmap = MappingNetwork(cmap_dim, self.mapping_layers, self.num_classes,
                          track_w_avg=False, name="mapping")(None, labels)
    return jnp.sum(out * cmap, axis=-1) / math.sqrt(cmap_dim)
