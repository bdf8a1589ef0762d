"""GAN generators and discriminators (NHWC, Flax linen): networks only.

Every generator is called as `G(z, labels, train=...)` and returns images in [-1, 1]
(tanh), or raw points for the 2-D toy MLP; every discriminator as
`D(x, labels, train=...)` and returns one logit per example, shape [B].
`train=True` uses batch statistics in batch norm and updates the running averages
('batch_stats') and the spectral-norm vectors ('spectral_norm'): the caller makes
those collections mutable.

- DCGAN (Radford et al. 2016): transposed-conv generator with batch norm and ReLU,
  strided-conv discriminator with batch norm and LeakyReLU(0.2).
- SNGAN "standard CNN" (Miyato et al. 2018, Table 3): the same generator family with a
  final 3x3 conv; a discriminator of 3x3 / 4x4-stride-2 conv pairs with LeakyReLU(0.1)
  and spectral norm.
- ResNet generator/discriminator for 32x32 (Gulrajani et al. 2017, appendix F;
  Miyato et al. 2018, Table 4): pre-activation residual blocks, nearest-neighbour
  up-sampling, average-pool down-sampling, global sum (or mean) pooling. With
  classes it is the BigGAN-style conditional network (Brock et al. 2019, appendix B):
  conditional batch norm whose gains/biases come from a class embedding (per layer,
  or one shared embedding projected by each layer, optionally with hierarchical
  latent chunks) and a projection discriminator (Miyato & Koyama 2018).
- MLP generator/discriminator for the 2-D toy mixtures (Gulrajani et al. 2017,
  section 5.1: three ReLU hidden layers).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import spectral_norm as sn_lib

INITS = ("normal_0.02", "glorot")
BN_MOMENTUM = 0.9        # running average <- 0.9 * running + 0.1 * batch (PyTorch's 0.1)
BN_EPSILON = 1e-5


# ------------------------------------------------------------------ layer factories
def kernel_init(scheme: str, gain: float = 1.0) -> nn.initializers.Initializer:
  """'normal_0.02': N(0, 0.02^2) (DCGAN, BigGAN-PyTorch 'N02'); 'glorot': Glorot
  uniform scaled by `gain` (SNGAN / WGAN-GP residual convs use gain sqrt(2))."""
  if scheme == "normal_0.02":
    return nn.initializers.normal(0.02)
  if scheme == "glorot":
    return nn.initializers.variance_scaling(gain * gain, "fan_avg", "uniform")
  raise ValueError(f"config.model.init={scheme!r}; choose one of {INITS}.")


def dense(features: int, *, sn: bool, train: bool, init: nn.initializers.Initializer,
          use_bias: bool = True, num_iters: int = 1, name: str | None = None) -> nn.Module:
  if sn:
    return sn_lib.SNDense(features, use_bias=use_bias, update_stats=train,
                          num_iters=num_iters, kernel_init=init, name=name)
  return nn.Dense(features, use_bias=use_bias, kernel_init=init, name=name)


def conv(features: int, kernel: int, *, sn: bool, train: bool,
         init: nn.initializers.Initializer, strides: int = 1,
         padding: str | Sequence[tuple[int, int]] = "SAME", use_bias: bool = True,
         num_iters: int = 1, name: str | None = None) -> nn.Module:
  if sn:
    return sn_lib.SNConv(features, (kernel, kernel), (strides, strides), padding,
                         use_bias=use_bias, update_stats=train, num_iters=num_iters,
                         kernel_init=init, name=name)
  return nn.Conv(features, (kernel, kernel), (strides, strides), padding,
                 use_bias=use_bias, kernel_init=init, name=name)


def batch_norm(train: bool, name: str | None = None, **kwargs) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, name=name, **kwargs)


def upsample_nearest(x: jax.Array) -> jax.Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), (2, 2))


def base_size(image_size: int, num_upsamplings: int, what: str) -> int:
  """Side of the generator's first feature map: image_size / 2**num_upsamplings."""
  size = image_size // 2 ** num_upsamplings
  if size < 1 or size * 2 ** num_upsamplings != image_size:
    raise ValueError(
        f"{what}: an image side of {image_size} is not a power-of-two multiple of "
        f"2**{num_upsamplings}; change config.model.ch_mult (one entry per resolution) "
        "or config.data.image_size.")
  return size


