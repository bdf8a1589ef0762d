"""python -m convert: a diffusers UNet2DModel folder -> a workdir that main.py samples.

The reference is diffusers' own UNet2DModel in the published google/ddpm-cifar10-32
configuration (narrower where noted), with seeded random weights, written by its own
save_pretrained: the converted project network must give its outputs on the same
(x, t). Malformed folders must fail with one line naming the problem, before anything
is written.
"""

import hashlib
import inspect
import json
import os
import shutil
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import safetensors.numpy  # noqa: E402  (installed with diffusers)

from configs import bases, ddpm_cifar  # noqa: E402
from convert import __main__ as cli  # noqa: E402
from convert import diffusers_unet  # noqa: E402
from convert import workdir as workdir_lib  # noqa: E402
from train import modes  # noqa: E402
from train.workdir_guard import check_workdir_config  # noqa: E402
from tests.convert_testing import (  # noqa: E402
    assert_converting_again_is_refused, assert_fails_before_writing, assert_same_params,
    cli_flags, family_and_abstract_params, restore, save_code_pickle, write_first_half)

IMAGE_SHAPE = (32, 32, 3)
# google/ddpm-cifar10-32's config.json.
PUBLISHED = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, norm_eps=1e-6, norm_num_groups=32, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1, time_embedding_type="positional", act_fn="silu",
    center_input_sample=False, dropout=0.0)
SMALL = dict(block_out_channels=(32, 64, 64, 64), norm_num_groups=8)
NUM_TENSORS = 328       # of the published layout, whatever the widths
TOLERANCE = 1e-4        # float32: the sinusoid's angles round differently (t up to 999)


def make_unet(seed: int = 0, **overrides):
  torch.manual_seed(seed)
  unet = diffusers.UNet2DModel(**{**PUBLISHED, **overrides})
  with torch.no_grad():   # no zero-initialised layer that would hide a mis-mapped one
    for p in unet.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return unet.eval()


def project_config(ch: int = 32, num_groups: int = 8):
  config = ddpm_cifar.get_config()
  config.model.ch, config.model.num_groups = ch, num_groups
  return config


def family_and_params(config):
  return family_and_abstract_params(config, IMAGE_SHAPE)


def max_output_difference(family, params, unet) -> float:
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, *IMAGE_SHAPE)).astype(np.float32)
  t = np.array([0, 17, 500, 999], np.int32)
  ours = np.asarray(family.model.apply({"params": params}, x, t, None, train=False))
  with torch.no_grad():
    theirs = unet(torch.from_numpy(x).permute(0, 3, 1, 2),
                  torch.from_numpy(t).long()).sample.permute(0, 2, 3, 1).numpy()
  assert np.abs(theirs).max() > 0.1   # a real output, not a zero-initialised one
  return float(np.abs(ours - theirs).max())


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """(diffusers U-Net, its save_pretrained folder, the converted params)."""
  unet = make_unet(**SMALL)
  folder = str(tmp_path_factory.mktemp("small"))
  unet.save_pretrained(folder)
  config = project_config()
  _, abstract = family_and_params(config)
  converted = diffusers_unet.convert(folder, config.model, config.diffusion, IMAGE_SHAPE,
                                     abstract)
  return unet, folder, converted


def test_defaults_are_diffusers():
  """A field config.json leaves out takes diffusers' default: the tables agree."""
  for cls, table in ((diffusers.UNet2DModel, diffusers_unet.UNET_DEFAULTS),
                     (diffusers.DDPMScheduler, diffusers_unet.SCHEDULER_DEFAULTS)):
    signature = inspect.signature(cls.__init__).parameters
    for name, value in table.items():
      assert signature[name].default == value, (cls.__name__, name)


@pytest.mark.integration
def test_safetensors_output_equals_diffusers(small):
  unet, folder, converted = small
  assert sorted(os.listdir(folder)) == ["config.json", "diffusion_pytorch_model.safetensors"]
  assert converted.num_tensors == NUM_TENSORS == len(unet.state_dict())
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    assert converted.files[os.path.abspath(os.path.join(folder, name))] == digest
  family, _ = family_and_params(project_config())
  difference = max_output_difference(family, converted.params, unet)
  assert difference < TOLERANCE, f"max |project - diffusers| = {difference:.3g}"


