"""A very deep hierarchical VAE (Child 2021, "Very Deep VAEs", VDVAE): networks only.

Architecture (Child 2021, sec. 4 and fig. 3), per resolution r:
- Bottom-up encoder: a 3x3 input conv to `width` channels, then residual bottleneck
  blocks (GELU, 1x1 -> 3x3 -> 3x3 -> 1x1 convs through `bottleneck_multiple * width`
  channels; 1x1 convs only at r <= 2). A 'd' block average-pools its output. The last
  activation at every resolution is kept for the top-down pass.
- Top-down decoder: a learned initial state per resolution, then one block per
  decoder entry. Each block i holds a latent z_i of `zdim` channels per position:
    prior      p(z_i | z_<i)    = N(p_mean, p_std^2), and features added to the state,
                                  from a bottleneck block of the state h;
    posterior  q(z_i | x, z_<i) = N(q_mean, q_std^2), from a bottleneck block of
                                  concat(h, encoder activation at r);
  z_i is projected (1x1 conv) back into the residual stream, then a residual block
  follows. An 'm' block first adds the nearest-neighbour upsampled state of a coarser
  resolution ("unpooling").
- Output head: a per-channel gain and bias, then a 1x1 conv to the parameters of
  PixelCNN++'s discretized logistic mixture (models/logistic_mixture.py layout).

Initialisation follows the reference: PyTorch's default conv init (uniform, variance
1 / (3 fan_in)) with zero biases; the last conv of every residual branch and the
latent projection are scaled by 1 / sqrt(N), N the number of encoder (or decoder)
blocks (Child 2021, sec. 4; the reference vae.py), so that the residual stream's
variance stays O(1) with depth; the prior's last conv starts at zero, so every prior
starts as N(0, I).

The decoder returns distribution parameters per layer (means, log standard
deviations, the latent used); KL terms and likelihoods are the family's
(train/hvae.py).

Block specs (VDVAE's strings): comma-separated tokens
  'RxN'  N residual blocks at resolution R;   'R'  one block at R;
  'RdK'  (encoder) one block at R, then average-pool by K to R / K;
  'RmS'  (decoder) one block at R that first adds the upsampled state of resolution S.
e.g. CIFAR-10: encoder "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
decoder "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21".
"""

import dataclasses
import math
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import logistic_mixture

KINDS = ("res", "down", "mix")
_TOKEN = re.compile(r"^(\d+)(?:([xdm])(\d+))?$")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One block: its resolution, its kind and 'down' pooling factor or 'mix' source."""
  resolution: int
  kind: str = "res"        # res | down | mix
  arg: int | None = None   # down: pooling factor; mix: source resolution


def parse_block_spec(spec: str) -> tuple[BlockSpec, ...]:
  """'32x2,32d2,16' -> blocks (res 32, res 32, down 32 by 2, res 16).

  Raises ValueError naming the bad token for anything else.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"A block spec must be a non-empty string like '8x2,8d2,4', got "
                     f"{spec!r}.")
  blocks = []
  for token in spec.replace(" ", "").split(","):
    match = _TOKEN.match(token)
    if not match:
      raise ValueError(f"Bad token {token!r} in block spec {spec!r}: use 'RxN' (N blocks "
                       "at resolution R), 'R', 'RdK' (pool by K) or 'RmS' (mix in "
                       "resolution S).")
    resolution, op, number = int(match.group(1)), match.group(2), match.group(3)
    number = None if number is None else int(number)
    if resolution < 1 or (number is not None and number < 1):
      raise ValueError(f"Token {token!r} in block spec {spec!r}: resolutions and counts "
                       "must be >= 1.")
    if op is None:
      blocks.append(BlockSpec(resolution))
    elif op == "x":
      blocks.extend(BlockSpec(resolution) for _ in range(number))
    elif op == "d":
      if number < 2 or resolution % number:
        raise ValueError(f"Token {token!r} in block spec {spec!r}: the pooling factor "
                         f"must be >= 2 and divide the resolution {resolution}.")
      blocks.append(BlockSpec(resolution, "down", number))
    else:
      if number >= resolution or resolution % number:
        raise ValueError(f"Token {token!r} in block spec {spec!r}: the mixed-in "
                         f"resolution must be smaller than {resolution} and divide it.")
      blocks.append(BlockSpec(resolution, "mix", number))
  return tuple(blocks)