# --------------------------------------------------------------------------- DCGAN
class DCGANGenerator(nn.Module):
  """Radford et al. 2016: z -> dense [s, s, ch*ch_mult[0]] -> BN ReLU -> transposed
  convs 4x4 stride 2 (BN ReLU) through ch*ch_mult[1:] -> transposed conv to the image,
  tanh. The last hidden map is at half the image side; s = side / 2**len(ch_mult)."""
  ch: int
  ch_mult: Sequence[int]
  image_shape: tuple[int, int, int]
  init_scheme: str = "normal_0.02"

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    del labels
    init = kernel_init(self.init_scheme)
    h, w, c = self.image_shape
    s = base_size(h, len(self.ch_mult), "DCGAN generator")
    x = nn.Dense(s * s * self.ch * self.ch_mult[0], kernel_init=init)(z)
    x = nn.relu(batch_norm(train)(x)).reshape(z.shape[0], s, s, -1)
    for mult in self.ch_mult[1:]:
      x = nn.ConvTranspose(self.ch * mult, (4, 4), (2, 2), "SAME", kernel_init=init)(x)
      x = nn.relu(batch_norm(train)(x))
    x = nn.ConvTranspose(c, (4, 4), (2, 2), "SAME", kernel_init=init)(x)
    return jnp.tanh(x)


class DCGANDiscriminator(nn.Module):
  """Radford et al. 2016: conv 4x4 stride 2 per entry of ch_mult (batch norm on all
  but the first), LeakyReLU(0.2), dense -> 1 logit."""
  ch: int
  ch_mult: Sequence[int]
  init_scheme: str = "normal_0.02"
  spectral_norm: bool = False
  sn_num_iters: int = 1

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    del labels
    init = kernel_init(self.init_scheme)
    for i, mult in enumerate(self.ch_mult):
      x = conv(self.ch * mult, 4, strides=2, sn=self.spectral_norm, train=train, init=init,
               num_iters=self.sn_num_iters)(x)
      if i > 0:
        x = batch_norm(train)(x)
      x = nn.leaky_relu(x, 0.2)
    x = x.reshape(x.shape[0], -1)
    return dense(1, sn=self.spectral_norm, train=train, init=init,
                 num_iters=self.sn_num_iters)(x)[:, 0]


# ---------------------------------------------------------------- SNGAN standard CNN
class SNGANCNNGenerator(nn.Module):
  """Miyato et al. 2018, Table 3(a): z -> dense [s, s, ch*ch_mult[0]] -> BN ReLU ->
  deconv 4x4 stride 2 BN ReLU through ch*ch_mult[1:] -> conv 3x3 to the image, tanh.
  The last map is at the image side; s = side / 2**(len(ch_mult) - 1).
  CIFAR-10: ch=64, ch_mult=(8, 4, 2, 1): 512@4 -> 256@8 -> 128@16 -> 64@32."""
  ch: int
  ch_mult: Sequence[int]
  image_shape: tuple[int, int, int]
  init_scheme: str = "normal_0.02"

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    del labels
    init = kernel_init(self.init_scheme)
    h, w, c = self.image_shape
    s = base_size(h, len(self.ch_mult) - 1, "SNGAN CNN generator")
    x = nn.Dense(s * s * self.ch * self.ch_mult[0], kernel_init=init)(z)
    x = nn.relu(batch_norm(train)(x)).reshape(z.shape[0], s, s, -1)
    for mult in self.ch_mult[1:]:
      x = nn.ConvTranspose(self.ch * mult, (4, 4), (2, 2), "SAME", kernel_init=init)(x)
      x = nn.relu(batch_norm(train)(x))
    return jnp.tanh(nn.Conv(c, (3, 3), padding="SAME", kernel_init=init)(x))