def test_bin_and_old_attention_names_give_the_same_params(small, tmp_path):
  unet, folder, converted = small
  config = project_config()
  _, abstract = family_and_params(config)
  bin_folder = tmp_path / "bin"
  unet.save_pretrained(bin_folder, safe_serialization=False)
  assert "diffusion_pytorch_model.bin" in os.listdir(bin_folder)
  from_bin = diffusers_unet.convert(str(bin_folder), config.model, config.diffusion,
                                    IMAGE_SHAPE, abstract)
  assert_same_params(from_bin.params, converted.params)
  # Checkpoints saved before diffusers 0.14 (the published ones) name attention
  # query/key/value/proj_attn.
  old = tmp_path / "old"
  old.mkdir()
  shutil.copy(os.path.join(folder, "config.json"), old)
  tensors = safetensors.numpy.load_file(
      os.path.join(folder, "diffusion_pytorch_model.safetensors"))
  renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  renamed = {}
  for name, value in tensors.items():
    for new, previous in renames.items():
      name = name.replace(f".attentions.0.{new}.", f".attentions.0.{previous}.")
    renamed[name] = value
  assert any(".query." in n for n in renamed) and any(".proj_attn." in n for n in renamed)
  safetensors.numpy.save_file(renamed, str(old / "diffusion_pytorch_model.safetensors"))
  from_old = diffusers_unet.convert(str(old), config.model, config.diffusion,
                                    IMAGE_SHAPE, abstract)
  assert_same_params(from_old.params, converted.params)


@pytest.mark.integration
def test_published_widths_output_equals_diffusers(tmp_path):
  """The published network itself (35.7M parameters), random weights."""
  start = time.time()
  unet = make_unet(seed=1)
  unet.save_pretrained(tmp_path)
  config = project_config(ch=128, num_groups=32)
  family, abstract = family_and_params(config)
  converted = diffusers_unet.convert(str(tmp_path), config.model, config.diffusion,
                                     IMAGE_SHAPE, abstract)
  assert converted.num_tensors == NUM_TENSORS
  assert sum(x.size for x in jax.tree.leaves(converted.params)) == 35_746_307
  difference = max_output_difference(family, converted.params, unet)
  assert difference < TOLERANCE, f"max |project - diffusers| = {difference:.3g}"
  print(f"published widths: max |project - diffusers| = {difference:.3g} "
        f"({time.time() - start:.1f} s)")


def _flags(source, workdir, *overrides) -> flags.FlagValues:
  return cli_flags("diffusers", source, "ddpm_cifar.py", workdir,
                   "--config.model.ch=32", "--config.model.num_groups=8", *overrides)


@pytest.mark.integration
def test_converted_pipeline_samples_through_main_modes(small, tmp_path, fast_compile):
  """A pipeline folder (unet/ + scheduler/) through the command line; sampling reads the
  workdir unchanged; a second conversion into it is refused."""
  unet, _, converted = small
  source = tmp_path / "pipeline"
  diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(
      source)
  assert {"unet", "scheduler"} <= set(os.listdir(source))
  workdir = str(tmp_path / "workdir")
  # Two respaced steps per sample: the network runs twice.
  flag_values = _flags(source, workdir, "--config.sampling.num_steps=2",
                       "--config.eval.num_samples=4", "--config.sampling.batch_size=4")
  config = flag_values.config
  with tfds.testing.mock_data(num_examples=8):
    metadata = cli.run(flag_values)
    record = metadata["converted_from"]
    assert record["format"] == "diffusers" and record["num_tensors"] == NUM_TENSORS
    assert record["scheduler_config"]["num_train_timesteps"] == 1000
    assert len(record["files"]) == 3   # config.json, the weights, scheduler_config.json
    for path, digest in record["files"].items():
      with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest, path
    # The guard accepts the workdir for main.py's later runs of this config.
    assert os.path.isfile(os.path.join(workdir, "config.json"))
    check_workdir_config(config, workdir, bases.base_config("ddpm"))

    state = restore(config, workdir)
    assert int(state.step) == 0
    assert_same_params(state.params, converted.params)
    assert_same_params(state.ema_params, converted.params)

    directory = modes.sample(config, workdir)
    with np.load(os.path.join(directory, "samples.npz")) as samples:
      assert samples["arr_0"].shape == (4, *IMAGE_SHAPE)
      assert samples["arr_0"].dtype == np.uint8

    assert_converting_again_is_refused(_flags(source, workdir))


