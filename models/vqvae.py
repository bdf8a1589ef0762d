"""VQ-VAE networks and the vector quantizer (van den Oord et al. 2017, "Neural Discrete
Representation Learning").

Encoder (section 4.1, CIFAR-10): `num_downsamples` convolutions of window 4x4 and
stride 2, then residual blocks "implemented as ReLU, 3x3 conv, ReLU, 1x1 conv", all
with 256 hidden units; a 1x1 convolution (not described in the paper, needed to reach
the code space) projects to G * D features: G latents of dimension D per position of
the h x w latent map (the paper's CIFAR-10 field is 8 x 8 x 10, section 3.2).
Decoder: a 3x3 convolution from the G * D code features (again not described), the
same residual blocks, then transposed convolutions of window 4x4 and stride 2; the
last one outputs `params_per_subpixel` numbers per sub-pixel, [B, H, W, C, P].

Vector quantizer, as pure functions of an explicit codebook e [K, D]:
- nearest code k = argmin_j ||z_e - e_j||^2 (eq. 1), z_q = e_k (eq. 2);
- straight-through estimator z_e + sg[z_q - z_e] (section 3.2): the decoder's gradient
  at z_q is copied to z_e;
- codebook loss ||sg[z_e] - e||^2 and commitment loss ||z_e - sg[e]||^2 (eq. 3),
  averaged over the N latents of an example ("we get an average over N terms for
  k-means and commitment loss", section 3.2);
- or EMA dictionary updates (appendix A.1, eqs. 6-8) with Laplace-smoothed cluster
  sizes (the smoothing is not in the paper; it keeps e_i = m_i / N_i finite);
- dead-code restarts (not in the paper): a code whose EMA usage N_i falls below a
  threshold is moved onto a random encoder output of the current batch.

CodePrior: a PixelCNN / Gated PixelCNN (models/pixelcnn.py) over the [h, w, G] code
map, a K-way softmax per latent, raster order over positions and the G latents of a
position ordered like colour channels (masked convolution groups).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import pixelcnn

PRIOR_NETWORKS = ("gated_pixelcnn", "pixelcnn")
# EMA usage given to a restarted code: one assignment's worth, so that it needs a few
# steps without any assignment before it counts as dead again.
RESTART_COUNT = 1.0


# ----------------------------------------------------------------------- networks
class ResidualBlock(nn.Module):
  """x + 1x1(ReLU(3x3(ReLU(x)))): section 4.1's residual 3x3 block."""
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Conv(self.hidden, (3, 3), padding=1, name="conv3x3")(nn.relu(x))
    h = nn.Conv(x.shape[-1], (1, 1), name="conv1x1")(nn.relu(h))
    return x + h


class Encoder(nn.Module):
  """x in [-1, 1] [B, H, W, C] -> z_e [B, H / 2^s, W / 2^s, G * D]."""
  ch: int = 256
  res_ch: int = 256
  num_res_blocks: int = 2
  num_downsamples: int = 2
  out_features: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = x
    for i in range(self.num_downsamples):
      if i:
        h = nn.relu(h)
      h = nn.Conv(self.ch, (4, 4), strides=2, padding=1, name=f"down_{i}")(h)
    for i in range(self.num_res_blocks):
      h = ResidualBlock(self.res_ch, name=f"res_{i}")(h)
    return nn.Conv(self.out_features, (1, 1), name="to_codes")(nn.relu(h))


class Decoder(nn.Module):
  """z_q [B, h, w, G * D] -> decoder parameters [B, h 2^s, w 2^s, C, P]."""
  num_channels: int
  params_per_subpixel: int = 2
  ch: int = 256
  res_ch: int = 256
  num_res_blocks: int = 2
  num_upsamples: int = 2

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h = nn.Conv(self.ch, (3, 3), padding=1, name="from_codes")(z)
    for i in range(self.num_res_blocks):
      h = ResidualBlock(self.res_ch, name=f"res_{i}")(h)
    for i in range(self.num_upsamples):
      last = i == self.num_upsamples - 1
      features = self.num_channels * self.params_per_subpixel if last else self.ch
      h = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME",
                           name=f"up_{i}")(nn.relu(h))
    return h.reshape(*h.shape[:-1], self.num_channels, self.params_per_subpixel)


