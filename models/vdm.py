"""Networks of Variational Diffusion Models (Kingma et al. 2021, "Variational Diffusion Models").

- `fixed_linear_gamma`: gamma(t) = -log SNR(t), linear from gamma_min to gamma_max.
- `LearnedSchedule`: the monotone schedule network of Appendix H,
    gamma~(t) = l1(t) + l3(sigmoid(l2(l1(t))))     (all weights positive),
    gamma(t)  = gamma_0 + (gamma_1 - gamma_0) (gamma~(t) - gamma~(0)) / (gamma~(1) - gamma~(0)),
  so gamma(0) = gamma_0 and gamma(1) = gamma_1 are learned scalars and gamma increases
  in t for every value of the parameters. With `num_features=0` the shape is the line
  (learned endpoints only, the 'learnable_scalar' schedule of the reference code).
- `ScoreUNet`: the CIFAR-10 noise-prediction network of Appendix B: a U-Net *without*
  downsampling (num_res_blocks ResNet blocks at full resolution down, num_res_blocks + 1
  up with skip connections, a ResNet-attention-ResNet middle), base-2 Fourier features
  of z_t concatenated to its input (section 4.1 / Appendix C), and gamma_t rescaled to
  [0, 1] as the timestep that is embedded.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers

# Parameters of LearnedSchedule that set its endpoints; the others set its shape.
ENDPOINT_PARAMS = ("gamma_0", "gamma_range")


def fixed_linear_gamma(t: jax.Array, gamma_min: float, gamma_max: float) -> jax.Array:
  """gamma(t) = gamma_min + (gamma_max - gamma_min) t (the paper's fixed schedule)."""
  return gamma_min + (gamma_max - gamma_min) * jnp.asarray(t, jnp.float32)


class MonotoneDense(nn.Module):
  """Dense layer with non-negative weights |W|: non-decreasing in every input."""
  features: int
  use_bias: bool = True
  kernel_init: Any = nn.initializers.normal(1.0)
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    y = x @ jnp.abs(kernel)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


class LearnedSchedule(nn.Module):
  """gamma(t) for t of any shape; monotone by construction (Appendix H)."""
  gamma_0_init: float = -13.3   # -log SNR_max at t = 0
  gamma_1_init: float = 5.0     # -log SNR_min at t = 1
  num_features: int = 1024      # width of the sigmoid layer l2; 0: linear shape

  def setup(self):
    if self.gamma_1_init <= self.gamma_0_init:
      raise ValueError(f"gamma_1_init={self.gamma_1_init} must exceed gamma_0_init="
                       f"{self.gamma_0_init} (gamma = -log SNR increases in t).")
    self.gamma_0 = self.param("gamma_0", nn.initializers.constant(self.gamma_0_init), ())
    # gamma_1 = gamma_0 + |gamma_range| keeps gamma_1 >= gamma_0 for any value.
    self.gamma_range = self.param(
        "gamma_range", nn.initializers.constant(self.gamma_1_init - self.gamma_0_init), ())
    if self.num_features:
      self.l1 = MonotoneDense(1, kernel_init=nn.initializers.ones)
      self.l2 = MonotoneDense(self.num_features)
      # 1/num_features keeps the sigmoid branch comparable to l1 at initialisation.
      self.l3 = MonotoneDense(1, use_bias=False,
                              kernel_init=nn.initializers.normal(1.0 / self.num_features))

  def endpoints(self) -> tuple[jax.Array, jax.Array]:
    """(gamma(0), gamma(1))."""
    return self.gamma_0, self.gamma_0 + jnp.abs(self.gamma_range)

  def unnormalized(self, t: jax.Array) -> jax.Array:
    """gamma~(t) = l1(t) + l3(sigmoid(l2(l1(t)))): non-decreasing, any scale."""
    h = self.l1(t[..., None])
    return (h + self.l3(nn.sigmoid(self.l2(h))))[..., 0]

  def shape(self, t: jax.Array) -> jax.Array:
    """(gamma~(t) - gamma~(0)) / (gamma~(1) - gamma~(0)): 0 at t=0, 1 at t=1."""
    t = jnp.asarray(t, jnp.float32)
    if not self.num_features:
      return t
    ends = self.unnormalized(jnp.array([0.0, 1.0], jnp.float32))
    # gamma~(1) - gamma~(0) >= |w1| > 0; the floor only guards a zero weight.
    return (self.unnormalized(t) - ends[0]) / jnp.maximum(ends[1] - ends[0], 1e-12)

  def __call__(self, t: jax.Array) -> jax.Array:
    gamma_0, gamma_1 = self.endpoints()
    return gamma_0 + (gamma_1 - gamma_0) * self.shape(t)


def fourier_features(z: jax.Array, exponents: Sequence[int]) -> jax.Array:
  """[sin(2^n pi z), cos(2^n pi z)] for each n, on the channel axis (Appendix C).

  With data at the bin centres of [-1, 1] (bin width 2/256), n = 8 has a period of one
  bin and n = 7 of two: they make the fine detail of z_t visible to the network.
  """
  z = z.astype(jnp.float32)
  angles = jnp.concatenate([z * (2.0**n * math.pi) for n in exponents], axis=-1)
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ScoreUNet(nn.Module):
  """eps_hat(z_t, gamma_t): the VDM noise-prediction U-Net without downsampling."""
  ch: int = 128                       # channels, constant through the network
  num_res_blocks: int = 32            # ResNet blocks down (and num_res_blocks + 1 up)
  dropout: float = 0.1
  num_groups: int = 32                # GroupNorm groups (fewer on narrow nets, see layers)
  fourier_exponents: Sequence[int] = (7, 8)   # () disables the Fourier features
  gamma_min: float = -13.3            # gamma range mapped to [0, 1] for the embedding
  gamma_max: float = 5.0
  num_classes: int = 0                # > 0: class-conditional (label embedding)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, gamma_t: jax.Array, y: jax.Array | None = None, *,
               train: bool) -> jax.Array:
    if z.ndim != 4:
      raise ValueError(f"z must be NHWC [B, H, W, C], got shape {z.shape}.")
    batch = z.shape[0]
    gamma_t = jnp.broadcast_to(jnp.asarray(gamma_t, jnp.float32), (batch,))
    if self.num_classes > 0 and y is None:
      raise ValueError("This ScoreUNet is class-conditional: pass labels y.")
    resnet_block = lambda name: layers.ResnetBlock(  # noqa: E731
        out_channels=self.ch, dropout=self.dropout, num_groups=self.num_groups,
        dtype=self.dtype, name=name)

    # gamma_t -> [0, 1] -> sinusoidal embedding of 1000 t, as a DDPM timestep.
    t = (gamma_t - self.gamma_min) / (self.gamma_max - self.gamma_min)
    temb = layers.timestep_embedding(1000.0 * t, self.ch)
    temb = layers.dense(4 * self.ch, dtype=self.dtype, name="temb_dense0")(temb)
    temb = layers.dense(4 * self.ch, dtype=self.dtype, name="temb_dense1")(nn.silu(temb))
    if self.num_classes > 0:
      temb += nn.Embed(self.num_classes, 4 * self.ch, dtype=self.dtype,
                       param_dtype=jnp.float32, name="class_embed")(y)

    h = z.astype(jnp.float32)
    if self.fourier_exponents:
      h = jnp.concatenate([h, fourier_features(h, self.fourier_exponents)], axis=-1)
    h = layers.conv3x3(self.ch, dtype=self.dtype, name="conv_in")(h.astype(self.dtype))
    skips = [h]
    for i in range(self.num_res_blocks):
      h = resnet_block(f"down_block_{i}")(h, temb, train=train)
      skips.append(h)

    h = resnet_block("mid_block_0")(h, temb, train=train)
    h = layers.AttentionBlock(num_groups=self.num_groups, dtype=self.dtype,
                              name="mid_attn")(h)
    h = resnet_block("mid_block_1")(h, temb, train=train)

    for i in range(self.num_res_blocks + 1):
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = resnet_block(f"up_block_{i}")(h, temb, train=train)
    assert not skips, "every skip connection must be consumed"

    h = nn.silu(layers.group_norm(self.ch, self.num_groups, self.dtype, "norm_out")(h))
    h = layers.conv3x3(z.shape[-1], init_scale=0.0, dtype=self.dtype, name="conv_out")(h)
    # The network predicts eps - z_t (the reference implementation's "base measure"):
    # at high noise z_t is almost all noise, so eps_hat = z_t is the right start.
    return h.astype(jnp.float32) + z.astype(jnp.float32)