def cap_repeats(spec: str, max_repeats: int) -> str:
  """The spec with every 'RxN' cut to at most `max_repeats` blocks (tiny test models
  that keep a spec's resolutions, pooling and mixing)."""
  parse_block_spec(spec)   # errors name the bad token
  if max_repeats < 1:
    raise ValueError(f"max_repeats must be >= 1, got {max_repeats}.")

  def cap(token: str) -> str:
    if "x" not in token:
      return token
    resolution, count = token.split("x")
    return f"{resolution}x{min(int(count), max_repeats)}"

  return ",".join(cap(t) for t in spec.replace(" ", "").split(","))


def encoder_resolutions(blocks: Sequence[BlockSpec], image_size: int) -> tuple[int, ...]:
  """Resolutions whose activations the encoder keeps; checks the chain of blocks."""
  current, kept = image_size, [image_size]
  for block in blocks:
    if block.kind == "mix":
      raise ValueError("Encoder block specs cannot mix in ('m'); use 'x' and 'd' tokens.")
    if block.resolution != current:
      raise ValueError(f"Encoder block at resolution {block.resolution} follows "
                       f"resolution {current}: blocks must start at the image size "
                       f"({image_size}) and change resolution only through 'd' tokens.")
    if block.kind == "down":
      current //= block.arg
      kept.append(current)
  return tuple(kept)


def check_decoder_spec(blocks: Sequence[BlockSpec], image_size: int,
                       encoder_res: Sequence[int]) -> None:
  """The decoder must end at the image size and use only encoded resolutions."""
  if any(b.kind == "down" for b in blocks):
    raise ValueError("Decoder block specs cannot pool ('d'); use 'x' and 'm' tokens.")
  if blocks[-1].resolution != image_size:
    raise ValueError(f"The decoder's last block is at resolution {blocks[-1].resolution}; "
                     f"it must be at the image size {image_size}.")
  seen = set()
  for block in blocks:
    if block.resolution not in encoder_res:
      raise ValueError(f"Decoder block at resolution {block.resolution} has no encoder "
                       f"activation; the encoder spec reaches {sorted(encoder_res)}.")
    if block.kind == "mix" and block.arg not in seen:
      raise ValueError(f"Decoder block '{block.resolution}m{block.arg}' mixes in "
                       f"resolution {block.arg} before any block has run there.")
    seen.add(block.resolution)


def torch_default_init(scale: float = 1.0) -> nn.initializers.Initializer:
  """PyTorch's default conv init (uniform, variance 1 / (3 fan_in)), times `scale`."""
  return nn.initializers.variance_scaling(scale ** 2 / 3.0, "fan_in", "uniform")


def _conv(features: int, kernel: int, name: str, scale: float = 1.0,
          zero: bool = False) -> nn.Conv:
  init = nn.initializers.zeros if zero else torch_default_init(scale)
  return nn.Conv(features, (kernel, kernel), padding="SAME", kernel_init=init,
                 bias_init=nn.initializers.zeros, name=name)


class Bottleneck(nn.Module):
  """GELU then 1x1 -> 3x3 -> 3x3 -> 1x1 convs (1x1 only when use_3x3 is False)."""
  middle: int
  out: int
  residual: bool
  use_3x3: bool
  last_scale: float = 1.0     # 1/sqrt(N) on the last conv of residual branches
  zero_last: bool = False     # the prior's last conv starts at zero

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = 3 if self.use_3x3 else 1
    h = _conv(self.middle, 1, "c1")(nn.gelu(x, approximate=False))
    h = _conv(self.middle, k, "c2")(nn.gelu(h, approximate=False))
    h = _conv(self.middle, k, "c3")(nn.gelu(h, approximate=False))
    h = _conv(self.out, 1, "c4", scale=self.last_scale,
              zero=self.zero_last)(nn.gelu(h, approximate=False))
    return x + h if self.residual else h


