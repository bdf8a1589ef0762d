"""The family contract: every family subclasses contract.Family, its capabilities are
read once, and what a family lacks is named in one line."""

import importlib
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from models import distributions
from train import contract, families, loop, modes, optim
from train.state import TrainState

# Each family's digits config and the capabilities it must report.
EXPECTED = {
    "ddpm_digits": ("ddpm", {"likelihood", "conditional", "editable"}),
    "guided_ddpm_digits": ("ddpm", {"likelihood", "conditional", "editable"}),
    "score_digits": ("score", {"likelihood", "conditional", "editable", "counts_nfe"}),
    "vdm_digits": ("vdm", {"likelihood"}),
    "pixelcnn_digits": ("autoregressive", {"likelihood"}),
    "vae_digits": ("vae", {"likelihood", "image_grids"}),
    "hvae_digits": ("hvae", {"likelihood", "image_grids"}),
    "vqvae_digits": ("vqvae", {"likelihood", "image_grids"}),
    "gan_digits": ("gan", set()),
}


def _family(config_name):
  config = importlib.import_module(f"configs.{config_name}").get_config()
  return families.build_family(config, (8, 8, 1), 10)


@pytest.mark.parametrize("config_name", sorted(EXPECTED))
def test_every_family_reports_its_capabilities(config_name):
  name, expected = EXPECTED[config_name]
  family, caps = _family(config_name)
  assert isinstance(family, contract.Family)
  assert caps.family == name
  have = {key for key in contract.CAPABILITIES if getattr(caps, key)}
  assert have == expected


def test_every_registered_family_subclasses_the_contract():
  assert set(families.FAMILIES) == {name for name, _ in EXPECTED.values()}
  for cls in families.FAMILIES.values():
    assert issubclass(cls, contract.Family), cls


def test_a_family_missing_a_required_method_cannot_be_built():
  class NoSampler(contract.Family):
    def init(self, rng, example_batch):
      del rng, example_batch

    def train_step(self, state, batch):
      return state, {}

    def sampler_settings(self):
      return {}

  with pytest.raises(TypeError, match="sample"):
    NoSampler()


def test_an_object_outside_the_contract_is_refused():
  with pytest.raises(TypeError, match="does not subclass"):
    contract.capabilities(object(), "mine")


def test_require_names_the_missing_capability():
  _, caps = _family("gan_digits")
  with pytest.raises(ValueError, match=r"Editable capability \(edit_eps_fn, "
                                       r"edit_process\).*'gan'"):
    contract.require(caps, "editable", "--edit")
  _, caps = _family("ddpm_digits")
  contract.require(caps, "editable", "--edit")     # no error


def test_default_sampling_params_follow_use_ema():
  family, _ = _family("ddpm_digits")
  params, ema = dict(w=jnp.zeros(2)), dict(w=jnp.ones(2))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema,
                     opt_state=(), rng=jax.random.PRNGKey(0))
  assert family.sampling_params(state, use_ema=True) is ema
  assert family.sampling_params(state, use_ema=False) is params


# ------------------------------------------- the smallest family, through the loop
# Independent 256-way categoricals per sub-pixel: the whole contract in ~30 lines.
class PixelMarginals(contract.Family):
  """p(x) = prod_i Categorical(x_i; softmax(logits_i)): exact bits/dim, no network."""

  def __init__(self, config, image_shape, num_classes):
    del num_classes
    self.config, self.image_shape = config, tuple(image_shape)
    self.tx = optim.make_optimizer(config.optim)

  def init(self, rng, example_batch):
    del example_batch
    params = dict(logits=jnp.zeros((*self.image_shape, 256), jnp.float32))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=self.tx.init(params), rng=rng, tx=self.tx)

  def eval_step(self, params, batch, rng):
    del rng
    x = batch["image"]
    logits = jnp.broadcast_to(params["logits"], (*x.shape, 256))
    log_p = distributions.categorical_log_likelihood(x, logits)
    nats = -jnp.sum(log_p, axis=(1, 2, 3))
    return dict(bpd=distributions.nats_to_bits_per_dim(nats, math.prod(self.image_shape)))

  def train_step(self, state, batch):
    loss_fn = lambda p: jnp.mean(self.eval_step(p, batch, None)["bpd"])  # noqa: E731
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return optim.apply_gradients(state, grads, self.config.optim, loss=loss)

  def sample(self, params, rng, num_samples):
    shape = (num_samples, *self.image_shape)
    return jax.random.categorical(rng, params["logits"], shape=shape).astype(jnp.uint8)

  def sampler_settings(self):
    return dict(sampler="independent_categorical", nfe=1)


def test_the_smallest_family_runs_through_the_loop(tmp_path, monkeypatch, fast_compile):
  """A family that only follows the contract trains, checkpoints, resumes, evaluates
  and samples through the loop: before training its bound is exactly 8 bits/dim (a
  uniform categorical), after a few steps it is lower."""
  monkeypatch.setitem(families.FAMILIES, "pixel_marginals", PixelMarginals)
  # configs/default.py is all such a family needs: it reads no field of its own.
  config = default.get_config()
  config.model.family = "pixel_marginals"
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.optim.learning_rate, config.optim.warmup_steps = 0.05, 0
  config.sampling.use_ema = False
  t = config.training
  t.batch_size, t.num_train_steps, t.async_checkpointing = 8, 0, False
  t.log_every_steps = t.checkpoint_every_steps = 2
  t.sample_every_steps = 0
  config.eval.num_eval_examples, config.eval.batch_size, config.eval.num_samples = 16, 8, 6
  config.eval.sample_metrics = "none"
  config.sampling.batch_size = 4
  loop.train_and_evaluate(config, str(tmp_path / "untrained"))
  report = json.loads((tmp_path / "untrained" / "eval" / "step_00000000.json").read_text())
  assert report["bpd"] == pytest.approx(8.0, abs=1e-5)
  config.training.num_train_steps = 4
  loop.train_and_evaluate(config, str(tmp_path / "trained"))
  report = json.loads((tmp_path / "trained" / "eval" / "step_00000004.json").read_text())
  assert report["bpd"] < 7.9
  directory = modes.sample(config, str(tmp_path / "trained"))
  with np.load(os.path.join(directory, "samples.npz")) as samples:
    assert samples["arr_0"].shape == (config.eval.num_samples, 8, 8, 1)
