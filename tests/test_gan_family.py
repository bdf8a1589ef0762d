"""The GAN family: every config's step, the D/G schedule, lazy R1, EMA, sampling, and a
short end-to-end run through train.loop on the embedded digits."""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import families, loop
from train import modes
from train import gan as gan_lib

IMAGE_SHAPES = {"cifar10": (32, 32, 3), "digits": (8, 8, 1)}
CONFIGS = [("dcgan_cifar", None), ("wgangp_cifar", None), ("sngan_cifar", "resnet"),
           ("sngan_cifar", "cnn"), ("biggan_cifar", None), ("stylegan2_cifar", None),
           ("gan_digits", None), ("gan_base", None)]


def load(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def shrink(config, width=4):
  """Tiny widths and batches; the config's structure (depth, losses, regularisers)."""
  m = config.model
  m.ch = m.d_ch = width
  m.z_dim = 8
  m.w_dim = 8
  m.mlp_hidden = 8
  m.mbstd_group_size = 2
  if config.gan.g_batch_size:
    config.gan.g_batch_size = 2
  config.training.batch_size = 2 * config.gan.n_critic
  return config


def random_batch(config, rng=0):
  shape = IMAGE_SHAPES[config.data.dataset]
  n = config.training.batch_size
  r = np.random.default_rng(rng)
  return dict(image=r.integers(0, 256, (n, *shape)).astype(np.uint8),
              label=r.integers(0, 10, (n,)).astype(np.int32))


def make_family(config):
  return gan_lib.GAN(config, IMAGE_SHAPES[config.data.dataset], 10)


def adam_counts(opt_state):
  states = jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
  return [int(s.count) for s in states if isinstance(s, optax.ScaleByAdamState)]


def mlp_config(**gan):
  """A small MLP GAN on 4x4x1 'images' for fast checks of the step's mechanics."""
  config = load("gan_base")
  config.data.dataset = "digits"
  config.model.architecture = "mlp"
  config.model.mlp_hidden, config.model.mlp_layers, config.model.z_dim = 8, 1, 4
  for k, v in gan.items():
    config.gan[k] = v
  config.training.batch_size = 2 * config.gan.n_critic
  return config


def tiny_family(config):
  return gan_lib.GAN(config, (4, 4, 1), 0)


def tiny_batch(config):
  n = config.training.batch_size
  return dict(image=np.arange(n * 16, dtype=np.uint8).reshape(n, 4, 4, 1),
              label=np.zeros((n,), np.int32))


# ------------------------------------------------------------------- every config
@pytest.mark.slow   # tests/test_configs.py trains one step of every config in CI
@pytest.mark.parametrize("name,arg", CONFIGS)
def test_every_config_trains_one_step_on_tiny_shapes(name, arg, fast_compile):
  config = shrink(load(name, arg))
  family = make_family(config)
  batch = random_batch(config)
  state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
  new_state, metrics = jax.jit(family.train_step)(state, batch)
  assert int(new_state.step) == 1
  for key in ("loss", "d_loss", "g_loss", "d_real", "d_fake", "g_grad_norm", "d_grad_norm",
              "g_learning_rate", "d_learning_rate"):
    assert np.isfinite(float(metrics[key])), (key, metrics)
  for net in ("generator", "discriminator"):
    before = jax.tree.leaves(state.params[net])
    after = jax.tree.leaves(new_state.params[net])
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), net
  images = family.sample(family.sampling_params(new_state, config.sampling.use_ema),
                         jax.random.PRNGKey(1), 3)
  assert images.shape == (3, *IMAGE_SHAPES[config.data.dataset])
  assert images.dtype == jnp.uint8


def test_paper_configs_carry_the_checked_hyperparameters():
  w = load("wgangp_cifar")
  assert (w.gan.loss, w.gan.gp_weight, w.gan.n_critic, w.training.batch_size,
          w.gan.g_batch_size) == ("wasserstein", 10.0, 5, 320, 128)
  assert (w.optim.learning_rate, w.optim.beta1, w.optim.beta2, w.optim.lr_schedule,
          w.optim.lr_decay_steps, w.training.num_train_steps) == (2e-4, 0.0, 0.9, "linear",
                                                                   100_000, 100_000)
  s = load("sngan_cifar", "resnet")
  assert (s.model.ch, s.model.d_ch, s.gan.loss, s.gan.n_critic, s.training.batch_size,
          s.gan.g_batch_size, s.optim.learning_rate, s.optim.beta1, s.optim.beta2,
          s.training.num_train_steps) == (256, 128, "hinge", 5, 320, 128, 2e-4, 0.0, 0.9,
                                          50_000)
  assert s.model.d_spectral_norm and not s.model.g_spectral_norm
  b = load("biggan_cifar")
  assert (b.gan.n_critic, b.training.batch_size, b.optim.learning_rate,
          b.gan.d_learning_rate, b.optim.beta2, b.optim.ema_decay, b.gan.ema_start_step,
          b.model.ch * b.model.ch_mult[0]) == (4, 200, 2e-4, 2e-4, 0.999, 0.9999, 1000, 256)
  g = load("stylegan2_cifar")
  assert (g.training.batch_size, g.model.mbstd_group_size, g.model.mapping_layers,
          g.gan.r1_gamma, g.gan.r1_every, g.gan.ema_half_life_images, g.gan.ema_rampup,
          g.model.d_architecture, g.model.style_mixing_prob) == (64, 32, 2, 0.01, 16,
                                                                 500_000, 0.05, "orig", 0.0)
  np.testing.assert_allclose([g.optim.learning_rate, g.gan.d_learning_rate],
                             [0.0025 * 4 / 5, 0.0025 * 16 / 17])
  np.testing.assert_allclose([g.optim.beta2, g.gan.d_beta2], [0.99 ** 0.8, 0.99 ** (16 / 17)])


