"""Improved DDPM (Nichol & Dhariwal 2021): cosine schedule, learned variances,
L_hybrid / L_vlb with importance-sampled timesteps, respaced sampling.

Every formula is checked against an independent computation: numpy closed forms,
brute-force loops and enumeration over t.
"""
import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import iddpm_cifar, iddpm_digits
from datasets import transforms
from evaluation import ddpm_likelihood
from models import diffusion as diffusion_lib
from sampling import ddpm as ddpm_sampling
from train import ddpm as ddpm_family


def _cosine(num_timesteps):
  return diffusion_lib.get_beta_schedule(
      'cosine', beta_start=0.0, beta_end=0.0, num_timesteps=num_timesteps)


def _np_process(betas):
  """(alphas_cumprod, posterior variance beta-tilde) in float64 numpy."""
  abar = np.cumprod(1.0 - np.asarray(betas, np.float64))
  abar_prev = np.append(1.0, abar[:-1])
  return abar, betas * (1.0 - abar_prev) / (1.0 - abar)


# ------------------------------------------------------------- cosine schedule


def test_cosine_alphas_cumprod_is_eq17_with_beta_capped_at_0999():
  num_timesteps, s = 4000, 0.008
  betas = _cosine(num_timesteps)
  # eq. 17: abar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) pi / 2);
  # 0-based index i is the paper's t = i + 1.
  f = lambda t: np.cos((t / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
  paper_abar = f(np.arange(1, num_timesteps + 1)) / f(0.0)
  paper_betas = 1.0 - paper_abar / np.append(1.0, paper_abar[:-1])
  capped = paper_betas > 0.999
  assert capped.sum() == 1 and capped[-1]  # f(T) = 0 gives beta_T = 1: capped
  np.testing.assert_allclose(betas[~capped], paper_betas[~capped], rtol=1e-9)
  assert betas[-1] == 0.999
  abar = np.cumprod(1.0 - betas)
  np.testing.assert_allclose(abar[:-1], paper_abar[:-1], rtol=1e-9, atol=1e-15)


# ------------------------------------------------------------ learned variances


def test_learned_range_endpoints_and_log_space_midpoint():
  betas = _cosine(50)
  diffusion = diffusion_lib.GaussianDiffusion.from_betas(betas)
  _, beta_tilde = _np_process(betas)
  beta_tilde_clipped = np.append(beta_tilde[1], beta_tilde[1:])  # t = 0: no var
  t = jnp.arange(50)
  x_shape = (50, 2, 2, 3)

  def variance(v):
    log_var = diffusion.learned_range_log_variance(jnp.full(x_shape, v), t)
    return np.exp(np.asarray(log_var, np.float64))[:, 0, 0, 0]

  np.testing.assert_allclose(variance(-1.0), beta_tilde_clipped, rtol=1e-5)
  np.testing.assert_allclose(variance(1.0), betas, rtol=1e-5)
  # v = 0: halfway in log space, the geometric mean sqrt(beta beta-tilde).
  np.testing.assert_allclose(
      variance(0.0), np.sqrt(betas * beta_tilde_clipped), rtol=1e-5)
  # eq. 15 at v = 0.5 (frac 0.75): beta^0.75 beta-tilde^0.25.
  np.testing.assert_allclose(
      variance(0.5), betas**0.75 * beta_tilde_clipped**0.25, rtol=1e-5)


def test_p_mean_variance_learned_range_splits_eps_and_v():
  diffusion = diffusion_lib.GaussianDiffusion.from_betas(_cosine(20))
  rng = np.random.default_rng(0)
  x_t = jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.float32)
  eps = jnp.asarray(rng.normal(size=x_t.shape), jnp.float32)
  v = jnp.asarray(rng.uniform(-1, 1, size=x_t.shape), jnp.float32)
  t = jnp.array([0, 7, 19])
  mean, var, log_var, x0 = diffusion.p_mean_variance(
      jnp.concatenate([eps, v], -1), x_t, t, var_type='learned_range')
  fixed_mean, _, _, fixed_x0 = diffusion.p_mean_variance(eps, x_t, t)
  np.testing.assert_allclose(mean, fixed_mean, rtol=1e-6)  # the mean ignores v
  np.testing.assert_allclose(x0, fixed_x0, rtol=1e-6)
  np.testing.assert_allclose(
      log_var, diffusion.learned_range_log_variance(v, t), rtol=1e-6)
  np.testing.assert_allclose(var, np.exp(log_var), rtol=1e-6)
  with pytest.raises(ValueError, match='2C channels'):
    diffusion.p_mean_variance(eps, x_t, t, var_type='learned_range')
  with pytest.raises(ValueError, match='2C channels'):
    diffusion.p_mean_variance(jnp.concatenate([eps, v], -1), x_t, t)


# ---------------------------------------------------------------- the L_vlb terms


def _tiny_config(loss='hybrid', var_type='learned_range', num_timesteps=10, **diffusion):
  config = iddpm_digits.get_config('runlocal')
  config.model.ch = 8
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = ()
  config.model.num_groups = 4
  config.diffusion.num_timesteps = num_timesteps
  config.diffusion.var_type = var_type
  config.diffusion.loss = loss
  for k, v in diffusion.items():
    config.diffusion[k] = v
  config.sampling.num_steps = None
  return config


def _digit_images(batch_size, seed=0):
  from sklearn.datasets import load_digits
  images = load_digits().images  # [1797, 8, 8] levels 0..16
  rows = np.random.default_rng(seed).choice(len(images), batch_size, replace=False)
  return jnp.asarray(np.round(images[rows] * 255 / 16)[..., None], jnp.uint8)


# fixedlarge: the integration tier (learned_range checks the same term in the default one).
@pytest.mark.parametrize('var_type', [
    pytest.param('fixedlarge', marks=pytest.mark.integration), 'learned_range'])
def test_hybrid_vlb_term_equals_the_bits_per_dim_evaluation(var_type, fast_compile):
  """loss_terms' L_t equals the foundation's vlb_bpd term for every t."""
  family = ddpm_family.DDPM(_tiny_config('hybrid', var_type), (8, 8, 1), 10)
  images = _digit_images(4)
  batch = {'image': images, 'label': jnp.zeros((4,), jnp.int32)}
  params = family.init(jax.random.key(0), batch).params
  # A perturbed network, so that eps and v are not the zero init.
  params = jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape), params)
  rng = jax.random.key(3)
  reference = jax.jit(lambda p: ddpm_likelihood.vlb_bpd(
      family.eps_fn(p), family.diffusion, images, rng, var_type=var_type,
      timestep_chunk=10)['terms_bpd'])(params)
  x0 = transforms.uint8_to_centered(images)

  @jax.jit
  def terms_at(t):
    noise = jax.random.normal(jax.random.fold_in(rng, t), x0.shape)  # as vlb_bpd
    return family.loss_terms(params, x0, jnp.full((4,), t, jnp.int32), noise)

  terms = jax.vmap(terms_at)(jnp.arange(10))
  np.testing.assert_allclose(terms['vb'].T, reference, rtol=2e-5, atol=1e-6)
  # L_hybrid = L_simple + lambda T L_t (eq. 16; T L_t estimates L_vlb).
  np.testing.assert_allclose(
      terms['loss'], terms['mse'] + 0.001 * 10 * terms['vb'], rtol=1e-6)


