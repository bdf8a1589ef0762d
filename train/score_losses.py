"""Denoising score matching losses: continuous SDE, discrete SMLD / DDPM, and EDM.

Each loss is a pure function of a model callable, an rng and a clean batch x0
[B, ...] (already scaled, e.g. to [-1, 1]) and returns the per-example losses [B];
a family averages them (and may add other terms) inside its one jitted train step:

  losses = dsm_loss(lambda x, t: apply(params, x, t), sde, rng, x0)
  loss = losses.mean()

Model callables:
  score_fn(x, t [B] float)        -> score estimate s(x, t)          (dsm_loss)
  model_fn(x, labels [B] int32)   -> score at SMLD noise level label (smld_loss)
  eps_fn(x, labels [B] int32)     -> predicted noise at DDPM step    (ddpm_loss)
  denoiser_fn(x, sigma [B] float) -> D(x, sigma) ~ E[x0 | x]         (edm_loss)

Reductions over the non-batch axes follow score_sde: `reduce_mean=True` averages,
otherwise the SDE and SMLD losses take half the sum (the 1/2 of the Fisher
divergence) and the DDPM and EDM losses the plain sum (Ho et al. L_simple; the EDM
code sums the squared error).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from models.sde import SDE, VESDE, VPSDE, broadcast_to_rank

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
LabelFn = Callable[[jax.Array, jax.Array], jax.Array]
DenoiserFn = Callable[[jax.Array, jax.Array], jax.Array]

# Karras et al. 2022, Table 1 ("EDM" column): log sigma ~ N(P_mean, P_std^2).
EDM_P_MEAN = -1.2
EDM_P_STD = 1.2
EDM_SIGMA_DATA = 0.5


def _reduce(values: jax.Array, reduce_mean: bool, half_sum: bool) -> jax.Array:
  """Per-example mean, or (half) sum, over every axis but the first."""
  flat = values.reshape(values.shape[0], -1)
  if reduce_mean:
    return jnp.mean(flat, axis=-1)
  return (0.5 if half_sum else 1.0) * jnp.sum(flat, axis=-1)


def _check_batch(x0: jax.Array) -> None:
  if x0.ndim < 2:
    raise ValueError(f'x0 must be a batch [B, ...] of rank >= 2, got shape {x0.shape}.')
  if not jnp.issubdtype(x0.dtype, jnp.floating):
    raise ValueError(f'x0 must be float data already scaled (e.g. to [-1, 1]), got '
                     f'dtype {x0.dtype}.')


def sample_importance_weighted_time(
    sde: SDE, rng: jax.Array, batch_size: int, eps: float = 1e-5
) -> tuple[jax.Array, jax.Array]:
  """t ~ p(t) = g(t)^2 / (sigma(t)^2 Z) on [eps, T], and the normaliser Z.

  Song, Durkan, Murray & Ermon 2021 (sec. 5): with likelihood weighting the DSM
  integrand is (g^2 / sigma^2) E||sigma s + z||^2, whose weight blows up as
  t -> 0; sampling t from it by inverting its antiderivative F (closed form per
  SDE) and multiplying by Z = F(T) - F(eps) leaves an unbiased, low-variance
  estimate of the likelihood-weighted loss.
  """
  # Host float64 end points: F(eps) = log(e^{B(eps)} - 1) is far from 0 for small eps.
  cum_lo = float(sde.likelihood_importance_cum_weight(eps))
  cum_hi = float(sde.likelihood_importance_cum_weight(sde.T))
  u = jax.random.uniform(rng, (batch_size,), jnp.float32)
  t = sde.t_from_likelihood_importance_cum_weight(cum_lo + u * (cum_hi - cum_lo))
  # Float rounding of the inverse can step a hair outside [eps, T].
  return jnp.clip(t, eps, sde.T), cum_hi - cum_lo


def dsm_loss(
    score_fn: ScoreFn,
    sde: SDE,
    rng: jax.Array,
    x0: jax.Array,
    *,
    eps: float = 1e-5,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
) -> jax.Array:
  """Continuous-time denoising score matching (Song et al. 2021, eq. 7), per example.

  t ~ U(eps, T), x_t = alpha(t) x0 + sigma(t) z. With lambda(t) = sigma(t)^2 (the
  default) the loss is ||sigma s(x_t, t) + z||^2; with `likelihood_weighting`,
  lambda(t) = g(t)^2 and the loss is g^2 ||s + z / sigma||^2, whose integral over t
  bounds the negative log-likelihood (Song et al. 2021b, Thm. 1).

  `importance_sampling` (only with likelihood_weighting) draws t from
  p(t) = g^2 / (sigma^2 Z) and returns Z ||sigma s + z||^2 / (T - eps): the same
  expectation as the uniform estimate, (T - eps)^{-1} int (g^2 / sigma^2)
  E||sigma s + z||^2 dt, with far less variance near t = eps.
  """
  _check_batch(x0)
  if importance_sampling and not likelihood_weighting:
    raise ValueError('importance_sampling=True needs likelihood_weighting=True.')
  if not 0 < eps < sde.T:
    raise ValueError(f'eps must lie in (0, {sde.T}), got {eps}.')
  batch_size = x0.shape[0]
  t_rng, z_rng = jax.random.split(rng)
  if importance_sampling:
    t, normaliser = sample_importance_weighted_time(sde, t_rng, batch_size, eps)
  else:
    t = jax.random.uniform(t_rng, (batch_size,), jnp.float32, eps, sde.T)
  z = jax.random.normal(z_rng, x0.shape, jnp.float32)
  mean, std = sde.marginal_prob(x0, t)
  score = score_fn(mean + std * z, t)
  if not likelihood_weighting:
    return _reduce(jnp.square(score * std + z), reduce_mean, half_sum=True)
  if importance_sampling:
    # E_{p(t)}[Z ||sigma s + z||^2] = int (g^2/sigma^2) ||sigma s + z||^2 dt; divide
    # by T - eps so that it matches the uniform estimate's expectation below.
    losses = _reduce(jnp.square(score * std + z), reduce_mean, half_sum=True)
    return losses * normaliser / (sde.T - eps)
  g2 = jnp.square(sde.diffusion_coef(t))
  return _reduce(jnp.square(score + z / std), reduce_mean, half_sum=True) * g2


def smld_loss(model_fn: LabelFn, sde: VESDE, rng: jax.Array, x0: jax.Array,
              *, reduce_mean: bool = False) -> jax.Array:
  """The NCSN loss over SMLD's N discrete noise levels (Song & Ermon 2019, eq. 5).

  label ~ U{0..N-1} indexes the descending sigmas (label 0 is sigma_max), x = x0 +
  sigma z, and the loss is sigma^2 ||s(x, label) + z / sigma||^2 (lambda = sigma^2).
  """
  _check_batch(x0)
  if not isinstance(sde, VESDE):
    raise ValueError(f'smld_loss needs a VESDE, got {type(sde).__name__}.')
  label_rng, z_rng = jax.random.split(rng)
  labels = jax.random.randint(label_rng, (x0.shape[0],), 0, sde.num_scales)
  descending = jnp.asarray(sde.discrete_sigmas[::-1].copy(), jnp.float32)
  sigma = broadcast_to_rank(descending[labels], x0.ndim)
  noise = sigma * jax.random.normal(z_rng, x0.shape, jnp.float32)
  score = model_fn(x0 + noise, labels)
  target = -noise / jnp.square(sigma)
  losses = jnp.square(score - target) * jnp.square(sigma)
  return _reduce(losses, reduce_mean, half_sum=True)


def ddpm_loss(eps_fn: LabelFn, sde: VPSDE, rng: jax.Array, x0: jax.Array,
              *, reduce_mean: bool = True) -> jax.Array:
  """Ho et al. L_simple over the N-step DDPM chain of the VP SDE: ||eps - eps_hat||^2.

  label ~ U{0..N-1} is the step (0 = least noise), x = sqrt(abar) x0 + sqrt(1 - abar) z.
  """
  _check_batch(x0)
  if not isinstance(sde, VPSDE):
    raise ValueError(f'ddpm_loss needs a VPSDE, got {type(sde).__name__}.')
  label_rng, z_rng = jax.random.split(rng)
  labels = jax.random.randint(label_rng, (x0.shape[0],), 0, sde.num_scales)
  alphas_cumprod = jnp.asarray(sde.alphas_cumprod, jnp.float32)
  abar = broadcast_to_rank(alphas_cumprod[labels], x0.ndim)
  noise = jax.random.normal(z_rng, x0.shape, jnp.float32)
  x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise
  return _reduce(jnp.square(eps_fn(x_t, labels) - noise), reduce_mean, half_sum=False)


def edm_preconditioning(sigma: jax.Array, sigma_data: float = EDM_SIGMA_DATA):
  """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1 (EDM column).

    c_skip = sd^2 / (sigma^2 + sd^2)      c_out = sigma sd / sqrt(sigma^2 + sd^2)
    c_in = 1 / sqrt(sigma^2 + sd^2)       c_noise = log(sigma) / 4
  so that D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) has a unit-variance
  network input and training target (App. B.6).
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  total_var = jnp.square(sigma) + sigma_data**2
  c_skip = sigma_data**2 / total_var
  c_out = sigma * sigma_data / jnp.sqrt(total_var)
  c_in = 1.0 / jnp.sqrt(total_var)
  c_noise = 0.25 * jnp.log(sigma)
  return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: jax.Array, sigma_data: float = EDM_SIGMA_DATA) -> jax.Array:
  """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2 (Table 1)."""
  sigma = jnp.asarray(sigma, jnp.float32)
  return (jnp.square(sigma) + sigma_data**2) / jnp.square(sigma * sigma_data)