def _malformed(tmp_path, folder, case) -> str:
  """A copy of `folder` broken in one way; returns its path."""
  source = tmp_path / "source"
  source.mkdir()
  shutil.copy(os.path.join(folder, "config.json"), source)
  weights = os.path.join(folder, "diffusion_pytorch_model.safetensors")
  tensors = safetensors.numpy.load_file(weights)
  if case == "truncated":
    write_first_half(weights, source / "diffusion_pytorch_model.safetensors")
    return str(source)
  if case == "code":
    save_code_pickle(source / "diffusion_pytorch_model.bin", "conv_in.weight", tmp_path)
    return str(source)
  if case == "missing":
    del tensors["conv_out.bias"]
  elif case == "extra":
    tensors["extra.weight"] = np.zeros((3,), np.float32)
  elif case == "shape":
    tensors["conv_in.weight"] = tensors["conv_in.weight"][:, :, :2, :]
  safetensors.numpy.save_file(tensors, str(source / "diffusion_pytorch_model.safetensors"))
  return str(source)


@pytest.mark.parametrize("case,match", [
    ("missing", r"tensor 'conv_out.bias' \(the project's conv_out/bias\) is missing"),
    ("extra", r"tensor 'extra.weight' has no place in the project's network"),
    ("shape", r"tensor 'conv_in.weight' has shape \(32, 3, 2, 3\), but the project's "
              r"conv_in/kernel needs \(32, 3, 3, 3\)"),
    ("truncated", r"is not a readable safetensors file"),
    ("code", r"(?i)holds more than tensors and is refused .*unsupported global"),
])
def test_malformed_sources_fail_before_writing(small, tmp_path, case, match):
  _, folder, _ = small
  source = _malformed(tmp_path, folder, case)
  assert_fails_before_writing(tmp_path, project_config(), source, "diffusers", match)


@pytest.mark.parametrize("field,value,match", [
    ("downsample_padding", 1, "downsample_padding=1"),
    ("norm_eps", 1e-5, "norm_eps=1e-05"),
    ("flip_sin_to_cos", True, "flip_sin_to_cos=True"),
    ("freq_shift", None, "freq_shift=0"),        # left out: diffusers' default, 0
    ("attention_head_dim", 8, "attention_head_dim=8"),
    ("norm_num_groups", 16, "norm_num_groups=16"),
    ("block_out_channels", [32, 64, 64, 128], "block_out_channels="),
    ("up_block_types", ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
     "up_block_types="),
])
def test_configs_the_project_cannot_hold_exactly_fail(small, tmp_path, field, value, match):
  _, folder, _ = small
  source = tmp_path / "source"
  shutil.copytree(folder, source)
  config_path = source / "config.json"
  unet_config = json.loads(config_path.read_text())
  if value is None:
    del unet_config[field]
  else:
    unet_config[field] = value
  config_path.write_text(json.dumps(unet_config))
  config = project_config()
  _, abstract = family_and_params(config)
  with pytest.raises(ValueError, match=match):
    diffusers_unet.convert(str(source), config.model, config.diffusion, IMAGE_SHAPE,
                           abstract)


def test_scheduler_must_match_the_forward_process():
  diffusion = project_config().diffusion
  diffusers_unet.check_scheduler_config(
      dict(diffusers.DDPMScheduler().config), diffusion, "s.json")
  for field, value in (("num_train_timesteps", 250), ("beta_end", 0.03),
                       ("beta_schedule", "scaled_linear"),
                       ("prediction_type", "v_prediction")):
    with pytest.raises(ValueError, match=field):
      diffusers_unet.check_scheduler_config({field: value}, diffusion, "s.json")


def test_only_the_ddpm_family_converts(small, tmp_path):
  config = bases.base_config("vae")
  with pytest.raises(ValueError, match=r"family in \('ddpm',\), not 'vae'"):
    workdir_lib.convert_to_workdir(config, str(tmp_path / "w"), small[1])
  assert not (tmp_path / "w").exists()