def test_hybrid_vlb_term_trains_only_the_variance(fast_compile):
  """Stop-gradient of eq. 16: the L_vlb part moves no eps output weight."""
  family = ddpm_family.DDPM(_tiny_config('hybrid'), (8, 8, 1), 10)
  images = _digit_images(4)
  params = family.init(jax.random.key(0), {'image': images}).params
  params = jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape), params)
  x0 = transforms.uint8_to_centered(images)
  noise = jax.random.normal(jax.random.key(5), x0.shape)
  t = jnp.array([0, 3, 6, 9])

  @jax.jit
  def grads(p):
    """Gradients of L_simple (the mse term) and of L_hybrid."""
    return jax.jacrev(lambda q: {k: jnp.mean(v) for k, v in
                                 family.loss_terms(q, x0, t, noise).items()})(p)

  g = grads(params)
  kernel_simple = g['mse']['conv_out']['kernel']  # [3, 3, in, 2C]
  kernel_hybrid = g['loss']['conv_out']['kernel']
  # eps channels (first C): identical gradients; v channels: only L_vlb's.
  np.testing.assert_allclose(kernel_hybrid[..., :1], kernel_simple[..., :1],
                             rtol=1e-5, atol=1e-9)
  np.testing.assert_array_equal(kernel_simple[..., 1:], 0.0)
  assert float(jnp.abs(kernel_hybrid[..., 1:]).max()) > 0.0
  # The vb term alone gives the eps channels nothing, the v channels all.
  np.testing.assert_array_equal(g['vb']['conv_out']['kernel'][..., :1], 0.0)


