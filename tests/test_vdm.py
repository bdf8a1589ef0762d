"""VDM (Kingma et al. 2021): schedules, bound terms, variance gradient, sampler, training."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import vdm_digits
from datasets import digits
from models import vdm as vdm_models
from train import families, loop
from train import vdm

GAMMA_MIN, GAMMA_MAX = -13.3, 5.0


def tiny_config(schedule="learned", num_timesteps=0):
  config = vdm_digits.get_config()
  config.model.ch = 8
  config.model.num_res_blocks = 1
  config.model.num_groups = 4
  config.vdm.schedule = schedule
  config.vdm.schedule_num_features = 16
  config.vdm.num_timesteps = num_timesteps
  config.optim.warmup_steps = 0
  return config


def digit_batch(n, offset=0):
  images, labels = digits.load_digit_images()
  return {"image": jnp.asarray(images[offset:offset + n]),
          "label": jnp.asarray(labels[offset:offset + n], jnp.int32)}


def fixed_gamma(t):
  return vdm_models.fixed_linear_gamma(t, GAMMA_MIN, GAMMA_MAX)


# ------------------------------------------------------------------ schedules
def test_fixed_linear_gamma_and_its_derivative():
  family = vdm.VDM(tiny_config("fixed_linear"), (8, 8, 1), 10)
  t = jnp.array([0.0, 0.1, 0.5, 0.93, 1.0])
  np.testing.assert_allclose(family.gamma_fn({})(t), -13.3 + 18.3 * np.asarray(t),
                             rtol=1e-6, atol=1e-5)
  values = family.schedule_values({}, t)
  np.testing.assert_allclose(values["dgamma_t"], np.full(5, 18.3), rtol=1e-6)
  assert float(values["gamma_0"]) == pytest.approx(-13.3)
  assert float(values["gamma_1"]) == pytest.approx(5.0)
  # SNR(t) = exp(-gamma): alpha^2 = SNR / (1 + SNR).
  alpha_sq, sigma_sq = vdm.alpha_sigma_sq(jnp.asarray(2.0))
  assert float(alpha_sq) == pytest.approx(math.exp(-2) / (1 + math.exp(-2)))
  assert float(alpha_sq + sigma_sq) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learned_schedule_is_monotone_with_learned_endpoints_for_random_params(seed):
  module = vdm_models.LearnedSchedule(num_features=32)
  params = module.init(jax.random.PRNGKey(seed), jnp.zeros(()))["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(100 + seed), len(leaves))
  # Arbitrary values of every parameter, negative weights and range included.
  params = jax.tree.unflatten(tree, [3.0 * jax.random.normal(k, x.shape)
                                     for k, x in zip(keys, leaves)])
  t = jnp.linspace(0.0, 1.0, 2001)
  gamma = np.asarray(module.apply({"params": params}, t), np.float64)
  span = abs(gamma[-1] - gamma[0])
  assert np.all(np.diff(gamma) >= -1e-5 * span)
  assert gamma[0] == pytest.approx(float(params["gamma_0"]), abs=1e-5)
  assert gamma[-1] == pytest.approx(float(params["gamma_0"] + abs(params["gamma_range"])),
                                    abs=1e-4)
  assert np.ptp(np.diff(gamma)) > 1e-4 * span      # not a straight line


def test_learned_schedule_derivative_matches_finite_differences():
  family = vdm.VDM(tiny_config("learned"), (8, 8, 1), 10)
  params = family.schedule_model.init(jax.random.PRNGKey(0), jnp.zeros(()))["params"]
  params = jax.tree.map(lambda x: x + 0.5 * jnp.ones_like(x), params)
  t = jnp.array([0.2, 0.5, 0.8])
  values = jax.jit(family.schedule_values)(params, t)
  h = 1e-3
  gamma = jax.jit(family.gamma_fn(params))
  finite_diff = (np.asarray(gamma(t + h), np.float64)
                 - np.asarray(gamma(t - h), np.float64)) / (2 * h)
  np.testing.assert_allclose(values["dgamma_t"], finite_diff, rtol=2e-2)
  # The linear learned schedule: a line between its learned endpoints.
  linear = vdm.VDM(tiny_config("learned_linear"), (8, 8, 1), 10)
  lp = {"gamma_0": jnp.asarray(-7.0), "gamma_range": jnp.asarray(-9.0)}   # |range| = 9
  np.testing.assert_allclose(linear.gamma_fn(lp)(t), -7.0 + 9.0 * np.asarray(t),
                             rtol=1e-6)


# ----------------------------------------------------------------- bound terms
def gaussian_posterior_mse(gamma, data_var):
  """E||eps - E[eps|z_t]||^2 per dim for data N(m, v): alpha^2 v / (alpha^2 v + sigma^2)."""
  alpha_sq = 1.0 / (1.0 + np.exp(gamma))
  return alpha_sq * data_var / (alpha_sq * data_var + 1.0 - alpha_sq)


def test_discrete_diffusion_loss_converges_to_the_continuous_loss():
  """Gaussian data with the exact denoiser: L_T = sum over the T grid terms -> L_inf."""
  data_var = 0.3
  # Closed form: 1/2 int gamma' v SNR / (1 + v SNR) dt = 1/2 log((1 + v SNR_max) /
  # (1 + v SNR_min)) per dimension.
  l_inf = 0.5 * (math.log1p(data_var * math.exp(-GAMMA_MIN))
                 - math.log1p(data_var * math.exp(-GAMMA_MAX)))
  gaps = []
  for num_timesteps in (100, 1000, 10000):
    t = vdm.discretize_times(jnp.arange(num_timesteps) / num_timesteps, num_timesteps)
    gamma_t = fixed_gamma(t)
    gamma_s = fixed_gamma(t - 1.0 / num_timesteps)
    mse = jnp.asarray(gaussian_posterior_mse(np.asarray(gamma_t, np.float64), data_var),
                      jnp.float32)
    # The expectation over t uniform on the grid is the mean over the grid.
    l_t = float(jnp.mean(vdm.discrete_diffusion_loss(gamma_s, gamma_t, mse,
                                                     num_timesteps)))
    gaps.append(l_t - l_inf)
  assert gaps[0] > gaps[1] > gaps[2] > 0           # more steps, a tighter bound
  assert gaps[2] < 2e-3 * l_inf
  assert gaps[0] / gaps[1] == pytest.approx(10, rel=0.3)   # O(1/T)
  # The continuous estimator (gamma' from autodiff) averaged over a fine grid.
  family = vdm.VDM(tiny_config("fixed_linear"), (8, 8, 1), 10)
  t = (jnp.arange(20000) + 0.5) / 20000
  values = family.schedule_values({}, t)
  mse = gaussian_posterior_mse(np.asarray(values["gamma_t"], np.float64), data_var)
  l_cont = float(jnp.mean(vdm.continuous_diffusion_loss(values["dgamma_t"],
                                                        jnp.asarray(mse, jnp.float32))))
  assert l_cont == pytest.approx(l_inf, rel=1e-4)


def analytic_eps_fn(score_params, y=None, **unused):
  """A stand-in for the U-Net: the bound's plumbing, not the network, is tested."""
  return lambda z, gamma: 0.7 * z + 0.1 * jnp.tanh(jnp.reshape(gamma, (-1, 1, 1, 1)))


