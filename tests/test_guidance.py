"""Tests for sampling/guidance.py (classifier-free guidance, label dropout)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.diffusion import GaussianDiffusion, get_beta_schedule
from models.unet import UNet
from sampling.common import cycled_labels
from sampling.ddpm import ancestral_sample, ddim_sample
from sampling.guidance import (
    Conditioning, classifier_free_guidance, combine_guidance, drop_labels,
    null_condition_like)

NUM_CLASSES = 3
CLASS_MEANS = np.array([[-0.5, 0.2], [0.4, 0.4], [0.1, -0.6], [0.0, 0.0]])  # last: null
STD = 0.3


def _diffusion(num_timesteps=50):
  scale = 1000 / num_timesteps
  return GaussianDiffusion.from_betas(get_beta_schedule(
      'linear', beta_start=1e-4 * scale, beta_end=0.02 * scale,
      num_timesteps=num_timesteps))


def _class_gaussian_eps(diffusion):
  """model_fn(x, t, y): E[eps | x_t] for x_0 ~ N(CLASS_MEANS[y], STD^2)."""
  means = jnp.asarray(CLASS_MEANS, jnp.float32)

  def model_fn(x_t, t, y):
    abar = diffusion.alphas_cumprod[t][:, None]
    mu = means[y]
    return (jnp.sqrt(1 - abar) * (x_t - jnp.sqrt(abar) * mu)
            / (abar * STD**2 + 1 - abar))
  return model_fn


def test_combine_matches_eq6_by_hand():
  # (1 + 3) * 2 - 3 * 5 = -7; (1 + 0.5) * -1 - 0.5 * 4 = -3.5.
  out = combine_guidance(jnp.array([2.0, -1.0]), jnp.array([5.0, 4.0]),
                         jnp.array([3.0, 0.5]))
  np.testing.assert_allclose(out, [-7.0, -3.5])


@pytest.mark.parametrize('sampler,kwargs', [
    (ancestral_sample, {}), (ddim_sample, dict(num_steps=10))])
def test_weight_zero_is_the_conditional_sampler(sampler, kwargs):
  diffusion = _diffusion()
  model_fn = _class_gaussian_eps(diffusion)
  y = jnp.arange(64, dtype=jnp.int32) % NUM_CLASSES
  null = null_condition_like(y, NUM_CLASSES)
  rng = jax.random.key(0)
  run = lambda eps_fn: np.asarray(sampler(  # noqa: E731
      eps_fn, diffusion, rng, (64, 2), clip_denoised=False, **kwargs).images)
  conditional = run(lambda x, t: model_fn(x, t, y))
  np.testing.assert_array_equal(
      run(classifier_free_guidance(model_fn, y, null, 0.0)), conditional)
  # A traced weight of 0 takes the batched path: eq. 6 is eps_c there too, up
  # to float rounding where XLA fuses the jitted loop differently.
  traced = jax.jit(lambda w: sampler(
      classifier_free_guidance(model_fn, y, null, w), diffusion, rng, (64, 2),
      clip_denoised=False, **kwargs).images)(jnp.float32(0.0))
  np.testing.assert_allclose(np.asarray(traced), conditional, rtol=0, atol=1e-6)
  # And a positive weight changes the samples.
  guided = run(classifier_free_guidance(model_fn, y, null, 2.0))
  assert np.abs(guided - conditional).max() > 1e-2


def test_guidance_pushes_away_from_the_null_prediction():
  """w > 0 extrapolates: guided - cond = w (cond - uncond), independently computed."""
  diffusion = _diffusion()
  model_fn = _class_gaussian_eps(diffusion)
  x = jax.random.normal(jax.random.key(1), (6, 2))
  t = jnp.full((6,), 20, jnp.int32)
  y = jnp.array([0, 1, 2, 0, 1, 2], jnp.int32)
  null = null_condition_like(y, NUM_CLASSES)
  guided = classifier_free_guidance(model_fn, y, null, 1.5)(x, t)
  # Closed form: eps is affine in the class mean, slope -sqrt(1-abar) sqrt(abar)/v.
  abar = float(diffusion.alphas_cumprod[20])
  slope = -np.sqrt(1 - abar) * np.sqrt(abar) / (abar * STD**2 + 1 - abar)
  cond = np.asarray(model_fn(x, t, y))
  expected = cond + 1.5 * slope * (CLASS_MEANS[np.asarray(y)] - CLASS_MEANS[3])
  np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-6)


def test_one_batched_call_equals_two_separate_calls(fast_compile):
  net = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
             dropout=0.0, num_classes=NUM_CLASSES, num_groups=4)
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  t = jnp.array([3, 50, 900], jnp.int32)
  y = jnp.array([0, 2, 1], jnp.int32)
  params = jax.jit(lambda k: net.init(k, x, t, y, train=False)['params'])(
      jax.random.key(1))
  # Perturb (numpy noise: no per-leaf compiles) so the zero-initialised output
  # layer does not make every prediction 0.
  noise = np.random.default_rng(0)
  params = jax.tree.map(
      lambda p: p + 0.1 * noise.standard_normal(p.shape).astype(np.float32), params)
  apply = jax.jit(lambda x, t, y: net.apply({'params': params}, x, t, y, train=False))
  batch_sizes = []

  def model_fn(x, t, y):
    batch_sizes.append(x.shape[0])
    return apply(x, t, y)

  null = null_condition_like(y, NUM_CLASSES)
  w = 2.5
  guided = classifier_free_guidance(model_fn, y, null, w)(x, t)
  assert batch_sizes == [6]  # one call of size 2B
  cond, uncond = apply(x, t, y), apply(x, t, null)
  assert np.abs(np.asarray(cond - uncond)).max() > 1e-3
  np.testing.assert_allclose(guided, (1 + w) * cond - w * uncond,
                             rtol=1e-4, atol=1e-5)


def test_token_conditions_and_scalar_times():
  """Pytree conditions ([B, L] tokens) and a scalar t (EDM's sigma) work too."""
  def model_fn(x, sigma, cond):
    assert sigma.shape == (x.shape[0],)
    return x * 0 + jnp.sum(cond['tokens'], axis=1, keepdims=True) + sigma[:, None]

  cond = {'tokens': jnp.array([[1, 2, 0], [3, 0, 0]], jnp.int32)}
  null = null_condition_like(cond, 0)
  out = classifier_free_guidance(model_fn, cond, null, 1.0)(
      jnp.zeros((2, 4)), jnp.float32(0.5))
  # cond sums 3 and 3; null sums 0: 2 * (3 + 0.5) - (0 + 0.5) = 6.5.
  np.testing.assert_allclose(out, np.full((2, 4), 6.5))


def test_bad_guidance_arguments_raise():
  model_fn = lambda x, t, y: x  # noqa: E731
  y = jnp.zeros((4,), jnp.int32)
  with pytest.raises(ValueError, match='guidance_weight'):
    classifier_free_guidance(model_fn, y, y, -1.0)
  with pytest.raises(ValueError, match='null_cond'):
    classifier_free_guidance(model_fn, y, jnp.zeros((3,), jnp.int32), 1.0)


def test_drop_labels_rate_and_null_value():
  n, p, null = 200_000, 0.1, NUM_CLASSES
  labels = jnp.asarray(np.random.default_rng(0).integers(0, NUM_CLASSES, n),
                       jnp.int32)
  dropped = np.asarray(drop_labels(labels, jax.random.key(0), p, null))
  is_null = dropped == null
  # Binomial: 5 standard deviations of the observed rate.
  assert abs(is_null.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
  np.testing.assert_array_equal(dropped[~is_null], np.asarray(labels)[~is_null])
  np.testing.assert_array_equal(drop_labels(labels, jax.random.key(1), 0.0, null),
                                labels)
  assert np.all(np.asarray(drop_labels(labels, jax.random.key(1), 1.0, null)) == null)


def test_drop_labels_drops_whole_token_rows():
  n, length, p = 20_000, 6, 0.25
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, 18, (n, length)),
                       jnp.int32)
  dropped = np.asarray(drop_labels(tokens, jax.random.key(3), p, 0))
  null_rows = np.all(dropped == 0, axis=1)
  kept_rows = np.all(dropped == np.asarray(tokens), axis=1)
  assert np.all(null_rows | kept_rows)  # never a partly dropped caption
  assert abs(null_rows.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_drop_labels_rejects_bad_rate():
  with pytest.raises(ValueError, match='drop_prob'):
    drop_labels(jnp.zeros((4,), jnp.int32), jax.random.key(0), 1.5, 3)


def test_learned_variance_channels_keep_the_conditional_variance():
  """[eps, v] outputs (2C channels): eps is guided, v is the conditional one."""
  def model_fn(x, t, y):
    del t
    eps = x + y[:, None].astype(jnp.float32)
    v = 10.0 * y[:, None].astype(jnp.float32) + 0 * x
    return jnp.concatenate([eps, v], axis=-1)

  y = jnp.array([1, 2], jnp.int32)
  null = null_condition_like(y, 0)
  out = classifier_free_guidance(model_fn, y, null, 2.0, num_guided_channels=3)(
      jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32))
  # eps: 3 y - 2 * 0 = 3 y; v: 10 y from the conditional half.
  np.testing.assert_allclose(out[:, :3], np.repeat([[3.0], [6.0]], 3, axis=1))
  np.testing.assert_allclose(out[:, 3:], np.repeat([[10.0], [20.0]], 3, axis=1))


