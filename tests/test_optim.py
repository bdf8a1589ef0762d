"""Learning-rate schedules and optimizers against hand-written formulas."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, vae_binarized_mnist
from train import optim


def _optim(**overrides):
  config = default.get_config().optim
  config.update(overrides)
  return config


def _values(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_constant_with_warmup():
  sched = optim.learning_rate_schedule(_optim(learning_rate=1e-3, warmup_steps=10))
  np.testing.assert_allclose(_values(sched, [0, 5, 10, 11, 1000]),
                             [0.0, 5e-4, 1e-3, 1e-3, 1e-3], rtol=1e-6)


def test_exponential_decay_after_warmup():
  sched = optim.learning_rate_schedule(_optim(
      learning_rate=2e-3, warmup_steps=4, lr_schedule="exponential", lr_decay_rate=0.9))
  steps = [0, 2, 4, 5, 9, 104]
  expected = [0.0, 1e-3] + [2e-3 * 0.9 ** (s - 4) for s in steps[2:]]
  np.testing.assert_allclose(_values(sched, steps), expected, rtol=1e-5)


def test_exponential_without_warmup_is_pixelcnnpp_schedule():
  sched = optim.learning_rate_schedule(_optim(
      learning_rate=1e-3, warmup_steps=0, lr_schedule="exponential",
      lr_decay_rate=0.999995))
  for s in (0, 1, 200_000):
    assert float(sched(s)) == pytest.approx(1e-3 * 0.999995 ** s, rel=1e-4)


def test_piecewise_applies_each_scale_from_its_boundary_on():
  sched = optim.learning_rate_schedule(_optim(
      learning_rate=1.0, warmup_steps=0, lr_schedule="piecewise",
      lr_boundaries=(3, 7), lr_boundary_scales=(0.5, 0.1)))
  np.testing.assert_allclose(_values(sched, range(10)),
                             [1, 1, 1, .5, .5, .5, .5, .05, .05, .05], rtol=1e-6)


def test_iwae_config_follows_the_papers_stages():
  """Burda et al. 2016: 1e-3 * 10^(-i/7) during the 3^i passes of stage i."""
  config = vae_binarized_mnist.get_config()
  sched = optim.learning_rate_schedule(config.optim)
  steps_per_pass = 60_000 // 20
  start = 0
  for i in range(8):
    passes = 3 ** i
    for s in (start, start + passes * steps_per_pass - 1):
      assert float(sched(s)) == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-5), (i, s)
    start += passes * steps_per_pass
  assert start == config.training.num_train_steps


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_decay_to_zero(name):
  sched = optim.learning_rate_schedule(_optim(
      learning_rate=1.0, warmup_steps=2, lr_schedule=name, lr_decay_steps=8))
  k = np.arange(9)
  expected = (0.5 * (1 + np.cos(np.pi * k / 8)) if name == "cosine" else 1 - k / 8)
  np.testing.assert_allclose(_values(sched, 2 + k), expected, atol=1e-6)
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def test_rmsprop_two_steps_by_hand():
  """nu_t = d nu_{t-1} + (1 - d) g^2 from nu_0 = 0; update = -lr g / sqrt(nu_t + eps)
  (optax puts eps inside the square root, like TensorFlow's RMSProp)."""
  config = _optim(optimizer="rmsprop", learning_rate=0.1, warmup_steps=0,
                  rmsprop_decay=0.9, eps=1e-8, grad_clip_norm=0.0)
  tx = optim.make_optimizer(config)
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  nu = np.zeros(2)
  for g in (np.array([0.5, -1.0]), np.array([2.0, 0.25])):
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    nu = 0.9 * nu + 0.1 * g ** 2
    np.testing.assert_allclose(updates, -0.1 * g / np.sqrt(nu + 1e-8), rtol=1e-5)


def test_rmsprop_momentum_accumulates():
  config = _optim(optimizer="rmsprop", learning_rate=0.1, warmup_steps=0,
                  rmsprop_decay=0.0, momentum=0.5, eps=0.0, grad_clip_norm=0.0)
  tx = optim.make_optimizer(config)
  state = tx.init(jnp.zeros(1))
  # With decay 0 each scaled gradient is sign(g) = 1; momentum sums 1, 1.5, 1.75.
  for expected in (1.0, 1.5, 1.75):
    updates, state = tx.update(jnp.array([3.0]), state)
    assert float(updates[0]) == pytest.approx(-0.1 * expected, rel=1e-6)


@pytest.mark.parametrize("overrides, match", [
    (dict(optimizer="sgd"), "optimizer"),
    (dict(lr_schedule="step"), "lr_schedule"),
    (dict(lr_schedule="exponential", lr_decay_rate=1.5), "lr_decay_rate"),
    (dict(lr_schedule="piecewise", lr_boundaries=(5,), lr_boundary_scales=()),
     "same non-zero length"),
    (dict(lr_schedule="piecewise", lr_boundaries=(5, 3), lr_boundary_scales=(1., 1.)),
     "strictly increasing"),
    (dict(lr_schedule="cosine"), "lr_decay_steps"),
    (dict(optimizer="rmsprop", rmsprop_decay=1.0), "rmsprop_decay"),
])
def test_bad_values_are_named(overrides, match):
  with pytest.raises(ValueError, match=match):
    optim.make_optimizer(_optim(**overrides))


# ------------------------------------------------------------ the one gradient step
def _state(params, optim_config):
  from train.state import TrainState
  import jax
  tx = optim.make_optimizer(optim_config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.zeros_like, params),
                    opt_state=tx.init(params), rng=jax.random.PRNGKey(0), tx=tx)