def test_family_discrete_loss_with_many_steps_equals_continuous_loss():
  batch, rng = digit_batch(8), jax.random.PRNGKey(3)
  params = {"score": {}, "schedule": {}}
  out = {}
  for num_timesteps in (0, 1000, 10_000):
    family = vdm.VDM(tiny_config("fixed_linear", num_timesteps), (8, 8, 1), 10)
    family.eps_fn = analytic_eps_fn
    out[num_timesteps] = jax.jit(
        lambda p, b, r: family.per_example_terms(p, b, r, train=False))(params, batch, rng)
  # Same times (up to the grid) and noise: the single-sample losses agree to O(1/T).
  gap = {n: np.max(np.abs(out[n]["diffusion"] / out[0]["diffusion"] - 1))
         for n in (1000, 10_000)}
  assert gap[10_000] < 2e-3 and gap[1000] > 4 * gap[10_000]
  np.testing.assert_allclose(out[0]["prior"], out[10_000]["prior"], rtol=1e-6)


def test_prior_kl_matches_numerical_integration():
  f = jnp.array([[-0.99, -0.2, 0.0, 0.5, 0.99]])
  for gamma_1 in (-1.0, 2.0, 5.0):
    alpha = math.sqrt(1 / (1 + math.exp(gamma_1)))
    sigma = math.sqrt(1 / (1 + math.exp(-gamma_1)))
    x = np.linspace(-12, 12, 200_001)
    expected = 0.0
    for fi in np.asarray(f[0], np.float64):
      log_q = -0.5 * ((x - alpha * fi) / sigma)**2 - math.log(sigma * math.sqrt(2 * math.pi))
      log_p = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
      expected += np.trapezoid(np.exp(log_q) * (log_q - log_p), x)
    assert float(vdm.prior_kl(f, jnp.asarray(gamma_1))[0]) == pytest.approx(expected,
                                                                           rel=1e-4)


