"""Encoder and decoder networks of a VAE (Kingma & Welling 2014): networks only, no losses.

Two shapes:
- 'conv': a convolutional encoder (3x3 convs, stride-2 downsampling per level) to the
  mean and log standard deviation of q(z|x), and a mirrored decoder (dense to the
  coarsest feature map, nearest-neighbour 2x upsampling + 3x3 convs per level);
- 'mlp': the fully connected tanh networks of Burda et al. 2016 (sec. 5), e.g.
  784-200-200-50 for one stochastic layer.

The decoder returns `params_per_subpixel` numbers for every sub-pixel, [B, H, W, C, P];
what they mean (a Bernoulli logit, a mean and a log-scale, ...) is the family's business.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ARCHITECTURES = ("conv", "mlp")


class ConvEncoder(nn.Module):
  """x [B, H, W, C] -> (mean, log_std), each [B, latent_dim]."""
  ch: int
  ch_mult: Sequence[int]
  latent_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = nn.Conv(self.ch, (3, 3), name="conv_in")(x)
    for level, mult in enumerate(self.ch_mult):
      h = nn.Conv(self.ch * mult, (3, 3), name=f"conv_{level}")(nn.silu(h))
      h = nn.Conv(self.ch * mult, (3, 3), strides=(2, 2), name=f"down_{level}")(nn.silu(h))
    h = nn.silu(h).reshape(h.shape[0], -1)
    out = nn.Dense(2 * self.latent_dim, name="posterior")(h)
    mean, log_std = jnp.split(out, 2, axis=-1)
    return mean, log_std


class ConvDecoder(nn.Module):
  """z [B, latent_dim] -> decoder parameters [B, H, W, C, params_per_subpixel]."""
  ch: int
  ch_mult: Sequence[int]
  image_shape: tuple[int, int, int]
  params_per_subpixel: int

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    height, width, channels = self.image_shape
    factor = 2 ** len(self.ch_mult)
    top = self.ch * self.ch_mult[-1]
    h = nn.Dense((height // factor) * (width // factor) * top, name="dense_in")(z)
    h = h.reshape(z.shape[0], height // factor, width // factor, top)
    for level, mult in reversed(list(enumerate(self.ch_mult))):
      b, hh, ww, c = h.shape
      h = jax.image.resize(nn.silu(h), (b, 2 * hh, 2 * ww, c), method="nearest")
      h = nn.Conv(self.ch * mult, (3, 3), name=f"up_{level}")(h)
      h = nn.Conv(self.ch * mult, (3, 3), name=f"conv_{level}")(nn.silu(h))
    out = nn.Conv(channels * self.params_per_subpixel, (3, 3), name="conv_out")(nn.silu(h))
    return out.reshape(*out.shape[:3], channels, self.params_per_subpixel)


class MLPEncoder(nn.Module):
  """Burda et al.'s recognition network: tanh hidden layers, then (mean, log_std)."""
  hidden_sizes: Sequence[int]
  latent_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = x.reshape(x.shape[0], -1)
    for i, size in enumerate(self.hidden_sizes):
      h = jnp.tanh(nn.Dense(size, name=f"hidden_{i}")(h))
    out = nn.Dense(2 * self.latent_dim, name="posterior")(h)
    mean, log_std = jnp.split(out, 2, axis=-1)
    return mean, log_std


class MLPDecoder(nn.Module):
  """Burda et al.'s generative network: tanh hidden layers, then per-sub-pixel params."""
  hidden_sizes: Sequence[int]
  image_shape: tuple[int, int, int]
  params_per_subpixel: int

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h = z
    for i, size in enumerate(self.hidden_sizes):
      h = jnp.tanh(nn.Dense(size, name=f"hidden_{i}")(h))
    num_outputs = self.params_per_subpixel
    for size in self.image_shape:
      num_outputs *= size
    out = nn.Dense(num_outputs, name="dense_out")(h)
    return out.reshape(z.shape[0], *self.image_shape, self.params_per_subpixel)


class VAENetwork(nn.Module):
  """An encoder and a decoder; `encode` and `decode` are called through `apply(method=)`."""
  architecture: str
  image_shape: tuple[int, int, int]
  latent_dim: int
  params_per_subpixel: int
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2)
  hidden_sizes: Sequence[int] = (200, 200)

  def setup(self):
    if self.architecture == "conv":
      self.encoder = ConvEncoder(self.ch, tuple(self.ch_mult), self.latent_dim)
      self.decoder = ConvDecoder(self.ch, tuple(self.ch_mult), tuple(self.image_shape),
                                 self.params_per_subpixel)
    elif self.architecture == "mlp":
      self.encoder = MLPEncoder(tuple(self.hidden_sizes), self.latent_dim)
      # The generative network mirrors the recognition network (Burda et al. sec. 5).
      self.decoder = MLPDecoder(tuple(reversed(self.hidden_sizes)), tuple(self.image_shape),
                                self.params_per_subpixel)
    else:
      raise ValueError(f"architecture={self.architecture!r}; choose {ARCHITECTURES}.")

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Encoder mean through the decoder: touches every parameter (for `init`)."""
    mean, _ = self.encode(x)
    return self.decode(mean)
