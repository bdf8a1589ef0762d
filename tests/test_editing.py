"""Tests for sampling/editing.py with the exact noise prediction of Gaussian data.

For x_0 ~ N(mu, Sigma), x_t = a x_0 + sigma eps (a^2 = abar_t, sigma^2 = 1 - abar_t)
is jointly Gaussian with eps, so the optimal prediction is
E[eps | x_t] = sigma (a^2 Sigma + sigma^2 I)^{-1} (x_t - a mu). Conditional
samplers driven by it must produce the closed-form conditionals, up to the
discretization error of a finite T (the tolerances allow for it, as in
tests/test_sampling_ddpm.py).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.diffusion import VAR_TYPES, GaussianDiffusion, get_beta_schedule
from sampling import editing
from sampling.ddpm import ddim_sample, ddim_timesteps

MU = np.array([0.3, -0.2, 0.1, -0.4])
STD = np.array([0.3, 0.4, 0.25, 0.35])


def _diffusion(num_timesteps=200, kind='linear'):
  # Ho et al.'s linear schedule stretched to T steps, so abar_T ~ 4e-5.
  scale = 1000 / num_timesteps
  return GaussianDiffusion.from_betas(get_beta_schedule(
      kind, beta_start=1e-4 * scale, beta_end=0.02 * scale,
      num_timesteps=num_timesteps))


def _independent_eps_fn(diffusion, mu, std):
  """E[eps | x_t] for independent x_0 ~ N(mu, std^2) along the last axis."""
  mu, std = jnp.asarray(mu, jnp.float32), jnp.asarray(std, jnp.float32)

  def eps_fn(x_t, t):
    abar = diffusion.alphas_cumprod[t].reshape((-1,) + (1,) * (x_t.ndim - 1))
    return (jnp.sqrt(1 - abar) * (x_t - jnp.sqrt(abar) * mu)
            / (abar * std**2 + 1 - abar))
  return eps_fn


def _correlated_eps_fn(diffusion, mu, cov):
  """E[eps | x_t] for x_0 ~ N(mu, cov) over [B, d] vectors."""
  mu, cov = jnp.asarray(mu, jnp.float32), jnp.asarray(cov, jnp.float32)

  def eps_fn(x_t, t):
    abar = diffusion.alphas_cumprod[t][:, None, None]
    precision_inv = abar * cov + (1 - abar) * jnp.eye(cov.shape[0])
    residual = x_t - jnp.sqrt(abar[:, 0]) * mu
    return jnp.sqrt(1 - abar[:, 0]) * jnp.linalg.solve(
        precision_inv, residual[..., None])[..., 0]
  return eps_fn


def _assert_gaussian(samples, mean, std, std_rtol=0.03):
  n = samples.shape[0]
  np.testing.assert_allclose(samples.mean(0), mean, atol=5 * np.max(std) / np.sqrt(n))
  np.testing.assert_allclose(samples.std(0), std, rtol=std_rtol)


# -------------------------------------------------------------------- inputs
def test_image_and_mask_conversions():
  np.testing.assert_allclose(
      editing.to_model_images(np.array([[0, 255]], np.uint8)), [[-1.0, 1.0]])
  with pytest.raises(ValueError, match=r'\[-1, 1\]'):
    editing.to_model_images(np.array([[0.0, 200.0]], np.float32))
  mask = editing.to_mask(np.array([[255, 0], [0, 255]], np.uint8), (3, 2, 2, 3))
  assert mask.shape == (3, 2, 2, 3)
  np.testing.assert_array_equal(mask[1, :, :, 2], [[1, 0], [0, 1]])
  with pytest.raises(ValueError, match='0 .generate. and 1'):
    editing.to_mask(np.array([[0.5]]), (1, 1, 1, 1))
  with pytest.raises(ValueError, match='does not broadcast'):
    editing.to_mask(np.ones((3, 3)), (1, 2, 2, 1))
  center = editing.make_mask('center', 8, 8)
  assert center.sum() == 64 - 16 and center[3, 3] == 0 and center[0, 0] == 1
  assert editing.make_mask('right', 4, 4)[:, 2:].sum() == 0
  with pytest.raises(ValueError, match='Unknown mask kind'):
    editing.make_mask('diagonal', 4, 4)


# ---------------------------------------------------------------- inpainting
def test_inpainting_keeps_known_pixels_and_samples_the_marginal():
  """Independent pixels: the unknown ones follow their marginal N(mu, s^2)."""
  diffusion = _diffusion()
  n = 20_000
  known = np.tile(np.array([[0.9, -0.7, 0.0, 0.0]], np.float32), (n, 1))
  mask = np.tile(np.array([[1, 1, 0, 0]], np.float32), (n, 1))
  out = jax.jit(lambda rng: editing.inpaint(
      _independent_eps_fn(diffusion, MU, STD), diffusion, rng, known, mask,
      clip_denoised=False).images)(jax.random.key(0))
  out = np.asarray(out, np.float64)
  np.testing.assert_array_equal(out[:, :2], known[:, :2])
  _assert_gaussian(out[:, 2:], MU[2:], STD[2:])


def test_repaint_resampling_reaches_the_gaussian_conditional():
  """Correlated pixels: x_1 | x_0 = k ~ N(mu_1 + rho s_1 / s_0 (k - mu_0), ...).

  Plain replacement is biased towards the marginal (the generated pixel only
  sees the known one through noisy draws); RePaint's resampling removes most
  of that bias. Both facts are checked against the closed-form conditional.
  """
  diffusion = _diffusion(100)
  mu, std, rho, k = np.array([0.2, -0.1]), np.array([0.3, 0.4]), 0.8, 0.5
  cov = np.array([[std[0]**2, rho * std[0] * std[1]],
                  [rho * std[0] * std[1], std[1]**2]])
  cond_mean = mu[1] + cov[1, 0] / cov[0, 0] * (k - mu[0])  # 0.22
  cond_std = np.sqrt(cov[1, 1] - cov[1, 0]**2 / cov[0, 0])  # 0.24
  n = 4000
  known = np.tile(np.array([[k, 0.0]], np.float32), (n, 1))
  mask = np.tile(np.array([[1.0, 0.0]], np.float32), (n, 1))
  eps_fn = _correlated_eps_fn(diffusion, mu, cov)
  run = jax.jit(lambda rng, u: editing.inpaint(
      eps_fn, diffusion, rng, known, mask, num_resample=u,
      clip_denoised=False).images, static_argnums=1)
  plain = np.asarray(run(jax.random.key(0), 1), np.float64)
  repaint = np.asarray(run(jax.random.key(1), 10), np.float64)
  assert np.all(plain[:, 0] == k) and np.all(repaint[:, 0] == k)
  assert abs(plain[:, 1].mean() - cond_mean) > 0.1  # replacement's bias
  # Measured with 20k samples: U = 10 leaves ~0.03 of the 0.32 gap to the marginal.
  assert abs(repaint[:, 1].mean() - cond_mean) < 0.06
  assert abs(repaint[:, 1].std() - cond_std) < 0.05


def test_inpainting_on_a_respaced_process():
  """100 of 1000 steps (Nichol & Dhariwal sec. 4): the respaced betas
  1 - abar_{t_i} / abar_{t_(i-1)} are computed here; eps_fn only knows the
  1000-step process, so it must be called with the kept original timesteps."""
  full = _diffusion(1000)
  kept = np.arange(0, 1000, 10) + 9
  alphas_cumprod = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[kept]
  respaced = GaussianDiffusion.from_betas(
      1 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1]))
  n = 20_000
  known = np.tile(np.array([[0.9, -0.7, 0.0, 0.0]], np.float32), (n, 1))
  mask = np.tile(np.array([[1, 1, 0, 0]], np.float32), (n, 1))
  out = jax.jit(lambda rng: editing.inpaint(
      _independent_eps_fn(full, MU, STD), respaced, rng, known, mask,
      clip_denoised=False, timestep_map=kept).images)(jax.random.key(0))
  out = np.asarray(out, np.float64)
  np.testing.assert_array_equal(out[:, :2], known[:, :2])
  _assert_gaussian(out[:, 2:], MU[2:], STD[2:], std_rtol=0.04)
  with pytest.raises(ValueError, match='timestep_map'):
    editing.inpaint(None, respaced, jax.random.key(0), known, mask,
                    timestep_map=kept[:5])


@pytest.mark.skipif('learned_range' not in VAR_TYPES,
                    reason='models/diffusion.py has no learned variances')
def test_learned_variance_output_at_its_upper_end_is_fixedlarge():
  """A network output [eps, v = 1] means Sigma = beta_t (Nichol & Dhariwal
  eq. 15), the 'fixedlarge' variance for t >= 1 (t = 0 adds no noise)."""
  diffusion = _diffusion(25)
  eps_fn = _independent_eps_fn(diffusion, MU, STD)
  learned_fn = lambda x, t: jnp.concatenate(  # noqa: E731
      [eps_fn(x, t), jnp.ones_like(x)], axis=-1)
  known = np.zeros((64, 4), np.float32)
  mask = np.tile(np.array([[1, 0, 1, 0]], np.float32), (64, 1))
  run = jax.jit(lambda fn, var_type: editing.inpaint(
      fn, diffusion, jax.random.key(0), known, mask, var_type=var_type).images,
                static_argnums=(0, 1))
  fixed, learned = run(eps_fn, 'fixedlarge'), run(learned_fn, 'learned_range')
  np.testing.assert_allclose(learned, fixed, rtol=1e-5, atol=1e-6)
  decoded = editing.ddim_decode(learned_fn, diffusion, jnp.ones((2, 4)), num_steps=5)
  assert decoded.images.shape == (2, 4)


# ------------------------------------------------------------- colourisation
def test_colour_decoupling_is_orthonormal_with_a_grey_axis():
  m = editing.COLOUR_DECOUPLING
  np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-12)
  np.testing.assert_allclose(m[:, 0], np.full(3, 1 / np.sqrt(3)))
  x = jax.random.normal(jax.random.key(0), (5, 3))
  np.testing.assert_allclose(editing.couple_color(editing.decouple_color(x)), x,
                             atol=1e-6)
  np.testing.assert_allclose(editing.decouple_color(x)[:, 0],
                             np.asarray(x).sum(1) / np.sqrt(3), rtol=1e-5)


def test_colorize_keeps_grey_and_samples_the_colour_marginal():
  """RGB pixels x_0 ~ N(mu, s^2 I): in the decoupled basis, colour and grey are
  independent, so the colour coordinates follow N((M^T mu)[1:], s^2)."""
  diffusion = _diffusion()
  mu_rgb, s = np.array([0.4, -0.3, 0.1]), 0.3
  n = 20_000
  gray = np.random.default_rng(0).uniform(-0.8, 0.8, (n, 1, 1, 1)).astype(np.float32)
  out = jax.jit(lambda rng: editing.colorize(
      _independent_eps_fn(diffusion, mu_rgb, np.full(3, s)), diffusion, rng, gray,
      clip_denoised=False).images)(jax.random.key(0))
  out = np.asarray(out, np.float64)
  assert out.shape == (n, 1, 1, 3)
  np.testing.assert_allclose(out.mean(-1, keepdims=True), gray, atol=2e-6)
  colour = out.reshape(n, 3) @ editing.COLOUR_DECOUPLING[:, 1:]
  _assert_gaussian(colour, (editing.COLOUR_DECOUPLING.T @ mu_rgb)[1:], np.full(2, s))


def test_colorize_accepts_uint8_rgb():
  diffusion = _diffusion(25)
  images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
  out = jax.jit(lambda rng: editing.colorize(
      _independent_eps_fn(diffusion, 0.0, 0.5), diffusion, rng, images))(
          jax.random.key(0))
  assert out.nfe == 25
  np.testing.assert_allclose(np.asarray(out.images).mean(-1),
                             (images / 127.5 - 1.0).mean(-1), atol=2e-6)


# -------------------------------------------------------------------- SDEdit
def test_sdedit_at_zero_strength_returns_the_guide():
  diffusion = _diffusion(25)
  guide = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
  out = editing.sdedit(_independent_eps_fn(diffusion, 0.0, 0.5), diffusion,
                       jax.random.key(0), guide, strength=0.0)
  assert out.nfe == 0
  np.testing.assert_allclose(out.images, guide / 127.5 - 1.0, rtol=0, atol=2e-7)
  float_guide = np.random.default_rng(1).uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  out = editing.sdedit(None, diffusion, jax.random.key(0), float_guide, strength=0.0)
  np.testing.assert_array_equal(out.images, float_guide)
  with pytest.raises(ValueError, match='strength'):
    editing.sdedit(None, diffusion, jax.random.key(0), guide, strength=1.5)


def test_sdedit_samples_the_posterior_given_the_noised_guide():
  """x_{k-1} = a g + sigma z, then exact reverse steps: x_0 ~ p(x_0 | x_{k-1}),
  whose mixture over z is N(mu + a^2 s^2 / D (g - mu), s^2 sigma^2 / D
  + a^2 s^4 sigma^2 / D^2), D = a^2 s^2 + sigma^2 (Gaussian conditioning)."""
  diffusion = _diffusion()
  strength, n = 0.3, 20_000
  guide = np.tile(np.array([[0.9, 0.5, -0.8, 0.0]], np.float32), (n, 1))
  out = jax.jit(lambda rng: editing.sdedit(
      _independent_eps_fn(diffusion, MU, STD), diffusion, rng, guide,
      strength=strength, clip_denoised=False).images)(jax.random.key(0))
  k = editing.sdedit_num_steps(strength, 200)
  assert k == 60
  abar = float(np.cumprod(1 - np.linspace(5e-4, 0.1, 200))[k - 1])
  var = 1 - abar
  d = abar * STD**2 + var
  mean = MU + abar * STD**2 / d * (guide[0] - MU)
  std = np.sqrt(STD**2 * var / d + abar * STD**4 * var / d**2)
  _assert_gaussian(np.asarray(out, np.float64), mean, std)


# ------------------------------------------------------ DDIM inversion, slerp
@pytest.fixture(scope='module')
def ddim_setup():
  diffusion = _diffusion(1000)
  eps_fn = _independent_eps_fn(diffusion, MU, STD)
  x0 = np.clip(np.random.default_rng(0).normal(MU, STD, (500, 4)), -1, 1)
  return diffusion, eps_fn, x0.astype(np.float32)


def test_ddim_decode_is_deterministic_ddim(ddim_setup):
  diffusion, eps_fn, _ = ddim_setup
  rng = jax.random.key(3)
  x_T = jax.random.normal(jax.random.split(rng)[0], (500, 4))
  ours = editing.ddim_decode(eps_fn, diffusion, x_T, num_steps=25,
                             step_spacing='quadratic')
  reference = ddim_sample(eps_fn, diffusion, rng, (500, 4), num_steps=25,
                          step_spacing='quadratic', clip_denoised=False)
  assert ours.nfe == 25
  np.testing.assert_allclose(ours.images, reference.images, rtol=1e-5, atol=1e-5)


def test_ddim_inversion_round_trip(ddim_setup):
  diffusion, eps_fn, x0 = ddim_setup

  def round_trip_error(num_steps, iterations):
    z = editing.ddim_invert(eps_fn, diffusion, x0, num_steps=num_steps,
                            num_fixed_point_iterations=iterations)
    back = editing.ddim_decode(eps_fn, diffusion, z.images, num_steps=num_steps)
    assert z.nfe == num_steps * (1 + iterations)
    return np.abs(np.asarray(back.images) - x0).max()

  # Plain inversion: first-order error, halving as the steps double (measured
  # 0.42 at 20 steps, 0.23 at 40; 0.01 at 1000).
  coarse, fine = round_trip_error(20, 0), round_trip_error(40, 0)
  assert fine < 0.3 and 0.4 < fine / coarse < 0.65
  # Fixed-point inversion solves each implicit step: near-exact round trip.
  assert round_trip_error(20, 10) < 1e-4


def test_ddim_latent_is_the_exact_flow_map(ddim_setup):
  """The probability-flow ODE of Gaussian data is affine: x_t - a mu =
  sqrt(v_t / s^2) (x_0 - mu), v_t = a^2 s^2 + sigma^2 (tests/test_sde_samplers);
  DDIM inversion is its first-order discretization."""
  diffusion, eps_fn, x0 = ddim_setup

  def latent_error(num_steps, iterations):
    z = editing.ddim_invert(eps_fn, diffusion, x0, num_steps=num_steps,
                            num_fixed_point_iterations=iterations).images
    last = ddim_timesteps(1000, num_steps, 'uniform')[-1]
    abar = float(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[last])
    v = abar * STD**2 + 1 - abar
    exact = np.sqrt(abar) * MU + np.sqrt(v) / STD * (x0 - MU)
    return np.abs(np.asarray(z) - exact).max()

  coarse, fine = latent_error(100, 2), latent_error(200, 2)
  assert 0.35 < fine / coarse < 0.65  # first order
  assert latent_error(1000, 1) < 0.03  # latents range over about +-3


def test_slerp_matches_rotation_and_endpoints():
  e1 = jnp.array([[1.0, 0.0], [2.0, 0.0]])
  e2 = jnp.array([[0.0, 1.0], [0.0, 2.0]])
  for f in (0.0, 0.3, 1.0):
    angle = f * np.pi / 2
    np.testing.assert_allclose(
        editing.slerp(e1, e2, f),
        np.array([[1, 1], [2, 2]]) * [np.cos(angle), np.sin(angle)], atol=1e-6)
  # Parallel latents: linear interpolation instead of 0 / 0.
  np.testing.assert_allclose(editing.slerp(e1, 3 * e1, 0.5), 2 * e1, atol=1e-6)


def test_interpolation_shapes_and_endpoints(ddim_setup):
  diffusion, eps_fn, x0 = ddim_setup
  a = x0[:3].reshape(3, 1, 2, 2)
  b = x0[3:6].reshape(3, 1, 2, 2)
  shaped_eps = lambda x, t: eps_fn(x.reshape(-1, 4), t).reshape(x.shape)  # noqa: E731
  out = editing.interpolate(shaped_eps, diffusion, a, b, num_points=4, num_steps=20,
                            num_fixed_point_iterations=10)
  assert out.images.shape == (3, 4, 1, 2, 2)
  assert out.nfe == 20 * 11 + 4 * 20
  np.testing.assert_allclose(out.images[:, 0], a, atol=1e-4)
  np.testing.assert_allclose(out.images[:, -1], b, atol=1e-4)
  with pytest.raises(ValueError, match='num_points'):
    editing.interpolate(shaped_eps, diffusion, a, b, num_points=1, num_steps=5)


# ---------------------------------------------------------- super-resolution
def test_superres_sampler_conditions_on_the_upsampled_image():
  """A model of x_0 | c ~ N(c, s^2), c = the upsampled low-res image, reads c
  from the last C input channels; the samples must centre on c with spread s."""
  diffusion, s = _diffusion(), 0.2
  rng = np.random.default_rng(0)
  low_res = rng.integers(40, 216, (500, 2, 2, 1)).astype(np.uint8)

  def sr_eps_fn(x, t):
    x_t, c = x[..., :1], x[..., 1:]
    abar = diffusion.alphas_cumprod[t][:, None, None, None]
    return (jnp.sqrt(1 - abar) * (x_t - jnp.sqrt(abar) * c)
            / (abar * s**2 + 1 - abar))

  out = jax.jit(lambda key: editing.superres_sample(
      sr_eps_fn, diffusion, key, low_res, factor=2, method='nearest',
      clip_denoised=False))(jax.random.key(0))
  assert out.images.shape == (500, 4, 4, 1) and out.nfe == 200
  condition = np.repeat(np.repeat(low_res / 127.5 - 1.0, 2, axis=1), 2, axis=2)
  residual = (np.asarray(out.images, np.float64) - condition).reshape(-1)
  _assert_gaussian(residual[:, None], [0.0], [s])


def test_apply_edit_dispatches_and_validates():
  diffusion = _diffusion(25)
  eps_fn = _independent_eps_fn(diffusion, 0.0, 0.5)
  images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
  out, settings = editing.apply_edit('sdedit', eps_fn, diffusion, jax.random.key(0),
                                     images, strength=0.0)
  np.testing.assert_allclose(out.images, images / 127.5 - 1.0, atol=2e-7)
  assert settings == dict(edit='sdedit', strength=0.0, var_type='fixedlarge',
                          clip_denoised=True, respaced=False, nfe=0)
  with pytest.raises(ValueError, match='Unknown edit'):
    editing.apply_edit('deblur', eps_fn, diffusion, jax.random.key(0), images)
  with pytest.raises(ValueError, match='needs a mask'):
    editing.apply_edit('inpaint', eps_fn, diffusion, jax.random.key(0), images)
  with pytest.raises(ValueError, match='images_b'):
    editing.apply_edit('interpolate', eps_fn, diffusion, jax.random.key(0), images)