# --------------------------------------------------------------- bad user input
@pytest.mark.parametrize("change,message", [
    (dict(n_critic=3), "multiple of config.gan.n_critic"),
    (dict(loss="wgan"), "config.gan.loss"),
    (dict(r1_every=0), "r1_every"),
    (dict(gp_weight=-1.0), "gp_weight"),
    (dict(diffaugment="color,flip"), "diffaugment"),
])
def test_bad_gan_settings_are_rejected_before_compiling(change, message):
  config = load("gan_base")
  for k, v in change.items():
    config.gan[k] = v
  with pytest.raises(ValueError, match=message):
    gan_lib.GAN(config, (8, 8, 1), 10)


def test_bad_model_settings_are_rejected():
  config = load("gan_base")
  config.model.conditional = True
  with pytest.raises(ValueError, match="no class labels"):
    gan_lib.GAN(config, (8, 8, 1), 0)
  with pytest.raises(ValueError, match="unconditional"):
    gan_lib.GAN(config, (8, 8, 1), 10)       # DCGAN has no class input
  config = load("gan_base")
  config.model.architecture = "vit"
  with pytest.raises(ValueError, match="architecture"):
    gan_lib.GAN(config, (8, 8, 1), 10)
  config = load("gan_base")
  config.sampling.truncation_psi = 0.7
  with pytest.raises(ValueError, match="truncation_psi"):
    gan_lib.GAN(config, (8, 8, 1), 10)


# -------------------------------------------------------------- step mechanics
def test_real_batch_is_split_into_interleaved_chunks():
  family = tiny_family(mlp_config(n_critic=3))
  chunks = family._split_chunks(jnp.arange(6))
  np.testing.assert_array_equal(chunks, [[0, 3], [1, 4], [2, 5]])


def test_n_critic_discriminator_updates_and_one_generator_update_per_step(fast_compile):
  config = mlp_config(n_critic=3)
  family = tiny_family(config)
  batch = tiny_batch(config)
  state = family.init(jax.random.PRNGKey(0), batch)
  state, _ = jax.jit(family.train_step)(state, batch)
  state, _ = jax.jit(family.train_step)(state, batch)
  assert adam_counts(state.opt_state["discriminator"]) == [6]
  assert adam_counts(state.opt_state["generator"]) == [2]


def test_lazy_r1_adds_one_optimizer_step_every_k_updates(fast_compile):
  """n_critic = 4, r1_every = 2: updates 0..3 regularise after 0 and 2."""
  config = mlp_config(n_critic=4, r1_gamma=1.0, r1_every=2)
  family = tiny_family(config)
  batch = tiny_batch(config)
  state = family.init(jax.random.PRNGKey(0), batch)
  state, metrics = jax.jit(family.train_step)(state, batch)
  assert adam_counts(state.opt_state["discriminator"]) == [4 + 2]
  assert float(metrics["r1"]) > 0
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics["d_loss"]), rtol=1e-6)


@pytest.mark.parametrize("penalty,weight_name", [("gp_weight", "gradient_penalty"),
                                                 ("r1_gamma", "r1")])
def test_eager_penalties_enter_the_discriminator_loss(penalty, weight_name, fast_compile):
  config = mlp_config(n_critic=1, **{penalty: 3.0})
  family = tiny_family(config)
  batch = tiny_batch(config)
  state = family.init(jax.random.PRNGKey(0), batch)
  _, metrics = jax.jit(family.train_step)(state, batch)
  scale = 3.0 if penalty == "gp_weight" else 1.5        # lambda, or gamma / 2
  np.testing.assert_allclose(float(metrics["loss"]) - float(metrics["d_loss"]),
                             scale * float(metrics[weight_name]), rtol=1e-5)