# ----------------------------------------------------- importance sampling of t


def test_timestep_probabilities_are_eq18_once_the_history_is_full():
  num_timesteps, size = 7, 10
  history = np.random.default_rng(1).exponential(size=(num_timesteps, size))
  full = np.full(num_timesteps, size)
  rms = np.array([math.sqrt(sum(x * x for x in row) / size) for row in history])
  for uniform_prob in (0.0, 0.001):
    probs = ddpm_family.timestep_probabilities(
        jnp.asarray(history, jnp.float32), jnp.asarray(full), uniform_prob)
    expected = (1 - uniform_prob) * rms / rms.sum() + uniform_prob / num_timesteps
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
  # Uniform while any timestep's history is not yet full.
  almost = full.copy()
  almost[3] = size - 1
  probs = ddpm_family.timestep_probabilities(
      jnp.asarray(history, jnp.float32), jnp.asarray(almost), 0.0)
  np.testing.assert_allclose(probs, np.full(num_timesteps, 1 / num_timesteps), rtol=1e-6)


def test_importance_weighted_loss_is_unbiased_by_enumeration():
  num_timesteps = 5
  rng = np.random.default_rng(2)
  history = jnp.asarray(rng.exponential(size=(num_timesteps, 3)), jnp.float32)
  probs = ddpm_family.timestep_probabilities(
      history, jnp.full((num_timesteps,), 3), 0.001)
  losses = rng.exponential(size=num_timesteps)
  weights = np.asarray(ddpm_family.importance_weights(probs, jnp.arange(num_timesteps)))
  # E_{t ~ p}[w_t L_t], summed exactly over the T values of t.
  expectation = sum(float(probs[t]) * weights[t] * losses[t] for t in range(num_timesteps))
  assert expectation == pytest.approx(losses.mean(), rel=1e-6)
  # The sampler draws t with these probabilities.
  t, w = ddpm_family.sample_timesteps(jax.random.key(0), probs, 40_000)
  freq = np.bincount(np.asarray(t), minlength=num_timesteps) / 40_000
  np.testing.assert_allclose(freq, probs, atol=0.01)
  np.testing.assert_allclose(w, weights[np.asarray(t)], rtol=1e-6)


def test_loss_history_update_matches_a_deque_per_timestep():
  num_timesteps, size = 4, 3
  rng = np.random.default_rng(3)
  t = rng.integers(0, num_timesteps, size=25)
  losses = rng.normal(size=25)
  queues = [collections.deque(maxlen=size) for _ in range(num_timesteps)]
  state = ddpm_family.init_loss_history(num_timesteps, size)
  history, counts = state['loss_history'], state['loss_counts']
  for start in range(0, 25, 5):  # five batches of five, in order
    for i in range(start, start + 5):
      queues[t[i]].append(losses[i])
    history, counts = ddpm_family.update_loss_history(
        history, counts, jnp.asarray(t[start:start + 5]),
        jnp.asarray(losses[start:start + 5], jnp.float32))
  for k, queue in enumerate(queues):
    assert int(counts[k]) == len(queue)
    np.testing.assert_allclose(history[k, :len(queue)], list(queue), rtol=1e-6)


def test_vlb_loss_with_importance_sampling_trains_and_warms_up(fast_compile):
  config = _tiny_config('vlb', num_timesteps=4, timestep_sampler='loss_second_moment',
                        loss_history_size=2)
  family = ddpm_family.DDPM(config, (8, 8, 1), 10)
  batch = {'image': _digit_images(16), 'label': jnp.zeros((16,), jnp.int32)}
  state = family.init(jax.random.key(0), batch)
  step = jax.jit(family.train_step)
  warm = []
  for _ in range(3):
    state, metrics = step(state, batch)
    warm.append(float(metrics['timestep_sampler_warm']))
    assert np.isfinite(float(metrics['loss']))
  assert warm[-1] == 1.0
  np.testing.assert_array_equal(state.model_state['loss_counts'], 2)
  # Once warm, the probabilities follow the recorded history (eq. 18).
  probs = ddpm_family.timestep_probabilities(
      state.model_state['loss_history'], state.model_state['loss_counts'], 0.001)
  assert not np.allclose(probs, 0.25)


# ------------------------------------------------------------------- respacing