def test_decoder_is_a_distribution_over_the_256_levels():
  z = jnp.array([-1.2, -0.3, 0.0, 0.0137, 0.7, 1.1])
  for gamma_0 in (-13.3, -6.0, 0.0):
    log_probs = np.asarray(vdm.decoder_log_probs(z, jnp.asarray(gamma_0)), np.float64)
    assert log_probs.shape == (6, 256)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
    # Independent: Gaussian density at the level centres, normalised by hand.
    centres = (2 * (np.arange(256) + 0.5) / 256 - 1)
    dens = np.exp(-0.5 * (np.asarray(z, np.float64)[:, None] - centres)**2
                  / math.exp(gamma_0) + 0.0)
    if gamma_0 > -10:   # (at -13.3 the far levels underflow in float64 too)
      np.testing.assert_allclose(np.exp(log_probs), dens / dens.sum(-1, keepdims=True),
                                 atol=1e-5)
  # With almost no noise the level under z_0 has all the mass: recon loss ~ 0.
  images = jnp.array([[[[0], [37], [255]]]], jnp.uint8)
  centres = vdm.scale_images(images)
  assert float(vdm.reconstruction_log_likelihood(images, centres,
                                                 jnp.asarray(-13.3))[0]) > -1e-5
  assert float(vdm.scale_images(jnp.array([0]))[0]) == pytest.approx(-1 + 1 / 256)


def test_antithetic_times_are_stratified():
  for seed in range(5):
    t = np.asarray(vdm.antithetic_times(jax.random.PRNGKey(seed), 16))
    assert np.all((t >= 0) & (t < 1))
    np.testing.assert_array_equal(np.sort(np.floor(t * 16)), np.arange(16))
  t = np.asarray(vdm.discretize_times(jnp.array([0.0, 1e-6, 0.5, 0.50001, 0.999]), 10))
  np.testing.assert_allclose(t, [0.1, 0.1, 0.5, 0.6, 1.0], rtol=1e-6)


# ------------------------------------------------------- learned-schedule gradient
def test_schedule_shape_gets_the_variance_gradient_and_the_rest_the_bound(fast_compile):
  config = tiny_config("learned")
  config.model.num_res_blocks = 0     # the middle blocks only: a smaller graph to compile
  family = vdm.VDM(config, (8, 8, 1), 10)
  batch, rng = digit_batch(4), jax.random.PRNGKey(7)
  params = family.init(jax.random.PRNGKey(0), batch).params
  to_bpd = 1 / (64 * math.log(2))

  def terms(p):
    return family.per_example_terms(p, batch, rng, train=True)

  def mean_bpd(p):
    return sum(jnp.mean(v) for v in terms(p).values()) * to_bpd

  def mean_squared_diffusion_bpd(schedule):
    p = {"score": params["score"], "schedule": schedule}
    return jnp.mean(jnp.square(terms(p)["diffusion"] * to_bpd))

  metrics, grads = jax.jit(family.loss_and_grads)(params, batch, rng)
  vlb_grads, var_grads = jax.jit(
      lambda p: (jax.grad(mean_bpd)(p), jax.grad(mean_squared_diffusion_bpd)(p["schedule"])))(
          params)
  assert float(metrics["bpd_vlb"]) == pytest.approx(float(mean_bpd(params)), rel=1e-5)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-7)  # noqa: E731
  jax.tree.map(close, grads["score"], vlb_grads["score"])
  for name in ("gamma_0", "gamma_range"):
    close(grads["schedule"][name], vlb_grads["schedule"][name])
    assert float(jnp.abs(grads["schedule"][name])) > 0
  for name in ("l1", "l2", "l3"):
    jax.tree.map(close, grads["schedule"][name], var_grads[name])
  # ... which is not the bound's gradient (else this test could not tell them apart).
  assert not np.allclose(grads["schedule"]["l2"]["kernel"],
                         vlb_grads["schedule"]["l2"]["kernel"], rtol=0.1)