class SNGANCNNDiscriminator(nn.Module):
  """Miyato et al. 2018, Table 3(b): for each ch_mult entry but the last, conv 3x3
  stride 1 then conv 4x4 stride 2 (same width); then conv 3x3 with the last width;
  LeakyReLU(0.1) throughout; dense -> 1. CIFAR-10: ch=64, ch_mult=(1, 2, 4, 8)."""
  ch: int
  ch_mult: Sequence[int]
  init_scheme: str = "normal_0.02"
  spectral_norm: bool = True
  sn_num_iters: int = 1

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    del labels
    init = kernel_init(self.init_scheme)
    kw = dict(sn=self.spectral_norm, train=train, init=init, num_iters=self.sn_num_iters)
    for mult in self.ch_mult[:-1]:
      x = nn.leaky_relu(conv(self.ch * mult, 3, **kw)(x), 0.1)
      x = nn.leaky_relu(conv(self.ch * mult, 4, strides=2, **kw)(x), 0.1)
    x = nn.leaky_relu(conv(self.ch * self.ch_mult[-1], 3, **kw)(x), 0.1)
    return dense(1, **kw)(x.reshape(x.shape[0], -1))[:, 0]


# -------------------------------------------------------------------------- ResNet
class ConditionalBatchNorm(nn.Module):
  """Batch norm whose gain and bias depend on the class (Dumoulin et al. 2017; de
  Vries et al. 2017; BigGAN). gain = 1 + f_g(c), bias = f_b(c) where f is a per-class
  embedding table (`labels`) or, when `cond` is a vector (BigGAN's shared embedding
  concatenated with a latent chunk), a bias-free linear map of it. With neither, a
  plain batch norm with learned scale and offset."""
  sn: bool = False
  num_classes: int = 0
  init_scheme: str = "normal_0.02"
  sn_num_iters: int = 1

  @nn.compact
  def __call__(self, x, labels=None, cond=None, train: bool = False):
    channels = x.shape[-1]
    if cond is None and labels is None:
      return batch_norm(train)(x)
    x = batch_norm(train, use_scale=False, use_bias=False)(x)
    init = kernel_init(self.init_scheme)
    if cond is not None:
      gain = dense(channels, sn=self.sn, train=train, init=init, use_bias=False,
                   num_iters=self.sn_num_iters, name="gain")(cond)
      bias = dense(channels, sn=self.sn, train=train, init=init, use_bias=False,
                   num_iters=self.sn_num_iters, name="bias")(cond)
    else:
      gain = nn.Embed(self.num_classes, channels, embedding_init=init, name="gain")(labels)
      bias = nn.Embed(self.num_classes, channels, embedding_init=init, name="bias")(labels)
    return x * (1.0 + gain[:, None, None, :]) + bias[:, None, None, :]


class GeneratorBlock(nn.Module):
  """Pre-activation up-sampling block: CBN ReLU up conv3x3 CBN ReLU conv3x3, plus the
  shortcut up -> conv1x1 (learnable when the width changes or it up-samples)."""
  features: int
  upsample: bool = True
  sn: bool = False
  num_classes: int = 0
  init_scheme: str = "glorot"
  sn_num_iters: int = 1

  @nn.compact
  def __call__(self, x, labels=None, cond=None, train: bool = False):
    # Residual convs: Glorot x sqrt(2); shortcut: Glorot (the SNGAN reference).
    res_init = kernel_init(self.init_scheme, math.sqrt(2.0))
    sc_init = kernel_init(self.init_scheme)
    kw = dict(sn=self.sn, train=train, num_iters=self.sn_num_iters)
    cbn = dict(sn=self.sn, num_classes=self.num_classes, init_scheme=self.init_scheme,
               sn_num_iters=self.sn_num_iters)
    h = nn.relu(ConditionalBatchNorm(**cbn)(x, labels, cond, train))
    if self.upsample:
      h = upsample_nearest(h)
    h = conv(self.features, 3, init=res_init, **kw)(h)
    h = nn.relu(ConditionalBatchNorm(**cbn)(h, labels, cond, train))
    h = conv(self.features, 3, init=res_init, **kw)(h)
    shortcut = upsample_nearest(x) if self.upsample else x
    if self.upsample or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, init=sc_init, **kw)(shortcut)
    return h + shortcut