def test_respacing_with_all_steps_is_the_original_schedule():
  betas = _cosine(300)
  kept = diffusion_lib.respaced_timesteps(300, 300, 'uniform')
  np.testing.assert_array_equal(kept, np.arange(300))
  np.testing.assert_allclose(diffusion_lib.respace_betas(betas, kept), betas, rtol=1e-10)
  respaced = diffusion_lib.respaced_diffusion(betas, kept)
  original = diffusion_lib.GaussianDiffusion.from_betas(betas)
  for a, b in zip(jax.tree.leaves(respaced), jax.tree.leaves(original)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_respaced_process_keeps_alphas_cumprod_at_the_kept_steps():
  betas = _cosine(1000)
  abar, _ = _np_process(betas)
  kept = diffusion_lib.respaced_timesteps(1000, 25, 'uniform')
  assert kept.shape == (25,) and kept[0] == 0 and kept[-1] == 999
  respaced = diffusion_lib.respaced_diffusion(betas, kept)
  np.testing.assert_allclose(respaced.alphas_cumprod, abar[kept], rtol=1e-5)
  # Learned variances on the respaced process: v = 1 is the respaced beta
  # 1 - abar_{t_i} / abar_{t_{i-1}}, v = -1 its posterior variance.
  kept_abar = abar[kept]
  kept_abar_prev = np.append(1.0, kept_abar[:-1])
  beta_k = 1.0 - kept_abar / kept_abar_prev
  beta_tilde_k = beta_k * (1.0 - kept_abar_prev) / (1.0 - kept_abar)
  t = jnp.arange(1, 25)
  for v, expected in ((1.0, beta_k[1:]), (-1.0, beta_tilde_k[1:])):
    log_var = respaced.learned_range_log_variance(jnp.full((24, 1), v), t)
    np.testing.assert_allclose(np.exp(log_var[:, 0]), expected, rtol=2e-5)


def test_section_respacing_keeps_the_hand_computed_steps():
  # T = 100 in sections of 34, 33, 33 steps; strides 33/9, 32/9 and 32/4,
  # rounded half to even from each section's start.
  expected = [0, 4, 7, 11, 15, 18, 22, 26, 29, 33,
              34, 38, 41, 45, 48, 52, 55, 59, 62, 66,
              67, 75, 83, 91, 99]
  kept = diffusion_lib.respaced_timesteps(100, None, '10,10,5')
  np.testing.assert_array_equal(kept, expected)
  with pytest.raises(ValueError, match='num_steps'):
    diffusion_lib.respaced_timesteps(100, 20, '10,10,5')
  with pytest.raises(ValueError, match='respacing'):
    diffusion_lib.respaced_timesteps(100, None, 'ten')
  with pytest.raises(ValueError, match='section 2'):
    diffusion_lib.respaced_timesteps(10, None, '1,1,5')


def _toy_output_fn(x, t):
  """A fixed, t-dependent [eps, v] map: exercises both halves without a network."""
  t = t.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.concatenate([0.3 * jnp.sin(x + 0.01 * t), jnp.tanh(x - 0.002 * t)], -1)


def test_respaced_ancestral_with_all_steps_equals_plain_sampling():
  betas = _cosine(30)
  shape, rng = (4, 2, 2, 1), jax.random.key(7)
  plain = ddpm_sampling.ancestral_sample(
      _toy_output_fn, diffusion_lib.GaussianDiffusion.from_betas(betas), rng, shape,
      var_type='learned_range', clip_denoised=False)
  kept = np.arange(30)
  respaced = ddpm_sampling.ancestral_sample(
      _toy_output_fn, diffusion_lib.respaced_diffusion(betas, kept), rng, shape,
      var_type='learned_range', clip_denoised=False, timestep_map=kept)
  np.testing.assert_allclose(respaced.images, plain.images, rtol=1e-4, atol=1e-5)


def test_ddim_on_the_respaced_process_is_ddim_on_the_subsequence():
  """DDIM only reads abar at the visited steps, so both routes must agree."""
  betas = _cosine(40)
  shape, rng = (3, 2, 2, 1), jax.random.key(8)
  kept = ddpm_sampling.ddim_timesteps(40, 8, 'uniform')  # 0, 5, ..., 35
  calls = []

  def output_fn(x, t):
    calls.append(t)
    return _toy_output_fn(x, t)

  direct = ddpm_sampling.ddim_sample(
      output_fn, diffusion_lib.GaussianDiffusion.from_betas(betas), rng, shape,
      num_steps=8, eta=0.5)
  respaced = ddpm_sampling.ddim_sample(
      output_fn, diffusion_lib.respaced_diffusion(betas, kept), rng, shape,
      num_steps=8, eta=0.5, timestep_map=kept)
  assert direct.nfe == respaced.nfe == 8
  np.testing.assert_allclose(respaced.images, direct.images, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='timestep_map'):
    ddpm_sampling.ddim_sample(
        output_fn, diffusion_lib.respaced_diffusion(betas, kept), rng, shape,
        num_steps=8, timestep_map=kept[:-1])


# ----------------------------------------------------------- the family, end to end


@pytest.mark.parametrize('method', ['ancestral', 'ddim'])
def test_learned_variance_family_samples_with_respacing(method, fast_compile):
  config = _tiny_config('hybrid', num_timesteps=40)
  config.sampling.num_steps = 5
  config.sampling.method = method
  family = ddpm_family.DDPM(config, (8, 8, 1), 10)
  params = family.init(jax.random.key(0), {'image': _digit_images(1)}).params
  images = jax.jit(family.sample, static_argnums=2)(params, jax.random.key(1), 3)
  assert images.dtype == jnp.uint8 and images.shape == (3, 8, 8, 1)
  settings = family.sampler_settings()
  assert settings['nfe'] == settings['num_steps'] == 5
  assert settings['sampler'] == method


# fixedlarge also trains and samples end to end: the integration tier.
@pytest.mark.parametrize('var_type', [
    pytest.param('fixedlarge', marks=pytest.mark.integration), 'learned_range'])
def test_v_prediction_eps_and_loss_follow_the_definition_of_v(var_type, fast_compile):
  """v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022): the exact v gives
  back the exact eps; the loss is ||v - v_theta||^2, i.e. the eps error / abar_t."""
  family = ddpm_family.DDPM(_tiny_config('hybrid', var_type, prediction='v'),
                            (8, 8, 1), 10)
  x0 = transforms.uint8_to_centered(_digit_images(4))
  noise = jax.random.normal(jax.random.key(5), x0.shape)
  t = jnp.asarray([0, 3, 6, 9])
  abar = np.asarray(family.diffusion.alphas_cumprod, np.float64)[np.asarray(t)]
  a, b = (np.sqrt(abar)[:, None, None, None], np.sqrt(1 - abar)[:, None, None, None])
  x_t = a * np.asarray(x0) + b * np.asarray(noise)
  v_true = a * np.asarray(noise) - b * np.asarray(x0)
  extra = np.full(x0.shape, 0.3, np.float32)   # learned-variance channels pass through
  output = v_true if var_type == 'fixedlarge' else np.concatenate([v_true, extra], -1)
  eps = family.eps_from_v(jnp.asarray(output, jnp.float32), jnp.asarray(x_t, jnp.float32), t)
  np.testing.assert_allclose(eps[..., :1], noise, atol=2e-5)
  if var_type != 'fixedlarge':
    np.testing.assert_array_equal(eps[..., 1:], extra)

  params = family.init(jax.random.key(0), {'image': _digit_images(1)}).params
  params = jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape), params)
  terms = jax.jit(family.loss_terms)(params, x0, t, noise)
  x_t32 = jnp.asarray(x_t, jnp.float32)
  raw = family._network_fn(params)(x_t32, t)[..., :1]   # the network, t rescaled
  want_v = np.mean((np.asarray(raw, np.float64) - v_true) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(terms['mse'], want_v, rtol=1e-4)
  eps_theta = family.eps_fn(params)(x_t32, t)[..., :1]
  want_eps = np.mean((np.asarray(eps_theta, np.float64) - np.asarray(noise)) ** 2,
                     axis=(1, 2, 3)) / abar
  np.testing.assert_allclose(terms['mse'], want_eps, rtol=2e-3)
  if var_type == 'fixedlarge':   # trains and samples end to end
    state = family.init(jax.random.key(0), {'image': _digit_images(4)})
    state, metrics = jax.jit(family.train_step)(state, {'image': _digit_images(4)})
    assert np.isfinite(float(metrics['loss']))
    images = jax.jit(family.sample, static_argnums=2)(state.params, jax.random.key(1), 2)
    assert images.shape == (2, 8, 8, 1) and images.dtype == jnp.uint8


def test_bad_improved_ddpm_settings_raise_before_compiling():
  for field, value in [('loss', 'l2'), ('timestep_sampler', 'sqrt'), ('prediction', 'x0'),
                       ('var_type', 'learned'), ('vlb_weight', -1.0)]:
    config = _tiny_config()
    config.diffusion[field] = value
    with pytest.raises(ValueError, match=field):
      ddpm_family.DDPM(config, (8, 8, 1), 10)
  config = _tiny_config()
  config.sampling.respacing = '3,x'
  with pytest.raises(ValueError, match='respacing'):
    ddpm_family.DDPM(config, (8, 8, 1), 10)
  with pytest.raises(ValueError, match="has no argument 'vlbb'"):
    iddpm_cifar.get_config('vlbb')


def test_configs_carry_the_papers_settings():
  config = iddpm_cifar.get_config()
  d, m = config.diffusion, config.model
  assert (d.num_timesteps, d.beta_schedule, d.var_type, d.loss, d.vlb_weight) == (
      4000, 'cosine', 'learned_range', 'hybrid', 0.001)
  assert (m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.dropout) == (
      128, (1, 2, 2, 2), 3, (16, 8), 0.3)
  assert (config.optim.learning_rate, config.training.batch_size,
          config.training.num_train_steps) == (1e-4, 128, 500_000)
  vlb = iddpm_cifar.get_config('vlb').diffusion
  assert (vlb.loss, vlb.timestep_sampler, vlb.loss_history_size) == (
      'vlb', 'loss_second_moment', 10)
  # The parameter count stated in the docstring (eval_shape: nothing is allocated).
  family = ddpm_family.DDPM(config, (32, 32, 3), 10)
  shapes = jax.eval_shape(
      lambda: family.model.init({'params': jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)),
                                jnp.zeros((1,), jnp.int32), train=False))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 52_546_438