# -------------------------------------------------------------------- sampling
def test_ancestral_sampler_with_the_exact_denoiser_reproduces_gaussian_data():
  data_mean, data_var, num_steps = 0.3, 0.2, 1000

  def exact_eps(z, gamma):   # E[eps | z_t] for x ~ N(m, v)
    alpha_sq, sigma_sq = vdm.alpha_sigma_sq(gamma)
    return (jnp.sqrt(sigma_sq) * (z - jnp.sqrt(alpha_sq) * data_mean)
            / (alpha_sq * data_var + sigma_sq))

  z0 = jax.jit(lambda r: vdm.ancestral_sample(exact_eps, fixed_gamma, r, (65536, 4),
                                              num_steps))(jax.random.PRNGKey(0))
  alpha_0 = math.sqrt(1 / (1 + math.exp(GAMMA_MIN)))
  x = np.asarray(z0, np.float64).ravel() / alpha_0
  # Independent: the sampler is linear-Gaussian here; propagate mean and variance.
  g = lambda t: GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * t  # noqa: E731
  mean, var = 0.0, 1.0
  for i in range(num_steps):
    gt, gs = g((num_steps - i) / num_steps), g((num_steps - i - 1) / num_steps)
    at2, st2 = 1 / (1 + math.exp(gt)), 1 / (1 + math.exp(-gt))
    as2, ss2 = 1 / (1 + math.exp(gs)), 1 / (1 + math.exp(-gs))
    c = -math.expm1(gs - gt)
    k = math.sqrt(st2) / (at2 * data_var + st2)
    a = math.sqrt(as2 / at2)
    # z_s = a (z_t - sigma_t c eps_hat) + noise, eps_hat = k (z_t - alpha_t m).
    gain = a * (1 - math.sqrt(st2) * c * k)
    mean = gain * mean + a * math.sqrt(st2) * c * k * math.sqrt(at2) * data_mean
    var = gain**2 * var + ss2 * c
  mean, var = mean / alpha_0, var / alpha_0**2
  n = x.size
  assert x.mean() == pytest.approx(mean, abs=4 * math.sqrt(var / n))
  assert x.var() == pytest.approx(var, rel=4 * math.sqrt(2 / n))
  # ... and the data distribution itself, up to the O(1/N) variance deficit of
  # plug-in ancestral sampling (0.9% at N = 1000; 4.4% at N = 200).
  assert x.mean() == pytest.approx(data_mean, abs=0.005)
  assert x.var() == pytest.approx(data_var, rel=0.02)


# -------------------------------------------------------------------- training
@pytest.mark.integration
def test_short_digits_training_lowers_the_bound(fast_compile):
  config = tiny_config("learned")
  config.optim.learning_rate = 2e-3
  config.optim.ema_decay = 0.0
  config.vdm.eval_num_times = 4
  family = vdm.VDM(config, (8, 8, 1), 10)
  train, test = digit_batch(512), digit_batch(64, offset=1600)
  state = family.init(jax.random.PRNGKey(0), train)
  eval_fn = jax.jit(family.eval_step)
  before = eval_fn(state.params, test, jax.random.PRNGKey(1))
  step = jax.jit(family.train_step)
  for i in range(40):
    lo = (i * 32) % 512
    state, metrics = step(state, {k: v[lo:lo + 32] for k, v in train.items()})
  after = eval_fn(state.params, test, jax.random.PRNGKey(1))
  assert np.isfinite(float(metrics["loss"]))
  assert float(after["bpd_vlb"].mean()) < 0.8 * float(before["bpd_vlb"].mean())
  np.testing.assert_allclose(after["bpd_vlb"], after["diffusion_bpd"]
                             + after["prior_bpd"] + after["recon_bpd"], rtol=1e-5)
  family.config.sampling.num_steps = 3
  samples = jax.jit(family.sample, static_argnums=2)(state.params, jax.random.PRNGKey(2), 2)
  assert samples.shape == (2, 8, 8, 1) and samples.dtype == jnp.uint8
  assert family.sampler_settings()["nfe"] == 3
  # The learned endpoints moved and stayed ordered.
  gamma_0, gamma_1 = float(metrics["gamma_0"]), float(metrics["gamma_1"])
  assert gamma_0 < gamma_1 and (gamma_0, gamma_1) != (GAMMA_MIN, GAMMA_MAX)


