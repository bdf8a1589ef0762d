"""GAN losses and regularisers: pure functions of discriminator logits or of a
discriminator function. Every loss is a mean over the batch; logits have shape [B].

  loss             discriminator                                generator
  non_saturating   E softplus(-D(x)) + E softplus(D(G(z)))      E softplus(-D(G(z)))
  hinge            E relu(1 - D(x)) + E relu(1 + D(G(z)))        -E D(G(z))
  wasserstein      E D(G(z)) - E D(x)                            -E D(G(z))
  least_squares    1/2 E (D(x) - 1)^2 + 1/2 E D(G(z))^2           1/2 E (D(G(z)) - 1)^2

non_saturating: Goodfellow et al. 2014, sec. 3 (the -log D trick for G), written with
logits: -log sigmoid(l) = softplus(-l), -log(1 - sigmoid(l)) = softplus(l).
hinge: Lim & Ye 2017; Miyato et al. 2018, eq. 17. wasserstein: Arjovsky et al. 2017,
used with the gradient penalty of Gulrajani et al. 2017 (eq. 3). least_squares: Mao et
al. 2017, eq. 2 with a=0, b=c=1.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

LOSSES = ("non_saturating", "hinge", "wasserstein", "least_squares")
DiscriminatorFn = Callable[[jax.Array], jax.Array]   # images [B, ...] -> logits [B]


def discriminator_loss(name: str, real_logits: jax.Array,
                       fake_logits: jax.Array) -> jax.Array:
  if name == "non_saturating":
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
  if name == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
  if name == "wasserstein":
    return jnp.mean(fake_logits) - jnp.mean(real_logits)
  if name == "least_squares":
    return 0.5 * jnp.mean(jnp.square(real_logits - 1.0)) + 0.5 * jnp.mean(
        jnp.square(fake_logits))
  raise ValueError(f"config.gan.loss={name!r}; choose one of {LOSSES}.")


def generator_loss(name: str, fake_logits: jax.Array) -> jax.Array:
  if name == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake_logits))
  if name in ("hinge", "wasserstein"):
    return -jnp.mean(fake_logits)
  if name == "least_squares":
    return 0.5 * jnp.mean(jnp.square(fake_logits - 1.0))
  raise ValueError(f"config.gan.loss={name!r}; choose one of {LOSSES}.")


def _per_example_input_grads(d_fn: DiscriminatorFn, x: jax.Array) -> jax.Array:
  """d D(x_i) / d x_i for every example, via the gradient of sum_i D(x_i).

  Exact when examples do not interact inside D; with batch-coupled layers
  (minibatch std) it is the same quantity the reference implementations use.
  """
  return jax.grad(lambda inputs: jnp.sum(d_fn(inputs)))(x)


def _squared_norms(grads: jax.Array) -> jax.Array:
  return jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1)


def gradient_penalty(d_fn: DiscriminatorFn, real: jax.Array, fake: jax.Array,
                     rng: jax.Array) -> jax.Array:
  """Gulrajani et al. 2017, eq. 3: E_{x^} (||grad D(x^)||_2 - 1)^2 on the random
  interpolates x^ = eps x + (1 - eps) x~, eps ~ U[0, 1] per example. Unweighted
  (the loss multiplies by lambda)."""
  eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
  interpolates = eps * real + (1.0 - eps) * fake
  norms = jnp.sqrt(_squared_norms(_per_example_input_grads(d_fn, interpolates)) + 1e-12)
  return jnp.mean(jnp.square(norms - 1.0))


def r1_penalty(d_fn: DiscriminatorFn, real: jax.Array) -> jax.Array:
  """Mescheder et al. 2018, eq. 9 without the gamma/2: E_x ||grad_x D(x)||^2 on real
  data. The loss adds (gamma / 2) * r1 (times the interval k when lazy)."""
  return jnp.mean(_squared_norms(_per_example_input_grads(d_fn, real)))


def orthogonal_regularization(params: Any, weight: float) -> jax.Array:
  """BigGAN (Brock et al. 2019, eq. 3): weight * sum_W ||W^T W (1 - I)||_F^2 over every
  'kernel' with >= 2 dims, W the kernel as [fan_in, out] (the filters' Gram matrix).

  BigGAN-PyTorch applies the gradient 2 (W W^T (1 - I)) W, i.e. half of this term's
  gradient; weights therefore differ by a factor 2 between the two.
  """
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = str(getattr(path[-1], "key", path[-1]))
    if name != "kernel" or leaf.ndim < 2:
      continue
    w = leaf.reshape(-1, leaf.shape[-1]).astype(jnp.float32)
    gram = w.T @ w
    off_diagonal = gram * (1.0 - jnp.eye(gram.shape[0], dtype=gram.dtype))
    total = total + jnp.sum(jnp.square(off_diagonal))
  return weight * total
