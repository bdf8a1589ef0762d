"""Every config in configs/ loads, names what scripts rely on, and trains a step."""

import glob
import importlib
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from models import hvae as hvae_models
from models import ncsnpp
from train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(os.path.basename(p)[:-3]
                      for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                      if os.path.basename(p) not in ("__init__.py", "bases.py",
                                                     "config_args.py"))
# Shared bases that experiment configs build on; they name no experiment.
BASES = {n for n in CONFIG_NAMES if n == "default" or n.endswith("_base")}
EXPERIMENTS = [n for n in CONFIG_NAMES if n not in BASES]
REQUIRED_FIELDS = ("seed", "data.dataset", "data.data_dir", "training.batch_size",
                   "training.num_train_steps", "training.log_every_steps",
                   "training.checkpoint_every_steps", "training.sample_every_steps",
                   "eval.num_samples")


def load(name, arg=None):
  module = importlib.import_module(f"configs.{name}")
  return module.get_config(arg) if arg else module.get_config()


def get_field(config, dotted):
  for part in dotted.split("."):
    config = config[part]
  return config


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_has_the_fields_scripts_rely_on(name):
  config = load(name)
  for field in REQUIRED_FIELDS:
    get_field(config, field)   # raises if missing
  module = importlib.import_module(f"configs.{name}")
  if name in EXPERIMENTS:
    assert "python main.py --config=configs/" + name in module.__doc__


def test_ddpm_cifar_has_the_papers_hyperparameters():
  c = load("ddpm_cifar")
  assert (c.diffusion.num_timesteps, c.diffusion.beta_schedule, c.diffusion.beta_start,
          c.diffusion.beta_end) == (1000, "linear", 1e-4, 0.02)
  assert (c.model.ch, tuple(c.model.ch_mult), c.model.num_res_blocks,
          tuple(c.model.attn_resolutions), c.model.dropout) == (128, (1, 2, 2, 2), 2,
                                                                (16,), 0.1)
  assert (c.optim.optimizer, c.optim.learning_rate, c.optim.warmup_steps,
          c.optim.grad_clip_norm, c.optim.ema_decay) == ("adam", 2e-4, 5000, 1.0, 0.9999)
  assert (c.training.batch_size, c.training.num_train_steps, c.data.random_flip,
          c.data.dataset) == (128, 800_000, True, "cifar10")


@pytest.mark.parametrize("arg, arch", [("", "ddpmpp"), ("ncsnpp", "ncsnpp")])
def test_edm_cifar_writes_out_the_edm_networks(arg, arch):
  """configs/edm_cifar.py spells EDM's networks out (a config imports no model
  code): the same SongUNet fields as models/ncsnpp.py's EDM_CIFAR10."""
  m = load("edm_cifar", arg).model
  assert m.name == "songunet"
  fields = dict(
      model_channels=m.ch, channel_mult=tuple(m.ch_mult), num_blocks=m.num_res_blocks,
      attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
      augment_dim=m.augment_dim, channel_mult_noise=m.channel_mult_noise,
      encoder_type=m.encoder_type, decoder_type=m.decoder_type,
      resample_filter=tuple(m.fir_kernel), embedding_type=m.embedding_type,
      channel_mult_emb=ncsnpp.SongUNet.channel_mult_emb)   # not a config field
  assert fields == ncsnpp.EDM_CIFAR10[arch]


# The deepest paper networks take 30-50 s each to compile even at ch=8: their step runs
# with `pytest -m slow`. In CI their families' tests build them at full size (parameter
# counts) and train the same families' digits configs here.
SLOW_TO_COMPILE = ("ncsnpp_cifar", "ddpmpp_cifar", "edm_cifar", "vdvae_cifar", "iddpm_cifar",
                   "pixelcnnpp_cifar", "ncsnpp_256")
# Trained through the loop from these very config files by their family's tests:
# tests/test_conditioning.py (ddpm_shapes_text, sr3_digits), tests/test_hvae.py
# (hvae_digits), tests/test_iddpm.py (iddpm_digits), tests/test_train_loop.py's CLI
# run (ddpm_digits), tests/test_vae.py (vae_digits).
COVERED_ELSEWHERE = ("ddpm_shapes_text", "sr3_digits", "hvae_digits", "iddpm_digits",
                     "ddpm_digits", "vae_digits")