def _avg_pool(x: jax.Array, factor: int) -> jax.Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def _upsample(x: jax.Array, factor: int) -> jax.Array:
  """Nearest-neighbour upsampling by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class Encoder(nn.Module):
  """x [B, H, W, C] -> {resolution: last activation [B, r, r, width]}."""
  blocks: tuple[BlockSpec, ...]
  width: int
  bottleneck_multiple: float

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[int, jax.Array]:
    h = _conv(self.width, 3, "in_conv")(x)
    activations = {h.shape[1]: h}
    last_scale = 1.0 / math.sqrt(len(self.blocks))
    middle = max(1, int(self.width * self.bottleneck_multiple))
    for i, block in enumerate(self.blocks):
      h = Bottleneck(middle, self.width, residual=True, use_3x3=block.resolution > 2,
                     last_scale=last_scale, name=f"block_{i}")(h)
      if block.kind == "down":
        h = _avg_pool(h, block.arg)
      activations[h.shape[1]] = h
    return activations


class DecoderBlock(nn.Module):
  """One latent layer of the top-down pass (see the module docstring)."""
  spec: BlockSpec
  width: int
  zdim: int
  bottleneck_multiple: float
  num_blocks: int

  @nn.compact
  def __call__(self, h: jax.Array, activation: jax.Array | None, latent: jax.Array | None,
               *, temperature: float | jax.Array, posterior_mean: bool,
               keep_latent: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One layer. activation None: prior mode; latent given: z_i = latent, or, with
    a boolean `keep_latent`, the latent where it is True and a prior draw elsewhere.

    Returns the new state and this layer's {'p_mean', 'p_log_std', 'z'} plus
    {'q_mean', 'q_log_std'} when an activation is given.
    """
    use_3x3 = self.spec.resolution > 2
    middle = max(1, int(self.width * self.bottleneck_multiple))
    scale = 1.0 / math.sqrt(self.num_blocks)
    stats = {}
    if activation is not None:
      # The posterior sees the state before the prior's features are added (VDVAE).
      q = Bottleneck(middle, 2 * self.zdim, residual=False, use_3x3=use_3x3,
                     name="posterior")(jnp.concatenate([h, activation], axis=-1))
      stats["q_mean"], stats["q_log_std"] = q[..., :self.zdim], q[..., self.zdim:]
    p = Bottleneck(middle, 2 * self.zdim + self.width, residual=False, use_3x3=use_3x3,
                   zero_last=True, name="prior")(h)
    stats["p_mean"] = p[..., :self.zdim]
    stats["p_log_std"] = p[..., self.zdim:2 * self.zdim]
    h = h + p[..., 2 * self.zdim:]
    if latent is not None and keep_latent is None:
      z = latent
    elif activation is not None:
      z = stats["q_mean"]
      if not posterior_mean:
        noise = jax.random.normal(self.make_rng("latent"), z.shape, z.dtype)
        z = z + jnp.exp(stats["q_log_std"]) * noise
    else:
      # Temperature t scales the prior's standard deviation (VDVAE's sampling).
      noise = jax.random.normal(self.make_rng("latent"), stats["p_mean"].shape)
      z = stats["p_mean"] + temperature * jnp.exp(stats["p_log_std"]) * noise
      if latent is not None:
        z = jnp.where(keep_latent, latent, z)
    stats["z"] = z
    h = h + _conv(self.width, 1, "z_proj", scale=scale)(z)
    h = Bottleneck(middle, self.width, residual=True, use_3x3=use_3x3, last_scale=scale,
                   name="resnet")(h)
    return h, stats