def _adam_by_hand(p, g, lr, b1, b2, eps):
  """One bias-corrected Adam step from zero moments (Kingma & Ba, Algorithm 1)."""
  m, v = (1 - b1) * g, (1 - b2) * g * g
  m_hat, v_hat = m / (1 - b1), v / (1 - b2)
  return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def test_apply_gradients_is_adam_then_ema():
  config = _optim(optimizer="adam", learning_rate=0.1, warmup_steps=0, grad_clip_norm=0.0,
                  ema_decay=0.9)
  params = dict(w=jnp.array([1.0, -2.0, 3.0]))
  grads = dict(w=jnp.array([0.5, 0.25, -4.0]))
  state, metrics = optim.apply_gradients(_state(params, config), grads, config,
                                         loss=jnp.float32(1.5))
  expected = _adam_by_hand(np.array([1.0, -2.0, 3.0]), np.array([0.5, 0.25, -4.0]),
                           0.1, config.beta1, config.beta2, config.eps)
  np.testing.assert_allclose(state.params["w"], expected, rtol=1e-6)
  np.testing.assert_allclose(state.ema_params["w"], 0.1 * expected, rtol=1e-6)
  assert int(state.step) == 1
  assert set(metrics) == {"loss", "grad_norm", "learning_rate"}
  np.testing.assert_allclose(metrics["grad_norm"], math.sqrt(0.25 + 0.0625 + 16), rtol=1e-6)
  np.testing.assert_allclose(metrics["learning_rate"], 0.1, rtol=1e-6)


def test_apply_gradients_clips_to_the_norm_first():
  config = _optim(optimizer="adam", learning_rate=0.1, warmup_steps=0, grad_clip_norm=0.0)
  state = _state(dict(w=jnp.zeros(2)), config)
  grads = dict(w=jnp.array([3.0, 4.0]))          # norm 5
  clipped = optim.clip_by_global_norm(grads, jnp.float32(5.0), 1.0)
  np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-5)
  # Adam is invariant to a constant gradient scale only up to eps: compare against
  # the same step on the clipped gradients.
  a, _ = optim.apply_gradients(state, grads, config, clip_norm=1.0)
  b, _ = optim.apply_gradients(state, clipped, config)
  np.testing.assert_array_equal(a.params["w"], b.params["w"])


@pytest.mark.parametrize("loss, grads, skipped", [
    (1.0, [3.0, 4.0], True),             # norm 5 >= threshold 4
    (float("nan"), [0.1, 0.1], True),    # a non-finite loss
    (1.0, [float("inf"), 0.0], True),    # a non-finite gradient
    (1.0, [0.3, 0.4], False),
])
def test_apply_gradients_skips_bad_updates(loss, grads, skipped):
  config = _optim(optimizer="adam", learning_rate=0.1, warmup_steps=0, grad_clip_norm=0.0)
  state = _state(dict(w=jnp.array([1.0, 2.0])), config)
  new, metrics = optim.apply_gradients(state, dict(w=jnp.array(grads)), config,
                                       loss=jnp.float32(loss), skip_threshold=4.0)
  assert int(new.step) == 1 and float(metrics["skipped"]) == float(skipped)
  same = np.array_equal(new.params["w"], state.params["w"])
  assert same == skipped
  if skipped:
    np.testing.assert_array_equal(new.ema_params["w"], state.ema_params["w"])
  assert np.all(np.isfinite(new.params["w"]))


def test_gradient_update_scales_the_updates():
  config = _optim(optimizer="adam", learning_rate=1.0, warmup_steps=0, grad_clip_norm=0.0)
  tx = optim.make_optimizer(config)
  params, grads = dict(w=jnp.array([1.0])), dict(w=jnp.array([2.0]))
  full, _ = optim.gradient_update(tx, grads, params, tx.init(params))
  scaled, _ = optim.gradient_update(tx, grads, params, tx.init(params), 0.25)
  np.testing.assert_allclose(1.0 - scaled["w"], 0.25 * (1.0 - full["w"]), rtol=1e-6)
