"""Spectral normalisation (Miyato et al. 2018): layers whose weight is W / sigma(W).

sigma(W), the largest singular value, is estimated by power iteration (Miyato et al.,
Algorithm 1) from a vector u kept between steps in the mutable collection
'spectral_norm' (carried in TrainState.model_state). With W the weight as a matrix of
shape [fan_in, out] (a conv kernel [kh, kw, in, out] reshaped to [kh*kw*in, out]: the
transpose of Miyato's [out, in*kh*kw], with the same singular values):

  v <- K u / ||K u||,   u <- K^T v / ||K^T v||,   sigma = v^T K u      (eq. 20 ff.)

u and v are constants for the gradient (stop_gradient), as in the reference code:
the gradient flows through sigma = v^T K u into K only. In train mode
(`update_stats=True`) the new u is stored; in eval mode the stored u is iterated
but not written back, so evaluation never changes the model state.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

COLLECTION = "spectral_norm"
Initializer = Any


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / (jnp.sqrt(jnp.sum(jnp.square(x))) + eps)


def as_matrix(kernel: jax.Array) -> jax.Array:
  """Any kernel [..., out] as the matrix [fan_in, out] whose norm is normalised."""
  return kernel.reshape(-1, kernel.shape[-1])


def power_iteration(matrix: jax.Array, u: jax.Array, num_iters: int,
                    eps: float = 1e-12) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sigma, u, v) after `num_iters` power-iteration steps on matrix [fan_in, out].

  u (size out) and v (size fan_in) are returned without gradient; sigma carries the
  gradient of v^T K u with respect to the matrix.
  """
  if num_iters < 1:
    raise ValueError(f"Spectral norm needs num_iters >= 1, got {num_iters}.")
  m = jax.lax.stop_gradient(matrix.astype(jnp.float32))
  u = u.astype(jnp.float32)
  v = jnp.zeros((m.shape[0],), jnp.float32)
  for _ in range(num_iters):
    v = l2_normalize(m @ u, eps)
    u = l2_normalize(m.T @ v, eps)
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  sigma = v @ matrix.astype(jnp.float32) @ u
  return sigma, u, v


def normalize_kernel(module: nn.Module, kernel: jax.Array, *, update_stats: bool,
                     num_iters: int = 1, eps: float = 1e-12) -> jax.Array:
  """kernel / sigma(kernel), with u stored in `module`'s 'spectral_norm' collection.

  u starts as a normalised Gaussian vector drawn from the 'params' rng at init.
  """
  out = kernel.shape[-1]
  u_var = module.variable(
      COLLECTION, "u",
      lambda: l2_normalize(jax.random.normal(module.make_rng("params"), (out,))))
  sigma, u, _ = power_iteration(as_matrix(kernel), u_var.value, num_iters, eps)
  if update_stats and not module.is_initializing():
    u_var.value = u
  return (kernel / sigma).astype(kernel.dtype)


class SNDense(nn.Module):
  """Dense layer with a spectrally normalised kernel."""
  features: int
  use_bias: bool = True
  update_stats: bool = False        # True in train mode: store the new u
  num_iters: int = 1
  eps: float = 1e-12
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    kernel = normalize_kernel(self, kernel, update_stats=self.update_stats,
                              num_iters=self.num_iters, eps=self.eps)
    y = x @ kernel
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


class SNConv(nn.Module):
  """2-D convolution (NHWC) with a spectrally normalised kernel [kh, kw, in, out]."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: str | Sequence[tuple[int, int]] = "SAME"
  use_bias: bool = True
  update_stats: bool = False
  num_iters: int = 1
  eps: float = 1e-12
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape)
    kernel = normalize_kernel(self, kernel, update_stats=self.update_stats,
                              num_iters=self.num_iters, eps=self.eps)
    padding = self.padding if isinstance(self.padding, str) else tuple(self.padding)
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=tuple(self.strides), padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


class SNEmbed(nn.Module):
  """Class embedding table [num_embeddings, features], spectrally normalised
  (the projection discriminator's embedding, Miyato & Koyama 2018)."""
  num_embeddings: int
  features: int
  update_stats: bool = False
  num_iters: int = 1
  eps: float = 1e-12
  embedding_init: Initializer = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, labels: jax.Array) -> jax.Array:
    table = self.param("embedding", self.embedding_init,
                       (self.num_embeddings, self.features))
    table = normalize_kernel(self, table, update_stats=self.update_stats,
                             num_iters=self.num_iters, eps=self.eps)
    return jnp.take(table, labels, axis=0)
