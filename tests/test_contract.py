"""The family contract: every family subclasses contract.Family, its capabilities are
read once, and what a family lacks is named in one line."""

import importlib

import jax
import pytest

from train import contract, families

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
  state = family.init(jax.random.PRNGKey(0), dict(
      image=jax.numpy.zeros((1, 8, 8, 1), jax.numpy.uint8),
      label=jax.numpy.zeros((1,), jax.numpy.int32)))
  state = state.replace(ema_params=jax.tree.map(lambda x: x + 1, state.params))
  assert family.sampling_params(state, use_ema=True) is state.ema_params
  assert family.sampling_params(state, use_ema=False) is state.params
