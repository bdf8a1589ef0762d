"""Tests for evaluation/ddpm_likelihood.py against scipy and a float64 brute force."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from evaluation.ddpm_likelihood import vlb_bpd
from models.diffusion import GaussianDiffusion, get_beta_schedule


def _gaussian_eps_fn(diffusion, mu, std):
  """E[eps | x_t] for x_0 ~ N(mu, std^2) per sub-pixel: the optimal denoiser.

  x_t = a x_0 + sigma eps is jointly Gaussian with eps, so
  E[eps | x_t] = sigma (x_t - a mu) / (a^2 std^2 + sigma^2).
  """
  def eps_fn(x_t, t):
    abar = diffusion.alphas_cumprod[t].reshape((-1,) + (1,) * (x_t.ndim - 1))
    return (jnp.sqrt(1 - abar) * (x_t - jnp.sqrt(abar) * mu)
            / (abar * std**2 + 1 - abar))
  return eps_fn


# ---------------------------------------------------------- variational bound


def _discretized_gaussian_data(rng, mu, std, shape):
  """uint8 data from rounding N(mu, std^2) and its true NLL in bits/dim [B]."""
  levels = np.clip(np.round((rng.normal(mu, std, size=shape) + 1) * 127.5), 0, 255)
  centers = levels / 127.5 - 1
  upper = np.where(levels == 255, np.inf, centers + 1 / 255)
  lower = np.where(levels == 0, -np.inf, centers - 1 / 255)
  log_mass = np.log(stats.norm.cdf(upper, mu, std) - stats.norm.cdf(lower, mu, std))
  nll_bpd = -log_mass.reshape(shape[0], -1).mean(1) / math.log(2)
  return levels.astype(np.uint8), nll_bpd


@functools.partial(jax.jit, static_argnames='var_type')
def _gaussian_data_vlb(diffusion, x0_uint8, rng, mu, std, var_type):
  """vlb_bpd with the optimal denoiser; one compilation serves every (mu, std)."""
  return vlb_bpd(_gaussian_eps_fn(diffusion, mu, std), diffusion, x0_uint8, rng,
                 var_type=var_type, timestep_chunk=100)


@pytest.mark.parametrize('mu,std,max_gap', [
    # Data well inside [-1, 1]: the bound is 0.1-0.2 bits above the NLL.
    (0.1, 0.2, 0.3),
    # 16% of the data in the top edge bin, which the Gaussian denoiser ignores.
    (0.6, 0.4, 1.2),
])
def test_vlb_bounds_the_true_nll_of_gaussian_data(mu, std, max_gap):
  """E[bpd_vlb] >= E[-log2 p_data] / D, and not by much for the optimal denoiser.

  E_data[VLB] >= E_data[-log p_model] >= E_data[-log p_data] (cross-entropy >=
  entropy), so the mean over examples must be above the true NLL of the data.
  The gap does not vanish: with T = 1000 the reverse variances are fixed
  (beta_t) rather than the true Var[x_{t-1} | x_t], the denoiser is optimal
  for the continuous Gaussian, not for the 256-level data it is scored on,
  and the decoder is a Gaussian of a fixed width of about one bin. The bound
  is tight only as T -> inf with a decoder matched to the data.
  """
  num_timesteps, batch = 1000, 512
  diffusion = GaussianDiffusion.from_betas(get_beta_schedule(
      'linear', beta_start=1e-4, beta_end=0.02, num_timesteps=num_timesteps))
  x0_uint8, nll_bpd = _discretized_gaussian_data(
      np.random.default_rng(0), mu, std, (batch, 4, 4, 1))
  out = _gaussian_data_vlb(diffusion, jnp.asarray(x0_uint8), jax.random.key(0),
                           mu, std, var_type='fixedlarge')
  out = jax.tree.map(np.asarray, out)
  assert out['terms_bpd'].shape == (batch, num_timesteps)
  gap = out['bpd_vlb'].mean() - nll_bpd.mean()
  standard_error = (out['bpd_vlb'] - nll_bpd).std() / math.sqrt(batch)
  assert gap > 4 * standard_error, (gap, standard_error)
  assert gap < max_gap, (gap, standard_error)
  # L_T is negligible for this schedule: abar_T ~ 4e-5.
  assert np.all(out['prior_bpd'] < 1e-4)


def _brute_force_terms(eps_fn, betas, x0_uint8, rng, var_type, clip_denoised):
  """The bound term by term in float64 numpy, one Python iteration per t."""
  num_timesteps = len(betas)
  x0 = x0_uint8.astype(np.float64) / 127.5 - 1
  batch = x0.shape[0]
  alphas_cumprod = np.cumprod(1 - betas)
  terms = np.zeros((batch, num_timesteps))
  for t in range(num_timesteps):
    beta, abar = betas[t], alphas_cumprod[t]
    abar_prev = alphas_cumprod[t - 1] if t > 0 else 1.0
    noise = np.asarray(
        jax.random.normal(jax.random.fold_in(rng, t), x0.shape), np.float64)
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise
    eps = np.asarray(eps_fn(jnp.asarray(x_t, jnp.float32),
                            jnp.full((batch,), t, jnp.int32)), np.float64)
    if clip_denoised:
      x0_pred = np.clip((x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar), -1, 1)
      model_mean = (math.sqrt(abar_prev) * beta / (1 - abar) * x0_pred
                    + math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar) * x_t)
    else:
      # Ho et al. eq. 11.
      model_mean = (x_t - beta / math.sqrt(1 - abar) * eps) / math.sqrt(1 - beta)
    # The decoder variance at t = 0: the t = 1 posterior variance.
    posterior_var_1 = betas[1] * (1 - alphas_cumprod[0]) / (1 - alphas_cumprod[1])
    if t == 0:
      scale = math.sqrt(posterior_var_1)
      upper = np.where(x0_uint8 == 255, np.inf, x0 + 1 / 255)
      lower = np.where(x0_uint8 == 0, -np.inf, x0 - 1 / 255)
      mass = (stats.norm.cdf(upper, model_mean, scale)
              - stats.norm.cdf(lower, model_mean, scale))
      nats = -np.log(mass)
    else:
      true_var = beta * (1 - abar_prev) / (1 - abar)
      true_mean = (math.sqrt(abar_prev) * beta / (1 - abar) * x0
                   + math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar) * x_t)
      model_var = beta if var_type == 'fixedlarge' else true_var
      nats = 0.5 * (math.log(model_var / true_var) - 1
                    + (true_var + (true_mean - model_mean) ** 2) / model_var)
    terms[:, t] = nats.reshape(batch, -1).mean(1) / math.log(2)
  abar_last = alphas_cumprod[-1]
  prior = 0.5 * (-math.log(1 - abar_last) - 1 + (1 - abar_last) + abar_last * x0**2)
  return terms, prior.reshape(batch, -1).mean(1) / math.log(2)


@pytest.mark.parametrize('var_type,clip_denoised', [
    ('fixedlarge', False), ('fixedsmall', False), ('fixedlarge', True)])
def test_vlb_terms_match_brute_force(fast_compile, var_type, clip_denoised):
  betas = np.linspace(0.05, 0.4, 8)
  diffusion = GaussianDiffusion.from_betas(betas)
  rng_np = np.random.default_rng(1)
  x0_uint8 = rng_np.integers(0, 256, size=(3, 2, 2, 2)).astype(np.uint8)
  x0_uint8[0, 0, 0] = [0, 255]  # both edge bins
  # Any eps function will do; this one is off from the optimum on purpose.
  def eps_fn(x_t, t):
    return jnp.tanh(1.5 * x_t) * (t[:, None, None, None] + 1) / 8 + 0.1
  rng = jax.random.key(7)
  out = vlb_bpd(eps_fn, diffusion, jnp.asarray(x0_uint8), rng, var_type=var_type,
                clip_denoised=clip_denoised, timestep_chunk=3)
  terms, prior = _brute_force_terms(
      eps_fn, betas, x0_uint8, rng, var_type, clip_denoised)
  np.testing.assert_allclose(out['terms_bpd'], terms, rtol=2e-3, atol=1e-5)
  np.testing.assert_allclose(out['prior_bpd'], prior, rtol=2e-3, atol=1e-6)
  np.testing.assert_allclose(out['decoder_bpd'], terms[:, 0], rtol=2e-3)
  np.testing.assert_allclose(
      out['bpd_vlb'], prior + terms.sum(1), rtol=2e-3)


def test_vlb_chunking_and_jit_do_not_change_the_result(fast_compile):
  diffusion = GaussianDiffusion.from_betas(np.linspace(0.05, 0.4, 7))
  x0_uint8 = jnp.asarray(
      np.random.default_rng(2).integers(0, 256, size=(2, 3, 3, 1)), jnp.uint8)
  per_example_shift = jnp.array([0.1, -0.2]).reshape(2, 1, 1, 1)  # like labels
  gaussian_eps_fn = _gaussian_eps_fn(diffusion, 0.0, 0.5)

  def eps_fn(x_t, t):
    # Every call sees one [B] batch, whatever the chunk.
    assert x_t.shape == x0_uint8.shape and t.shape == (2,)
    return gaussian_eps_fn(x_t, t) + per_example_shift

  rng = jax.random.key(3)
  reference = vlb_bpd(eps_fn, diffusion, x0_uint8, rng, timestep_chunk=1)
  for chunk in (3, 50):  # 3 does not divide T = 7: the last chunk is padded
    jitted = jax.jit(lambda x, r, c=chunk: vlb_bpd(
        eps_fn, diffusion, x, r, timestep_chunk=c))
    out = jitted(x0_uint8, rng)
    for key in reference:
      np.testing.assert_allclose(out[key], reference[key], rtol=1e-5, err_msg=key)
  assert reference['terms_bpd'].shape == (2, 7)
  assert set(reference) == {'bpd_vlb', 'prior_bpd', 'decoder_bpd', 'terms_bpd'}


def test_vlb_bad_arguments_raise():
  diffusion = GaussianDiffusion.from_betas(np.linspace(0.05, 0.4, 4))
  eps_fn = _gaussian_eps_fn(diffusion, 0.0, 0.5)
  x0_uint8 = jnp.zeros((2, 2, 2, 1), jnp.uint8)
  rng = jax.random.key(0)
  with pytest.raises(ValueError, match='uint8'):
    vlb_bpd(eps_fn, diffusion, x0_uint8.astype(jnp.float32), rng)
  with pytest.raises(ValueError, match='var_type'):
    vlb_bpd(eps_fn, diffusion, x0_uint8, rng, var_type='learned')
  with pytest.raises(ValueError, match='timestep_chunk'):
    vlb_bpd(eps_fn, diffusion, x0_uint8, rng, timestep_chunk=0)
  with pytest.raises(ValueError, match='noise must have shape'):
    vlb_bpd(eps_fn, diffusion, x0_uint8, rng, noise=jnp.zeros((3, 2, 2, 2, 1)))


def test_vlb_noise_can_be_passed_in():
  """The draws vlb_bpd makes itself, passed as `noise`, give the same bound; other
  draws give another (rng unused then); chunks see the same per-t noise."""
  diffusion = GaussianDiffusion.from_betas(np.linspace(0.05, 0.4, 5))
  eps_fn = _gaussian_eps_fn(diffusion, 0.0, 0.5)
  x0_uint8 = jnp.asarray(
      np.random.default_rng(4).integers(0, 256, size=(2, 3, 3, 1)), jnp.uint8)
  rng = jax.random.key(7)
  noise = jnp.stack([jax.random.normal(jax.random.fold_in(rng, t), x0_uint8.shape)
                     for t in range(5)])
  own = vlb_bpd(eps_fn, diffusion, x0_uint8, rng)
  for chunk in (1, 2):
    given = vlb_bpd(eps_fn, diffusion, x0_uint8, None, noise=noise, timestep_chunk=chunk)
    np.testing.assert_allclose(given['terms_bpd'], own['terms_bpd'], rtol=1e-6)
  other = vlb_bpd(eps_fn, diffusion, x0_uint8, None, noise=-noise)
  assert not np.allclose(other['terms_bpd'][:, 1:], own['terms_bpd'][:, 1:])
