"""benchmarks/throughput.py's memory report: XLA's buffer assignment of the train step."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from configs import ddpm_digits
from train import families

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "throughput.py")


@pytest.fixture(scope="module")
def throughput():
  spec = importlib.util.spec_from_file_location("throughput_benchmark", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _family(**model):
  config = ddpm_digits.get_config()
  config.model.update(dict(ch=16, num_res_blocks=1, num_groups=4), **model)
  return config, families.get_family(config, (8, 8, 1), 0)


@pytest.mark.slow   # three train-step compilations: ~30 s on 2 cores
def test_memory_grows_with_the_batch_and_remat_saves_activation_memory(throughput,
                                                                       fast_compile):
  config, family = _family()
  small, large = (throughput.train_step_memory(family, config, (8, 8, 1), b)
                  for b in (8, 64))
  # The state (params, EMA, Adam moments: 4 copies of float32 params) is an argument
  # of either size and is donated; the activations grow with the batch.
  num_params = sum(x.size for x in jax.tree.leaves(
      jax.eval_shape(family.init, jax.random.PRNGKey(0), dict(
          image=jax.ShapeDtypeStruct((1, 8, 8, 1), "uint8"),
          label=jax.ShapeDtypeStruct((1,), "int32"))).params))
  assert small["alias"] >= 4 * 4 * num_params
  assert large["temp"] > small["temp"] and large["peak"] > small["peak"]
  _, remat_family = _family(remat=True)
  remat_large = throughput.train_step_memory(remat_family, config, (8, 8, 1), 64)
  assert remat_large["temp"] < large["temp"], (remat_large, large)


@pytest.mark.integration
def test_memory_report_prints_per_image_figures(throughput, capsys, fast_compile):
  config, family = _family()
  throughput.memory_report(family, config, (8, 8, 1), ["8", "16"], 2**30)
  out = capsys.readouterr().out
  assert "MiB per training image" in out and "largest global batch in 1 GiB" in out
  with pytest.raises(ValueError, match="two or more"):
    throughput.memory_report(family, config, (8, 8, 1), ["8"], 2**30)


@pytest.mark.integration
def test_caption_model_gets_random_caption_factors(throughput, fast_compile):
  """A caption-conditioned config compiles: its batch carries colour and position."""
  from configs import ddpm_shapes_text  # pylint: disable=g-import-not-at-top
  config = ddpm_shapes_text.get_config()
  config.model.update(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                      num_groups=2)
  config.text.update(width=8, num_layers=1, num_heads=2)
  labels = throughput.random_labels(config, 64, np.random.default_rng(0))
  assert sorted(labels) == ["colour", "label", "position"]
  assert [int(labels[k].max()) < n for k, n in (("label", 4), ("colour", 6),
                                               ("position", 9))] == [True] * 3
  family = families.get_family(config, (16, 16, 3), 0)
  memory = throughput.train_step_memory(family, config, (16, 16, 3), 4)
  assert memory["temp"] > 0