class VQAutoencoder(nn.Module):
  """Encoder and decoder of one VQ-VAE; the codebook lives outside (see module doc)."""
  num_channels: int
  latents_per_position: int = 1    # G
  code_dim: int = 64               # D
  ch: int = 256
  res_ch: int = 256
  num_res_blocks: int = 2
  num_downsamples: int = 2
  params_per_subpixel: int = 2

  def setup(self):
    self.encoder = Encoder(self.ch, self.res_ch, self.num_res_blocks, self.num_downsamples,
                           self.latents_per_position * self.code_dim)
    self.decoder = Decoder(self.num_channels, self.params_per_subpixel, self.ch,
                           self.res_ch, self.num_res_blocks, self.num_downsamples)

  def encode(self, x: jax.Array) -> jax.Array:
    """z_e [B, h, w, G, D]."""
    z = self.encoder(x)
    return z.reshape(*z.shape[:-1], self.latents_per_position, self.code_dim)

  def decode(self, z: jax.Array) -> jax.Array:
    """z [B, h, w, G, D] -> decoder parameters [B, H, W, C, P]."""
    return self.decoder(z.reshape(*z.shape[:-2], -1))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode(x))


class CodePrior(nn.Module):
  """p(z) over a code map [B, h, w, G] of indices in [0, K): logits [B, h, w, G, K].

  Each code is embedded (a learned table, `embed_dim` features per latent); the G
  embeddings of a position form G contiguous feature groups, which the masked
  convolutions order like the colour channels of a pixel.
  """
  num_codes: int                   # K
  latents_per_position: int = 1    # G
  network: str = "gated_pixelcnn"
  embed_dim: int = 64
  ch: int = 128
  num_layers: int = 15
  kernel_size: int = 3
  first_kernel_size: int = 7
  head_features: int = 1024
  num_classes: int = 0

  @nn.compact
  def __call__(self, codes: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    if self.network not in PRIOR_NETWORKS:
      raise ValueError(f"Prior network {self.network!r}; choose one of {PRIOR_NETWORKS}.")
    h = nn.Embed(self.num_codes, self.embed_dim, name="code_embedding")(codes)
    h = h.reshape(*h.shape[:-2], -1)   # [B, h, w, G * E]: group g = block g
    common = dict(num_channels=self.latents_per_position, ch=self.ch,
                  num_layers=self.num_layers, kernel_size=self.kernel_size,
                  first_kernel_size=self.first_kernel_size,
                  head_features=self.head_features, num_levels=self.num_codes)
    if self.network == "pixelcnn":
      return pixelcnn.PixelCNN(**common, name="pixelcnn")(h, y, train=train)
    return pixelcnn.GatedPixelCNN(**common, num_classes=self.num_classes,
                                  name="gated_pixelcnn")(h, y, train=train)


# ----------------------------------------------------------------- the quantizer
def init_codebook(rng: jax.Array, num_codes: int, code_dim: int) -> jax.Array:
  """e [K, D] uniform in +-sqrt(3 / D): codes of norm about 1, like encoder outputs."""
  limit = math.sqrt(3.0 / code_dim)
  return jax.random.uniform(rng, (num_codes, code_dim), jnp.float32, -limit, limit)


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """||z_n - e_k||^2 [..., K] for z [..., D], as |z|^2 - 2 z.e + |e|^2."""
  return (jnp.sum(z * z, axis=-1, keepdims=True) - 2.0 * z @ codebook.T
          + jnp.sum(codebook * codebook, axis=-1))


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """k = argmin_j ||z - e_j||^2 (eq. 1): int32 [...] for z [..., D]."""
  return jnp.argmin(squared_distances(z, codebook), axis=-1).astype(jnp.int32)


def straight_through(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """z_q in the forward pass; d/dz_e = identity in the backward pass (section 3.2)."""
  return z_e + jax.lax.stop_gradient(z_q - z_e)


def latent_squared_error(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per example [B]: the mean over the N latents of ||a - b||^2 (summed over D).

  a, b: [B, ..., D]. Eq. 3's codebook and commitment terms, averaged over latents.
  """
  per_latent = jnp.sum(jnp.square(a - b), axis=-1)
  return jnp.mean(per_latent.reshape(per_latent.shape[0], -1), axis=-1)


def commitment_loss(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """||z_e - sg[e]||^2 per example: trains only the encoder (eq. 3, third term)."""
  return latent_squared_error(z_e, jax.lax.stop_gradient(z_q))


def codebook_loss(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """||sg[z_e] - e||^2 per example: trains only the codebook (eq. 3, second term)."""
  return latent_squared_error(jax.lax.stop_gradient(z_e), z_q)


def code_counts(codes: jax.Array, num_codes: int) -> jax.Array:
  """n_i: how many of `codes` (any shape) are code i, float32 [K]."""
  return jnp.zeros((num_codes,), jnp.float32).at[codes.reshape(-1)].add(1.0)


def perplexity(counts: jax.Array) -> jax.Array:
  """exp(entropy) of the code frequencies: K when all codes are used equally, 1 at
  collapse onto one code."""
  p = counts / jnp.maximum(jnp.sum(counts), 1.0)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def ema_codebook_update(cluster_size: jax.Array, embed_sum: jax.Array, z: jax.Array,
                        codes: jax.Array, *, decay: float,
                        epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Appendix A.1: (N, m, e) after one minibatch of encoder outputs z [M, D], codes [M].

    N_i <- gamma N_i + (1 - gamma) n_i                      (eq. 6)
    m_i <- gamma m_i + (1 - gamma) sum_{j: code j = i} z_j  (eq. 7)
    e_i  = m_i / N~_i, N~_i = (N_i + eps) / (n + K eps) n,  n = sum_i N_i   (eq. 8)
  N~ is N Laplace-smoothed (additive eps per code, renormalised to the same total),
  so that an unused code never divides by zero.
  """
  num_codes = cluster_size.shape[0]
  one_hot = jax.nn.one_hot(codes, num_codes, dtype=z.dtype)
  cluster_size = decay * cluster_size + (1.0 - decay) * jnp.sum(one_hot, axis=0)
  embed_sum = decay * embed_sum + (1.0 - decay) * one_hot.T @ z
  total = jnp.sum(cluster_size)
  smoothed = (cluster_size + epsilon) / (total + num_codes * epsilon) * total
  return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def dead_codes(cluster_size: jax.Array, threshold: float) -> jax.Array:
  """bool [K]: codes whose EMA usage is below `threshold` (never, for threshold 0)."""
  return cluster_size < threshold


def random_encoder_outputs(rng: jax.Array, z: jax.Array, num: int) -> jax.Array:
  """`num` rows of z [M, D], distinct while num <= M (a permutation, cycled)."""
  order = jax.random.permutation(rng, z.shape[0])
  return z[order[jnp.arange(num) % z.shape[0]]]


def restart_dead_codes(codebook: jax.Array, cluster_size: jax.Array, z: jax.Array,
                       rng: jax.Array, threshold: float,
                       embed_sum: jax.Array | None = None):
  """Moves every dead code onto a random encoder output of this batch.

  Returns (codebook, cluster_size, embed_sum or None, dead [K]). A restarted code gets
  usage RESTART_COUNT and, with EMA updates, m_i = RESTART_COUNT * e_i so that eq. 8
  gives back the new e_i.
  """
  dead = dead_codes(cluster_size, threshold)
  fresh = random_encoder_outputs(rng, z, codebook.shape[0])
  codebook = jnp.where(dead[:, None], fresh, codebook)
  cluster_size = jnp.where(dead, RESTART_COUNT, cluster_size)
  if embed_sum is not None:
    embed_sum = jnp.where(dead[:, None], RESTART_COUNT * fresh, embed_sum)
  return codebook, cluster_size, embed_sum, dead


def num_params(tree: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