# ddpm_church256's network and loop on other datasets (configs.ddpm_church256.ddpm_256
# builds all four; a 256x256 step takes 20 s even at ch=8): ddpm_church256 trains here.
SAME_AS_DDPM_CHURCH256 = ("ddpm_bedroom256", "ddpm_cat256", "ddpm_celebahq256")
# FFHQ has no tfds builder (nothing to mock): the 1024x1024 network is built at full size
# (jax.eval_shape) by tests/test_convert_score.py; its runlocal variant is ncsnpp_256's.
NEEDS_A_USER_DATASET = ("ncsnpp_ffhq1024",)


# A step through the loop for each config: integration (each family's contract and
# mathematics are tested at small shapes in its own test file).
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow)
    if n in SLOW_TO_COMPILE + COVERED_ELSEWHERE + SAME_AS_DDPM_CHURCH256 else
    pytest.param(n, marks=pytest.mark.integration)
    for n in EXPERIMENTS if n not in NEEDS_A_USER_DATASET])
def test_config_trains_one_step_on_tiny_shapes(name, tmp_path, fast_compile):
  """The config's own structure (levels, attention, schedule) with tiny widths."""
  with tfds.testing.mock_data(num_examples=8):
    state = loop.train_and_evaluate(tiny(load(name)), str(tmp_path))
  assert int(state.step) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.startswith("vqvae_")])
@pytest.mark.integration
def test_vqvae_prior_stage_trains_one_step(name, tmp_path, fast_compile):
  """Stage 2 restores a stage-1 workdir, freezes it and trains the code prior."""
  with tfds.testing.mock_data(num_examples=8):
    loop.train_and_evaluate(tiny(load(name)), str(tmp_path / "stage1"))
    # The Gated PixelCNN prior needs ch >= vq.latents_per_position (10 for CIFAR).
    config = tiny(load(name, "prior"), ch=16)
    config.vq.autoencoder_workdir = str(tmp_path / "stage1")
    state = loop.train_and_evaluate(config, str(tmp_path / "prior"))
  assert int(state.step) == 1


def tiny(config, ch=8):
  """`config` with tiny widths and one step; its structure (levels, attention) kept."""
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.model.ch = ch
  if "num_groups" in config.model:
    config.model.num_groups = 4
  for depth_field in ("num_layers", "nr_resnet", "num_res_blocks"):
    if depth_field in config.model:
      config.model[depth_field] = 1   # keeps the structure, cuts compile time
  if "diffusion" in config:
    config.diffusion.num_timesteps = 4
  if config.model.family == "ddpm" and config.sampling.num_steps:  # respaced, within T=4
    config.sampling.num_steps = 2
  config.eval.quick_sampling = ""     # the quick sampler's steps (ddpm_digits: 50) > T
  t = config.training
  t.batch_size = 2
  t.num_train_steps = 1
  t.steps_per_call = 1
  t.log_every_steps = t.checkpoint_every_steps = 1
  t.sample_every_steps = 0
  t.async_checkpointing = False
  config.eval.num_eval_examples = 2
  config.eval.batch_size = 2
  if "vlb_timestep_chunk" in config.eval:
    config.eval.vlb_timestep_chunk = 2
  config.eval.sample_metrics = "none"   # FID needs the Inception weights file
  if "gan" in config:                 # n_critic discriminator chunks per step
    t.batch_size = 2 * config.gan.n_critic
    config.gan.g_batch_size = 2 if config.gan.g_batch_size else 0
    for field, value in (("d_ch", 8), ("z_dim", 8), ("w_dim", 8), ("mbstd_group_size", 2)):
      if field in config.model:
        config.model[field] = value
  if "hvae" in config:   # VDVAE's 76 blocks: one block per stage keeps the structure
    for field in ("enc_blocks", "dec_blocks"):
      config.hvae[field] = hvae_models.cap_repeats(config.hvae[field], 1)
  if "ode_rtol" in config.eval:       # score family: a loose likelihood ODE
    config.eval.ode_rtol = config.eval.ode_atol = 1e-2
  return config