class ResNetGenerator(nn.Module):
  """z -> dense [s, s, ch*ch_mult[0]] -> one up-sampling block per ch_mult entry ->
  BN ReLU conv3x3 -> tanh (Gulrajani et al. 2017; Miyato et al. 2018, Table 4;
  BigGAN, appendix B, with ch_mult=(4, 4, 4) and ch=64).

  Classes (num_classes > 0) condition every block's batch norm. shared_dim > 0: one
  shared class embedding of that size (BigGAN's "shared embedding"), projected by each
  layer; hierarchical_z: z is split into len(ch_mult) + 1 chunks, the first feeds the
  dense layer and the others are concatenated to the conditioning of each block.
  """
  ch: int
  ch_mult: Sequence[int]
  image_shape: tuple[int, int, int]
  num_classes: int = 0
  shared_dim: int = 0
  hierarchical_z: bool = False
  spectral_norm: bool = False
  init_scheme: str = "glorot"
  sn_num_iters: int = 1

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    h_img, _, c = self.image_shape
    num_blocks = len(self.ch_mult)
    s = base_size(h_img, num_blocks, "ResNet generator")
    init = kernel_init(self.init_scheme)
    kw = dict(sn=self.spectral_norm, train=train, num_iters=self.sn_num_iters)
    if self.hierarchical_z:
      chunk = z.shape[-1] // (num_blocks + 1)
      if chunk < 1:
        raise ValueError(f"hierarchical_z splits z into {num_blocks + 1} chunks: "
                         f"config.model.z_dim={z.shape[-1]} is too small.")
      chunks = [z[:, i * chunk:(i + 1) * chunk] for i in range(num_blocks + 1)]
    else:
      chunks = [z] + [None] * num_blocks
    shared = None
    if self.num_classes and self.shared_dim:
      shared = nn.Embed(self.num_classes, self.shared_dim, embedding_init=init,
                        name="shared_embedding")(labels)
    x = dense(s * s * self.ch * self.ch_mult[0], init=init, **kw)(chunks[0])
    x = x.reshape(z.shape[0], s, s, -1)
    for i, mult in enumerate(self.ch_mult):
      parts = [p for p in (shared, chunks[i + 1]) if p is not None]
      cond = jnp.concatenate(parts, axis=-1) if parts else None
      block_labels = labels if (self.num_classes and cond is None) else None
      x = GeneratorBlock(
          self.ch * mult, True, self.spectral_norm,
          self.num_classes if block_labels is not None else 0, self.init_scheme,
          self.sn_num_iters)(x, block_labels, cond, train)
    x = nn.relu(batch_norm(train)(x))
    return jnp.tanh(conv(c, 3, init=init, **kw)(x))