@pytest.mark.integration
def test_short_hybrid_digits_run_decreases_the_loss(fast_compile):
  config = _tiny_config('hybrid', num_timesteps=40)
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 0
  family = ddpm_family.DDPM(config, (8, 8, 1), 10)
  images = _digit_images(256, seed=1)
  state = family.init(jax.random.key(0), {'image': images[:1]})
  step = jax.jit(family.train_step)
  losses = []
  for i in range(24):
    state, metrics = step(state, {'image': images[(i % 8) * 32:(i % 8 + 1) * 32]})
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses)) and np.isfinite(float(metrics['vb_bpd']))
  # Same 8 batches in both windows, so the drop is not a change of data.
  assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses


def test_loss_terms_is_a_pure_function_of_output_targets_and_noise():
  """Without a config or a network: the true eps (or v) has zero L_simple; L_hybrid
  adds lambda T L_t of the bound (eq. 16) and L_vlb is T L_t, with L_t the bound's
  term of the same output."""
  diffusion = diffusion_lib.GaussianDiffusion.from_betas(np.linspace(1e-3, 0.2, 50))
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 2)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  t = jnp.array([0, 17, 49])
  simple = ddpm_family.loss_terms(noise, diffusion, x0, t, noise, var_type="fixedlarge")
  np.testing.assert_allclose(simple["loss"], 0.0, atol=1e-12)
  a, b = diffusion.signal_noise_scales(t, x0.ndim)
  v = a * noise - b * x0
  v_terms = ddpm_family.loss_terms(v, diffusion, x0, t, noise, var_type="fixedlarge",
                                   prediction="v")
  np.testing.assert_allclose(v_terms["mse"], 0.0, atol=1e-10)
  x_t = diffusion.q_sample(x0, t, noise)
  np.testing.assert_allclose(
      ddpm_family.eps_from_v(v, x_t, t, diffusion, 2), noise, atol=2e-5)
  raw = jnp.concatenate([noise, jnp.full(x0.shape, 0.3)], axis=-1)   # [eps, v]
  bound = diffusion_lib.vb_terms_bpd(raw, diffusion, x0, x_t, t, var_type="learned_range",
                                     clip_denoised=False)
  hybrid = ddpm_family.loss_terms(raw, diffusion, x0, t, noise, var_type="learned_range",
                                  loss="hybrid", vlb_weight=0.01)
  np.testing.assert_allclose(hybrid["vb"], bound, rtol=1e-6)
  np.testing.assert_allclose(hybrid["loss"], 0.01 * 50 * bound, rtol=1e-5, atol=1e-10)
  vlb = ddpm_family.loss_terms(raw, diffusion, x0, t, noise, var_type="learned_range",
                               loss="vlb")
  np.testing.assert_allclose(vlb["loss"], 50 * bound, rtol=1e-6)
