"""Exact likelihoods of score-based models via the probability-flow ODE.

Song et al. 2021, sec. 4.3 and App. D.2: the probability flow
dx/dt = f~(x, t) = f(t) x - g(t)^2 score(x, t) / 2 maps p_0 to p_T, and by the
instantaneous change of variables (Chen et al. 2018)

    log p_0(x_0) = log p_T(x_T) + int_0^T div f~(x_t, t) dt.             (eq. 39)

We integrate [x, delta_logp] from eps to T in one diffrax solve for the whole
batch and estimate each divergence with the Hutchinson-Skilling trick,
div f~ = E_v[v^T (df~/dx) v], with one probe v per example held fixed over the
solve (Gaussian or Rademacher), or exactly (for tiny data only).

Bits/dim over the 256-level data. Let k in {0..255}^D, dequantize it uniformly
as v = (k + u) / 256, u ~ U[0, 1)^D (Uria et al. 2013; score_sde run_lib), and let
the model see y = a v + b (a = 2, b = -1 for [-1, 1] data; a = 1, b = 0 for
[0, 1]). With P(k) = int_{[0,1)^D} p_v((k + u) / 256) 256^{-D} du and
p_v(v) = a^D p_y(a v + b), Jensen's inequality gives

    -log2 P(k) / D <= E_u[-log p_y(y)] / (D ln 2) + 8 - log2(a),

so bpd = -log p_y(y) / (D ln 2) + 8 - log2(a): the "+7" of score_sde for
[-1, 1] data (its offset 7 - inverse_scaler(-1)) and "+8" for [0, 1] data.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from datasets import transforms
from models import distributions
from models.sde import SDE
from sampling.sde_samplers import check_ode_tolerances, get_ode_solver, ode_solve_nfe

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

HUTCHINSON_TYPES = ('rademacher', 'gaussian', 'exact')
# y = scale * v + shift for dequantized v in [0, 1].
DATA_RANGES = {'[-1,1]': (2.0, -1.0), '[0,1]': (1.0, 0.0)}
NUM_LEVELS = 256


class LikelihoodOutput(NamedTuple):
  """Per-example log p_0(x) in nats [B], its two terms, x_T [B, ...], and the NFE."""
  logp: jax.Array
  prior_logp: jax.Array
  delta_logp: jax.Array
  z: jax.Array
  nfe: jax.Array


class BpdOutput(NamedTuple):
  """Per-example bits/dim [B] over the 256-level data, log p of y [B], and the NFE."""
  bpd: jax.Array
  logp: jax.Array
  nfe: jax.Array


def _check_data_range(data_range: str) -> tuple[float, float]:
  if data_range not in DATA_RANGES:
    raise ValueError(
        f'Unknown data_range {data_range!r}; choose one of {tuple(DATA_RANGES)}.')
  return DATA_RANGES[data_range]


def dequantize(rng: jax.Array, images: jax.Array, data_range: str = '[-1,1]') -> jax.Array:
  """uint8 images -> y = a (k + u) / 256 + b with u ~ U[0, 1), float32 [B, ...]."""
  scale, shift = _check_data_range(data_range)
  if images.dtype != jnp.uint8:
    raise ValueError(f'dequantize expects uint8 images, got dtype {images.dtype}.')
  # (k + u) / 256, u ~ U[0, 1) kept inside k's bin (datasets/transforms.py).
  return scale * transforms.dequantize(images, rng, 'uniform') + shift


def bits_per_dim(logp: jax.Array, num_dims: int, data_range: str = '[-1,1]') -> jax.Array:
  """bpd = -log p_y(y) / (D ln 2) + log2(256) - log2(a) (module docstring)."""
  scale, _ = _check_data_range(data_range)
  return (distributions.nats_to_bits_per_dim(-logp, num_dims) + math.log2(NUM_LEVELS)
          - math.log2(scale))


def _probe(rng: jax.Array, shape, hutchinson: str) -> jax.Array:
  if hutchinson == 'gaussian':
    return jax.random.normal(rng, shape, jnp.float32)
  return jax.random.rademacher(rng, shape, jnp.float32)


def _exact_divergence(fn, x: jax.Array) -> jax.Array:
  """sum_k e_k^T (df/dx) e_k per example with D JVPs (examples independent)."""
  batch_size, num_dims = x.shape[0], math.prod(x.shape[1:])
  basis = jnp.eye(num_dims, dtype=x.dtype)

  def diagonal_entry(direction):
    tangent = jnp.broadcast_to(direction.reshape(x.shape[1:]), x.shape)
    _, out = jax.jvp(fn, (x,), (tangent,))
    return jnp.sum((out * tangent).reshape(batch_size, -1), axis=-1)

  return jnp.sum(jax.lax.map(diagonal_entry, basis), axis=0)


def ode_log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: jax.Array,
    rng: jax.Array,
    *,
    hutchinson: str = 'rademacher',
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = 'tsit5',
    eps: float = 1e-5,
    dt0: float = 0.01,
    max_steps: int = 4096,
) -> LikelihoodOutput:
  """log p_0(x) per example (eq. 39) for continuous x [B, ...] in the model's scale.

  Defaults follow score_sde's likelihood.py (Rademacher probes, rtol = atol = 1e-5,
  eps = 1e-5). NFE counts score_fn calls: one (with its JVP) per evaluation of
  the augmented vector field, or D + 1 per evaluation for 'exact'.
  """
  if hutchinson not in HUTCHINSON_TYPES:
    raise ValueError(
        f'Unknown hutchinson {hutchinson!r}; choose one of {HUTCHINSON_TYPES}.')
  if x.ndim < 2:
    raise ValueError(f'x must be a batch [B, ...] of rank >= 2, got shape {x.shape}.')
  diffrax_solver = get_ode_solver(solver)
  check_ode_tolerances(rtol, atol, dt0, max_steps)
  if not 0 < eps < sde.T:
    raise ValueError(f'eps must lie in (0, {sde.T}), got {eps}.')
  batch_size = x.shape[0]
  x = x.astype(jnp.float32)
  probe = _probe(rng, x.shape, hutchinson)

  def vector_field(t, state, args):
    del args
    y, _ = state
    vec_t = jnp.full((batch_size,), t, jnp.float32)

    def drift_fn(y_in):
      return sde.reverse_sde(score_fn, y_in, vec_t, probability_flow=True)[0]

    if hutchinson == 'exact':
      return drift_fn(y), _exact_divergence(drift_fn, y)
    drift, jvp = jax.jvp(drift_fn, (y,), (probe,))
    return drift, jnp.sum((jvp * probe).reshape(batch_size, -1), axis=-1)

  solution = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), diffrax_solver, t0=eps, t1=sde.T, dt0=dt0,
      y0=(x, jnp.zeros((batch_size,), jnp.float32)),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  z, delta_logp = solution.ys[0][-1], solution.ys[1][-1]
  prior_logp = sde.prior_logp(z)
  nfe = ode_solve_nfe(solver, solution.stats)
  if hutchinson == 'exact':
    nfe = nfe * (math.prod(x.shape[1:]) + 1)
  return LikelihoodOutput(
      logp=prior_logp + delta_logp, prior_logp=prior_logp, delta_logp=delta_logp,
      z=z, nfe=nfe)


def ode_bpd(
    score_fn: ScoreFn,
    sde: SDE,
    images: jax.Array,
    rng: jax.Array,
    *,
    data_range: str = '[-1,1]',
    **likelihood_kwargs,
) -> BpdOutput:
  """Bits/dim per example of uint8 images [B, H, W, C] (one dequantization draw).

  The model's score_fn must see data in `data_range` as during training;
  `likelihood_kwargs` go to `ode_log_likelihood`.
  """
  _check_data_range(data_range)
  dequant_rng, probe_rng = jax.random.split(rng)
  y = dequantize(dequant_rng, images, data_range)
  out = ode_log_likelihood(score_fn, sde, y, probe_rng, **likelihood_kwargs)
  num_dims = int(np.prod(images.shape[1:]))
  return BpdOutput(bits_per_dim(out.logp, num_dims, data_range), out.logp, out.nfe)