def test_learning_rates_follow_the_generator_step(fast_compile):
  """Linear decay over 10 generator steps: every D update of step s uses lr (1 - s/10)."""
  config = mlp_config(n_critic=2, d_learning_rate=4e-4)
  config.optim.learning_rate = 1e-4
  config.optim.lr_schedule = "linear"
  config.optim.lr_decay_steps = 10
  family = tiny_family(config)
  batch = tiny_batch(config)
  state = family.init(jax.random.PRNGKey(0), batch)
  step = jax.jit(family.train_step)
  for s in range(3):
    state, metrics = step(state, batch)
    np.testing.assert_allclose(float(metrics["g_learning_rate"]), 1e-4 * (1 - s / 10),
                               rtol=1e-6)
    np.testing.assert_allclose(float(metrics["d_learning_rate"]), 4e-4 * (1 - s / 10),
                               rtol=1e-6)


def test_ema_decay_schedules():
  config = mlp_config()
  config.gan.ema_start_step = 2
  config.optim.ema_decay = 0.999
  family = tiny_family(config)
  np.testing.assert_allclose([float(family.ema_decay(s)) for s in (0, 1, 2, 50)],
                             [0.0, 0.0, 0.999, 0.999], rtol=1e-6)
  config = load("stylegan2_cifar")          # half-life 500k images, ramp-up 0.05, batch 64
  family = gan_lib.GAN(shrink(config), (32, 32, 3), 10)
  family.g_batch = 64
  # step 1000: half-life min(500k, 1000 * 64 * 0.05 = 3200): 0.5 ** (64 / 3200);
  # step 10^6: 0.5 ** (64 / 500000).
  np.testing.assert_allclose([float(family.ema_decay(s)) for s in (0, 1000, 1_000_000)],
                             [0.0, 0.9862327045, 0.9999112811], rtol=1e-6)


def test_ema_copies_the_generator_before_its_start_step(fast_compile):
  config = mlp_config()
  config.gan.ema_start_step = 5
  family = tiny_family(config)
  batch = tiny_batch(config)
  state = family.init(jax.random.PRNGKey(0), batch)
  state, _ = jax.jit(family.train_step)(state, batch)
  for e, p in zip(jax.tree.leaves(state.ema_params),
                  jax.tree.leaves(state.params["generator"])):
    np.testing.assert_array_equal(e, p)


# ------------------------------------------------------------------- sampling
def test_sampling_uses_ema_or_raw_params_and_the_running_statistics(fast_compile):
  config = shrink(load("gan_digits"))
  family = make_family(config)
  batch = random_batch(config)
  state = family.init(jax.random.PRNGKey(0), batch)
  state, _ = jax.jit(family.train_step)(state, batch)
  ema = family.sampling_params(state, use_ema=True)
  raw = family.sampling_params(state, use_ema=False)
  assert ema["params"] is state.ema_params
  assert raw["params"] is state.params["generator"]
  assert ema["model_state"] is state.model_state["generator"]
  sample = jax.jit(family.sample, static_argnums=2)
  a = sample(raw, jax.random.PRNGKey(3), 6)
  np.testing.assert_array_equal(a, sample(raw, jax.random.PRNGKey(3), 6))   # deterministic
  assert not np.array_equal(a, sample(raw, jax.random.PRNGKey(4), 6))
  settings = family.sampler_settings()
  assert settings["nfe"] == 1 and settings["sampler"] == "generator"


def test_truncated_latents_stay_within_the_threshold():
  config = mlp_config()
  config.sampling.truncation = 0.5
  family = tiny_family(config)
  z = family.sample_latents(jax.random.PRNGKey(0), 1000, truncation=0.5)
  assert float(jnp.max(jnp.abs(z))) <= 0.5
  assert float(jnp.std(z)) > 0.2


# ------------------------------------------------------------------ end to end
@pytest.fixture
def register_family(monkeypatch):
  monkeypatch.setitem(families.FAMILIES, "gan", gan_lib.GAN)


@pytest.mark.integration
def test_train_evaluate_and_sample_through_the_loop(register_family, tmp_path,
                                                    fast_compile):
  config = shrink(load("gan_digits", "runlocal"), width=4)
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.training.async_checkpointing = False
  workdir = str(tmp_path)
  state = loop.train_and_evaluate(config, workdir)
  steps = config.training.num_train_steps
  assert int(state.step) == steps
  assert os.path.exists(os.path.join(workdir, "samples", f"train_step_{steps:08d}.png"))
  with open(os.path.join(workdir, "eval", f"step_{steps:08d}.json")) as f:
    report = json.load(f)
  assert report["step"] == steps and "bpd_vlb" not in report
  directory = modes.sample(config, workdir)
  images = np.load(os.path.join(directory, "samples.npz"))["arr_0"]
  assert images.shape == (config.eval.num_samples, 8, 8, 1) and images.dtype == np.uint8