@pytest.mark.slow   # tests/test_configs.py trains vdm_* through the loop as well
def test_loop_trains_evaluates_and_samples_vdm(tmp_path, monkeypatch, fast_compile):
  monkeypatch.setitem(families.FAMILIES, "vdm", vdm.VDM)
  config = vdm_digits.get_config("runlocal")
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.model.ch, config.model.num_res_blocks, config.model.num_groups = 8, 1, 4
  t = config.training
  t.batch_size, t.num_train_steps, t.log_every_steps = 8, 2, 1
  t.checkpoint_every_steps, t.sample_every_steps = 2, 2
  t.async_checkpointing = False
  config.sampling.num_steps = 4
  config.sampling.batch_size = 4
  config.eval.num_eval_examples, config.eval.batch_size = 8, 8
  config.eval.sample_metrics = "none"
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  result = json.load(open(tmp_path / "eval" / "step_00000002.json"))
  assert np.isfinite(result["bpd_vlb"]) and result["num_examples"] == 8


def test_bad_config_values_raise_before_compiling():
  for field, value in (("schedule", "cosine"), ("schedule_gradient", "x"),
                       ("num_timesteps", -1), ("gamma_min", 6.0)):
    config = tiny_config()
    config.vdm[field] = value
    with pytest.raises(ValueError, match=field):
      vdm.VDM(config, (8, 8, 1), 10)
  config = tiny_config()
  config.sampling.num_steps = 0
  with pytest.raises(ValueError, match="num_steps"):
    vdm.VDM(config, (8, 8, 1), 10)


def test_bound_terms_is_a_pure_function_of_the_noise():
  """With the noise passed in: a perfect eps predictor has zero diffusion loss; a zero
  predictor pays 1/2 gamma'(t) ||eps||^2 (eq. 17) or T/2 expm1(gamma_t - gamma_s)
  ||eps||^2 (eq. 13); the prior and reconstruction terms do not see eps."""
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 2, 2, 1)), jnp.uint8)
  eps_0 = jax.random.normal(jax.random.key(1), images.shape)
  eps = jax.random.normal(jax.random.key(2), images.shape)
  values = dict(gamma_0=jnp.float32(-5.0), gamma_1=jnp.float32(6.0),
                gamma_t=jnp.array([-1.0, 0.5, 2.0]), dgamma_t=jnp.array([11.0, 11.0, 11.0]))
  norm = np.sum(np.square(np.asarray(eps)), axis=(1, 2, 3))
  perfect = vdm.bound_terms(lambda z, g: eps, images, values, eps_0, eps)
  np.testing.assert_allclose(perfect["diffusion"], 0.0, atol=1e-6)
  zero = vdm.bound_terms(lambda z, g: jnp.zeros_like(z), images, values, eps_0, eps)
  np.testing.assert_allclose(zero["diffusion"], 0.5 * 11.0 * norm, rtol=1e-5)
  for key in ("prior", "recon"):
    np.testing.assert_array_equal(perfect[key], zero[key])
  discrete = dict(values, gamma_s=values["gamma_t"] - 0.1)
  del discrete["dgamma_t"]
  out = vdm.bound_terms(lambda z, g: jnp.zeros_like(z), images, discrete, eps_0, eps,
                            num_timesteps=10)
  np.testing.assert_allclose(out["diffusion"], 0.5 * 10 * np.expm1(0.1) * norm, rtol=1e-5)
  with pytest.raises(ValueError, match="num_timesteps"):
    vdm.bound_terms(lambda z, g: z, images, discrete, eps_0, eps)