class HierarchicalVAENetwork(nn.Module):
  """Encoder, top-down decoder and mixture head of a VDVAE-style model."""
  image_shape: tuple[int, int, int]
  enc_blocks: tuple[BlockSpec, ...]
  dec_blocks: tuple[BlockSpec, ...]
  width: int
  zdim: int
  bottleneck_multiple: float
  num_mixtures: int

  def setup(self):
    channels = self.image_shape[-1]
    self.encoder = Encoder(self.enc_blocks, self.width, self.bottleneck_multiple)
    self.decoder_blocks = [
        DecoderBlock(spec, self.width, self.zdim, self.bottleneck_multiple,
                     len(self.dec_blocks), name=f"dec_block_{i}")
        for i, spec in enumerate(self.dec_blocks)]
    self.resolutions = sorted({b.resolution for b in self.dec_blocks})
    # Keys are strings: Flax freezes setup dicts and wants string keys.
    self.initial_states = {
        str(r): self.param(f"initial_state_{r}", nn.initializers.zeros,
                           (1, r, r, self.width)) for r in self.resolutions}
    self.out_gain = self.param("out_gain", nn.initializers.ones, (self.width,))
    self.out_bias = self.param("out_bias", nn.initializers.zeros, (self.width,))
    self.out_conv = _conv(
        logistic_mixture.num_output_channels(channels, self.num_mixtures), 1, "out_conv")

  @property
  def num_layers(self) -> int:
    return len(self.dec_blocks)

  def encode(self, x: jax.Array) -> dict[int, jax.Array]:
    return self.encoder(x)

  def decode(self, activations: dict[int, jax.Array] | None, batch_size: int,
             latents: Sequence[jax.Array | None] | None = None, *,
             temperature: float | jax.Array = 1.0, posterior_mean: bool = False,
             keep_latents: jax.Array | None = None
             ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """The top-down pass -> (mixture parameters [B, H, W, K], per-layer stats).

    activations: the encoder's (posterior mode) or None (prior mode); latents: per
    layer a fixed z_i or None (drawn); keep_latents: optional bool [L], layer i uses
    latents[i] where True and a prior draw where False (one compilation for every
    choice); temperature scales the prior standard deviations.
    """
    states = {int(r): jnp.broadcast_to(s, (batch_size, *s.shape[1:]))
              for r, s in self.initial_states.items()}
    latents = list(latents) if latents is not None else [None] * self.num_layers
    if len(latents) < self.num_layers:
      latents += [None] * (self.num_layers - len(latents))
    all_stats = []
    for i, (block, spec, latent) in enumerate(zip(self.decoder_blocks, self.dec_blocks,
                                                  latents)):
      h = states[spec.resolution]
      if spec.kind == "mix":
        h = h + _upsample(states[spec.arg], spec.resolution // spec.arg)
      activation = None if activations is None else activations[spec.resolution]
      keep = None if keep_latents is None or latent is None else keep_latents[i]
      h, stats = block(h, activation, latent, temperature=temperature,
                       posterior_mean=posterior_mean, keep_latent=keep)
      states[spec.resolution] = h
      all_stats.append(stats)
    h = states[self.image_shape[0]] * self.out_gain + self.out_bias
    return self.out_conv(h), all_stats

  def __call__(self, x: jax.Array, posterior_mean: bool = False
               ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """Posterior pass: mixture parameters of p(x | z), z ~ q(z | x), and layer stats."""
    return self.decode(self.encode(x), x.shape[0], posterior_mean=posterior_mean)

  def sample_prior(self, batch_size: int, temperature: float = 1.0
                   ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    return self.decode(None, batch_size, temperature=temperature)

  def decode_latents(self, latents: Sequence[jax.Array | None],
                     temperature: float | jax.Array = 1.0,
                     keep_latents: jax.Array | None = None
                     ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """Prior pass with the given z_i fixed (None entries, and entries whose
    keep_latents is False, drawn at `temperature`)."""
    batch_size = next(z.shape[0] for z in latents if z is not None)
    return self.decode(None, batch_size, latents, temperature=temperature,
                       keep_latents=keep_latents)


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