# ------------------------------------------------------------------- Conditioning
def test_conditioning_validates_its_fields():
  with pytest.raises(ValueError, match='p_uncond'):
    Conditioning('class', num_classes=3, null_value=3, p_uncond=1.5)
  with pytest.raises(ValueError, match='guidance.weight'):
    Conditioning('class', num_classes=3, null_value=3, guidance_weight=-1.0)
  with pytest.raises(ValueError, match='conditional model'):
    Conditioning('none', guidance_weight=1.0)
  with pytest.raises(ValueError, match='kind'):
    Conditioning('colour')
  with pytest.raises(ValueError, match='class labels'):
    Conditioning('class', num_classes=0)


def test_conditioning_drop_is_algorithm_1():
  c = Conditioning('class', num_classes=3, null_value=3, p_uncond=0.5)
  labels, rng = jnp.arange(64) % 3, jax.random.PRNGKey(7)
  np.testing.assert_array_equal(c.drop(labels, rng), drop_labels(labels, rng, 0.5, 3))
  assert c.drop(None, rng) is None
  plain = Conditioning('class', num_classes=3, null_value=3)
  assert plain.drop(labels, rng) is labels          # p_uncond 0: no draw at all


def test_conditioning_guide_is_eq_6():
  c = Conditioning('class', num_classes=3, null_value=3, guidance_weight=2.0)
  model_fn = lambda x, t, y: x * (1.0 + y[:, None].astype(jnp.float32))  # noqa: E731
  x, t, y = jnp.ones((2, 4)), jnp.zeros((2,), jnp.int32), jnp.array([0, 1])
  guided = c.guide(model_fn, y)(x, t)
  np.testing.assert_allclose(guided, 3.0 * model_fn(x, t, y) - 2.0 * model_fn(x, t, 3 + 0 * y))
  np.testing.assert_allclose(c.guide(model_fn, y, 0.0)(x, t), model_fn(x, t, y))
  with pytest.raises(ValueError, match='conditional: pass labels'):
    c.guide(model_fn, None)
  with pytest.raises(ValueError, match='unconditional'):
    Conditioning().guide(model_fn, y)
  assert c.guided and not Conditioning('class', num_classes=3, null_value=3).guided


def test_cycled_labels_draw_every_class_equally_often():
  assert cycled_labels(5, 0) is None
  np.testing.assert_array_equal(cycled_labels(7, 3), [0, 1, 2, 0, 1, 2, 0])
  assert cycled_labels(7, 3).dtype == jnp.int32
