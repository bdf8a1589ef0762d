"""Tests for sampling/ddpm.py with the exact denoiser of Gaussian data.

For data x_0 ~ N(mu, s^2) (independent dims), x_t = a x_0 + sigma eps with
a = sqrt(abar_t), sigma^2 = 1 - abar_t is jointly Gaussian with eps, so the
optimal noise prediction is E[eps | x_t] = sigma (x_t - a mu) / (a^2 s^2 + sigma^2).
A correct sampler driven by it must reproduce N(mu, s^2), up to the
discretization error of a finite T (which the tolerances allow for).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.diffusion import GaussianDiffusion, get_beta_schedule
from sampling.ddpm import (
    SampleOutput, ancestral_sample, ddim_sample, ddim_timesteps)

NUM_TIMESTEPS = 200
MU = np.array([0.3, -0.2])
STD = np.array([0.3, 0.6])
NUM_SAMPLES = 20_000


def _diffusion(num_timesteps=NUM_TIMESTEPS):
  # The linear schedule of Ho et al. stretched to T steps, so abar_T ~ 3e-5.
  scale = 1000 / num_timesteps
  return GaussianDiffusion.from_betas(get_beta_schedule(
      'linear', beta_start=1e-4 * scale, beta_end=0.02 * scale,
      num_timesteps=num_timesteps))


def _gaussian_eps_fn(diffusion, mu, std):
  """E[eps | x_t] for x_0 ~ N(mu, std^2) over the last axis of [B, C]."""
  mu, std = jnp.asarray(mu, jnp.float32), jnp.asarray(std, jnp.float32)

  def eps_fn(x_t, t):
    abar = diffusion.alphas_cumprod[t][:, None]
    return (jnp.sqrt(1 - abar) * (x_t - jnp.sqrt(abar) * mu)
            / (abar * std**2 + 1 - abar))
  return eps_fn


@pytest.fixture(scope='module')
def diffusion():
  return _diffusion()


def _samples(sampler, diffusion, seed=0, **kwargs):
  fn = jax.jit(lambda rng: sampler(
      _gaussian_eps_fn(diffusion, MU, STD), diffusion, rng, (NUM_SAMPLES, 2),
      clip_denoised=False, **kwargs).images)
  return np.asarray(fn(jax.random.key(seed)), np.float64)


def _assert_matches_data(samples, std_rtol):
  # 5 standard errors of the mean: 0.3 / sqrt(20000) ~ 0.002.
  np.testing.assert_allclose(
      samples.mean(0), MU, atol=5 * STD.max() / np.sqrt(NUM_SAMPLES))
  np.testing.assert_allclose(samples.std(0), STD, rtol=std_rtol)


@pytest.mark.parametrize('var_type,std_rtol', [
    # Ho et al. sec. 3.2: beta_t and the posterior variance are the upper and
    # lower extremes of the true reverse variance, so with T = 200 the sample
    # spread is a little too wide / too narrow; both vanish as T grows.
    ('fixedlarge', 0.03),
    ('fixedsmall', 0.07),
])
def test_ancestral_reproduces_gaussian_data(diffusion, var_type, std_rtol):
  samples = _samples(ancestral_sample, diffusion, var_type=var_type)
  _assert_matches_data(samples, std_rtol)


def test_ddim_deterministic_reproduces_gaussian_data(diffusion):
  samples = _samples(ddim_sample, diffusion, num_steps=NUM_TIMESTEPS, eta=0.0)
  _assert_matches_data(samples, std_rtol=0.03)
  # Few steps: the mean stays right; the spread shrinks (Euler error of the ODE).
  few = _samples(ddim_sample, diffusion, num_steps=20, eta=0.0,
                 step_spacing='quadratic')
  np.testing.assert_allclose(few.mean(0), MU, atol=0.01)
  assert np.all(few.std(0) < STD) and np.all(few.std(0) > 0.7 * STD)


def test_ddim_eta_one_all_steps_is_ancestral_fixedsmall(diffusion):
  """eta = 1 over every step gives sigma_t^2 = the posterior variance (DDIM eq. 16)."""
  ddim = _samples(ddim_sample, diffusion, num_steps=NUM_TIMESTEPS, eta=1.0)
  ancestral = _samples(ancestral_sample, diffusion, var_type='fixedsmall')
  # Same rng convention in both samplers: the same sample, by another formula.
  np.testing.assert_allclose(ddim, ancestral, atol=2e-4)
  _assert_matches_data(ddim, std_rtol=0.07)
  half = _samples(ddim_sample, diffusion, num_steps=NUM_TIMESTEPS // 2, eta=1.0)
  _assert_matches_data(half, std_rtol=0.12)


def test_ddim_eta_zero_is_deterministic_given_the_seed(diffusion):
  eps_fn = _gaussian_eps_fn(diffusion, MU, STD)
  sample = jax.jit(lambda rng: ddim_sample(
      eps_fn, diffusion, rng, (8, 2), num_steps=10).images)
  first, again = sample(jax.random.key(3)), sample(jax.random.key(3))
  other = sample(jax.random.key(4))
  np.testing.assert_array_equal(first, again)
  assert np.all(np.abs(np.asarray(first) - np.asarray(other)) > 1e-6)


def _record_calls(diffusion):
  """An eps_fn that records every timestep batch it is called with."""
  calls = []

  def record(t):
    calls.append(np.asarray(t).copy())

  inner = _gaussian_eps_fn(diffusion, MU, STD)

  def eps_fn(x_t, t):
    assert t.dtype == jnp.int32 and t.shape == (x_t.shape[0],)
    jax.debug.callback(record, t, ordered=True)
    return inner(x_t, t)
  return eps_fn, calls


def test_nfe_and_visited_timesteps():
  diffusion = _diffusion(30)
  eps_fn, calls = _record_calls(diffusion)
  out = ancestral_sample(eps_fn, diffusion, jax.random.key(0), (3, 2))
  jax.block_until_ready(out.images)
  assert isinstance(out, SampleOutput) and out.nfe == 30 == len(calls)
  np.testing.assert_array_equal([c[0] for c in calls], np.arange(29, -1, -1))
  assert all(np.all(c == c[0]) for c in calls)

  for num_steps, spacing in ((7, 'uniform'), (12, 'quadratic'), (1, 'uniform')):
    eps_fn, calls = _record_calls(diffusion)
    out = ddim_sample(eps_fn, diffusion, jax.random.key(0), (3, 2),
                      num_steps=num_steps, step_spacing=spacing, eta=0.5)
    jax.block_until_ready(out.images)
    assert out.nfe == num_steps == len(calls)
    np.testing.assert_array_equal(
        [c[0] for c in calls], ddim_timesteps(30, num_steps, spacing)[::-1])


def test_ddim_timesteps():
  # 'uniform' as in the DDIM code: 0, c, 2c, ... with c = T // S.
  np.testing.assert_array_equal(ddim_timesteps(1000, 10, 'uniform'),
                                np.arange(0, 1000, 100))
  np.testing.assert_array_equal(ddim_timesteps(30, 30, 'uniform'), np.arange(30))
  assert len(ddim_timesteps(1000, 3, 'uniform')) == 3
  # 'quadratic': tau_i ~ c i^2 from 0 to 0.8 T (DDIM code, App. D.2).
  quadratic = ddim_timesteps(1000, 10, 'quadratic')
  assert quadratic[0] == 0 and quadratic[-1] == 800 and len(quadratic) == 10
  assert np.all(np.diff(quadratic) > 0)
  np.testing.assert_array_equal(quadratic[:3], [0, int(800 / 81), int(800 * 4 / 81)])
  for num_timesteps in (15, 30, 1000):  # 0.8 T is not lost to float rounding
    assert ddim_timesteps(num_timesteps, 4, 'quadratic')[-1] == int(
        round(0.8 * num_timesteps, 6))
  assert np.all(np.diff(ddim_timesteps(1000, 100, 'quadratic')) >= 0)


def test_clip_denoised_keeps_samples_in_range():
  diffusion = _diffusion(50)
  # Data mostly outside [-1, 1]: unclipped samples would leave the range.
  eps_fn = _gaussian_eps_fn(diffusion, [0.9, -0.9], [0.5, 0.5])
  for sample in (
      lambda: ancestral_sample(eps_fn, diffusion, jax.random.key(0), (256, 2)),
      lambda: ddim_sample(eps_fn, diffusion, jax.random.key(0), (256, 2),
                          num_steps=10, eta=0.5)):
    images = np.asarray(sample().images)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert np.all(np.isfinite(images))
  unclipped = ancestral_sample(eps_fn, diffusion, jax.random.key(0), (256, 2),
                               clip_denoised=False).images
  assert float(jnp.abs(unclipped).max()) > 1.0


def test_bad_arguments_raise(diffusion):
  eps_fn = _gaussian_eps_fn(diffusion, MU, STD)
  rng = jax.random.key(0)
  bad_ddim = [dict(num_steps=0), dict(num_steps=NUM_TIMESTEPS + 1),
              dict(num_steps=10, eta=-0.1), dict(num_steps=10, step_spacing='log'),
              dict(num_steps=2.5)]
  for kwargs in bad_ddim:
    with pytest.raises(ValueError):
      ddim_sample(eps_fn, diffusion, rng, (2, 2), **kwargs)
  with pytest.raises(ValueError, match='var_type'):
    ancestral_sample(eps_fn, diffusion, rng, (2, 2), var_type='learned')
  with pytest.raises(ValueError, match='shape'):
    ancestral_sample(eps_fn, diffusion, rng, (0, 2))


@pytest.mark.parametrize('sampler, kwargs', [
    (ancestral_sample, {}), (ddim_sample, dict(num_steps=20)),
    (ddim_sample, dict(num_steps=20, eta=1.0))])
def test_x_init_is_the_draw_the_sampler_makes(diffusion, sampler, kwargs):
  """x_T drawn by the sampler (split(rng)[0]) and passed as x_init give the same samples;
  another x_T changes them; DDIM with eta = 0 then ignores its rng."""
  eps_fn = _gaussian_eps_fn(diffusion, MU, STD)
  rng, shape = jax.random.key(5), (4, 2)
  x_t = jax.random.normal(jax.random.split(rng)[0], shape, jnp.float32)
  run = lambda r, **k: np.asarray(sampler(eps_fn, diffusion, r, shape, **kwargs,  # noqa: E731
                                          **k).images)
  own = run(rng)
  np.testing.assert_array_equal(run(rng, x_init=x_t), own)
  assert not np.allclose(run(rng, x_init=-x_t), own)
  if sampler is ddim_sample and not kwargs.get('eta'):
    np.testing.assert_array_equal(run(jax.random.key(6), x_init=x_t), own)
  with pytest.raises(ValueError, match='x_init has shape'):
    run(rng, x_init=jnp.zeros((3, 2)))