class DiscriminatorBlock(nn.Module):
  """ReLU conv3x3 ReLU conv3x3 [avg-pool], shortcut conv1x1 [avg-pool] (learnable when
  the width changes or it down-samples). The first block ('optimized', Miyato et al.)
  skips the leading ReLU and pools before its shortcut conv."""
  features: int
  downsample: bool = True
  first: bool = False
  sn: bool = True
  init_scheme: str = "glorot"
  sn_num_iters: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    res_init = kernel_init(self.init_scheme, math.sqrt(2.0))
    sc_init = kernel_init(self.init_scheme)
    kw = dict(sn=self.sn, train=train, num_iters=self.sn_num_iters)
    h = x if self.first else nn.relu(x)
    h = conv(self.features, 3, init=res_init, **kw)(h)
    h = conv(self.features, 3, init=res_init, **kw)(nn.relu(h))
    if self.downsample:
      h = avg_pool2(h)
    shortcut = x
    if self.first:
      shortcut = avg_pool2(x) if self.downsample else x
      shortcut = conv(self.features, 1, init=sc_init, **kw)(shortcut)
    elif self.downsample or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, init=sc_init, **kw)(x)
      shortcut = avg_pool2(shortcut) if self.downsample else shortcut
    return h + shortcut


class ResNetDiscriminator(nn.Module):
  """Residual blocks (one per ch_mult entry, down-sampling where `downsample`), ReLU,
  global sum (SNGAN, BigGAN) or mean (WGAN-GP) pooling, linear -> 1, plus the
  projection term <embed(y), h> when num_classes > 0 (Miyato & Koyama 2018, eq. 3)."""
  ch: int
  ch_mult: Sequence[int]
  downsample: Sequence[bool]
  num_classes: int = 0
  spectral_norm: bool = True
  pooling: str = "sum"
  init_scheme: str = "glorot"
  sn_num_iters: int = 1

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    if len(self.downsample) != len(self.ch_mult):
      raise ValueError("config.model.d_downsample needs one entry per "
                       f"config.model.d_ch_mult entry: {tuple(self.downsample)} vs "
                       f"{tuple(self.ch_mult)}.")
    for i, (mult, down) in enumerate(zip(self.ch_mult, self.downsample)):
      x = DiscriminatorBlock(self.ch * mult, down, i == 0, self.spectral_norm,
                             self.init_scheme, self.sn_num_iters)(x, train)
    x = nn.relu(x)
    h = jnp.sum(x, axis=(1, 2)) if self.pooling == "sum" else jnp.mean(x, axis=(1, 2))
    init = kernel_init(self.init_scheme)
    kw = dict(sn=self.spectral_norm, train=train, num_iters=self.sn_num_iters)
    out = dense(1, init=init, **kw)(h)[:, 0]
    if self.num_classes:
      if self.spectral_norm:
        embed = sn_lib.SNEmbed(self.num_classes, h.shape[-1], update_stats=train,
                               num_iters=self.sn_num_iters, embedding_init=init)
      else:
        embed = nn.Embed(self.num_classes, h.shape[-1], embedding_init=init)
      out = out + jnp.sum(embed(labels) * h, axis=-1)
    return out


# ----------------------------------------------------------------------------- MLP
class MLPGenerator(nn.Module):
  """z -> num_layers x (dense, ReLU) -> dense to prod(out_shape), reshaped; linear
  output (the 2-D toy data are not bounded)."""
  hidden: int
  num_layers: int
  out_shape: tuple[int, ...]

  @nn.compact
  def __call__(self, z, labels=None, train: bool = False):
    del labels, train
    x = z
    for _ in range(self.num_layers):
      x = nn.relu(nn.Dense(self.hidden)(x))
    x = nn.Dense(math.prod(self.out_shape))(x)
    return x.reshape(z.shape[0], *self.out_shape)


class MLPDiscriminator(nn.Module):
  hidden: int
  num_layers: int
  spectral_norm: bool = False
  sn_num_iters: int = 1

  @nn.compact
  def __call__(self, x, labels=None, train: bool = False):
    del labels
    init = nn.initializers.lecun_normal()
    kw = dict(sn=self.spectral_norm, train=train, init=init, num_iters=self.sn_num_iters)
    x = x.reshape(x.shape[0], -1)
    for _ in range(self.num_layers):
      x = nn.relu(dense(self.hidden, **kw)(x))
    return dense(1, **kw)(x)[:, 0]