def sample_edm_sigma(rng: jax.Array, batch_size: int, p_mean: float = EDM_P_MEAN,
                     p_std: float = EDM_P_STD) -> jax.Array:
  """Training noise levels: ln(sigma) ~ N(P_mean, P_std^2) (Table 1), shape [B]."""
  return jnp.exp(p_mean + p_std * jax.random.normal(rng, (batch_size,), jnp.float32))


def edm_denoiser(raw_fn: Callable[[jax.Array, jax.Array], jax.Array],
                 sigma_data: float = EDM_SIGMA_DATA) -> DenoiserFn:
  """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) around a raw network F (eq. 7)."""
  def denoiser_fn(x, sigma):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
    c_skip, c_out, c_in, c_noise = (
        broadcast_to_rank(c, x.ndim) for c in edm_preconditioning(sigma, sigma_data))
    return c_skip * x + c_out * raw_fn(c_in * x, c_noise.reshape(x.shape[0]))
  return denoiser_fn


def edm_loss(denoiser_fn: DenoiserFn, rng: jax.Array, x0: jax.Array, *,
             sigma_data: float = EDM_SIGMA_DATA, p_mean: float = EDM_P_MEAN,
             p_std: float = EDM_P_STD, reduce_mean: bool = False) -> jax.Array:
  """Karras et al. eq. 2 / Table 1: lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2.

  With D from `edm_denoiser` this equals ||F - (x0 - c_skip x) / c_out||^2, a
  unit-weight regression of F on a unit-variance target.
  """
  _check_batch(x0)
  if not sigma_data > 0:
    raise ValueError(f'sigma_data must be > 0, got {sigma_data}.')
  if not p_std >= 0:
    raise ValueError(f'p_std must be >= 0, got {p_std}.')
  sigma_rng, noise_rng = jax.random.split(rng)
  sigma = sample_edm_sigma(sigma_rng, x0.shape[0], p_mean, p_std)
  noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
  x = x0 + broadcast_to_rank(sigma, x0.ndim) * noise
  weight = broadcast_to_rank(edm_loss_weight(sigma, sigma_data), x0.ndim)
  losses = weight * jnp.square(denoiser_fn(x, sigma) - x0)
  return _reduce(losses, reduce_mean, half_sum=False)


__all__ = [
    'dsm_loss', 'smld_loss', 'ddpm_loss', 'edm_loss', 'edm_preconditioning',
    'edm_loss_weight', 'sample_edm_sigma', 'edm_denoiser',
    'sample_importance_weighted_time', 'EDM_P_MEAN', 'EDM_P_STD', 'EDM_SIGMA_DATA',
]
