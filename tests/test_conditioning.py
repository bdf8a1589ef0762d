"""Guidance, caption conditioning, editing and SR3 wired into the DDPM family and CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import guided_ddpm_digits, ddpm_shapes_text, sr3_digits
from datasets import captions, shapes, transforms
from sampling import ddpm as ddpm_sampling
from sampling import image_io
from train import ddpm as ddpm_family
from train import edit_mode as edit_lib
from train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(config, num_train_steps=2):
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.data.image_size = None
  m = config.model
  m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.num_groups = 8, (1, 2), 1, (), 4
  m.dropout = 0.0
  config.diffusion.num_timesteps = 6
  config.optim.warmup_steps = 0
  t = config.training
  t.batch_size, t.num_train_steps = 4, num_train_steps
  t.log_every_steps = t.checkpoint_every_steps = num_train_steps
  t.sample_every_steps = 0
  t.async_checkpointing = False
  config.eval.num_eval_examples = 4
  config.eval.batch_size = 4
  config.eval.vlb_timestep_chunk = 3
  config.eval.sample_metrics = "none"
  config.sampling.batch_size = 4
  config.eval.quick_sampling = ""    # ddpm_digits' quick DDIM-50 needs T >= 50
  if config.text.enabled:
    config.text.width, config.text.num_layers, config.text.num_heads = 16, 1, 2
  return config


def _family(config, image_shape, num_classes):
  family = ddpm_family.DDPM(config, image_shape, num_classes)
  h, w, c = image_shape
  state = family.init(jax.random.PRNGKey(0), dict(image=np.zeros((1, h, w, c), np.uint8),
                                                  label=np.zeros((1,), np.int32)))
  return family, state


def _digits_batch(n=4):
  rng = np.random.default_rng(0)
  return dict(image=rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
              label=np.arange(n, dtype=np.int32) % 10)


# ------------------------------------------------------------------ guidance
def test_guidance_weight_zero_is_the_plain_conditional_sampler(fast_compile):
  config = _tiny(guided_ddpm_digits.get_config())
  config.guidance.weight = 0.0
  family, state = _family(config, (8, 8, 1), 10)
  state, _ = jax.jit(family.train_step)(state, _digits_batch())   # non-zero conv_out
  rng = jax.random.PRNGKey(3)
  sample = jax.jit(family.sample, static_argnums=2)
  guided_off = np.asarray(sample(state.params, rng, 4))
  # The plain conditional path, written out: the network at the cycling labels.
  labels = jnp.arange(4, dtype=jnp.int32)
  plain = transforms.centered_to_uint8(ddpm_sampling.ancestral_sample(
      family.eps_fn(state.params, labels), family.diffusion, rng, (4, 8, 8, 1),
      var_type="fixedlarge", clip_denoised=True).images)
  np.testing.assert_array_equal(guided_off, np.asarray(plain))
  # A positive weight changes the samples and doubles the network passes.
  config.guidance.weight = 3.0
  guided = ddpm_family.DDPM(config, (8, 8, 1), 10)
  assert not np.array_equal(
      np.asarray(jax.jit(guided.sample, static_argnums=2)(state.params, rng, 4)),
      guided_off)
  settings = guided.sampler_settings()
  assert settings["guidance_weight"] == 3.0 and settings["p_uncond"] == 0.1
  assert settings["nfe_per_sample_network_passes"] == 2 * settings["nfe"]


def test_label_dropout_replaces_labels_by_the_null_label_in_the_loss(fast_compile):
  config = _tiny(guided_ddpm_digits.get_config())
  family, state = _family(config, (8, 8, 1), 10)
  state, _ = jax.jit(family.train_step)(state, _digits_batch())
  batch = _digits_batch()
  null_batch = dict(batch, label=np.full((4,), 10, np.int32))   # 10 = the null row
  rng = jax.random.PRNGKey(5)

  def loss(p_uncond, b):
    config.guidance.p_uncond = p_uncond
    return float(ddpm_family.DDPM(config, (8, 8, 1), 10).loss(state.params, b, rng))

  assert loss(1.0, batch) == loss(0.0, null_batch)      # every label dropped
  assert loss(0.0, batch) != loss(0.0, null_batch)      # the label matters
  # Dropout draws its own key: the t and noise of an undropped run are kept.
  assert loss(1e-9, batch) == loss(0.0, batch)


def test_bad_guidance_settings_raise():
  config = _tiny(guided_ddpm_digits.get_config())
  config.model.conditional = False
  with pytest.raises(ValueError, match="conditional model"):
    ddpm_family.DDPM(config, (8, 8, 1), 10)
  config = _tiny(guided_ddpm_digits.get_config())
  config.guidance.weight = -1.0
  with pytest.raises(ValueError, match="guidance.weight"):
    ddpm_family.DDPM(config, (8, 8, 1), 10)
  config = _tiny(ddpm_shapes_text.get_config())
  config.data.dataset = "digits"
  with pytest.raises(ValueError, match="captions"):
    ddpm_family.DDPM(config, (8, 8, 1), 10)


# --------------------------------------------------------- text conditioning
def _shapes_batch(n=4):
  rng = np.random.default_rng(1)
  return dict(image=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
              label=rng.integers(0, 4, n).astype(np.int32),
              colour=rng.integers(0, 6, n).astype(np.int32),
              position=rng.integers(0, 9, n).astype(np.int32))


# Trains jointly and samples: the integration tier (tests/test_text_encoder.py checks
# the encoder and its context in the default one).
@pytest.mark.integration
@pytest.mark.parametrize("cross_attention", [False, True])
def test_caption_model_trains_jointly_and_samples_a_prompt(cross_attention, fast_compile):
  config = _tiny(ddpm_shapes_text.get_config())
  config.text.cross_attention = cross_attention
  family, state = _family(config, (8, 8, 3), 4)
  assert "encoder" in state.params and "network" in state.params
  assert ("context_k" in state.params["network"]["mid_attn"]) == cross_attention
  step = jax.jit(family.train_step)
  new_state = state
  for _ in range(2):   # conv_out starts at 0: the encoder learns from step 2 on
    new_state, metrics = step(new_state, _shapes_batch())
  assert np.isfinite(float(metrics["loss"]))
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                       state.params["encoder"], new_state.params["encoder"])
  assert max(jax.tree.leaves(moved)) > 0
  # The batch's captions are the dataset's: tokens_from_factors of its factors.
  batch = _shapes_batch()
  decoded = captions.detokenize(np.asarray(family.condition(batch)))
  assert decoded[0].split()[2] == ("circle", "square", "triangle", "cross")[
      batch["label"][0]]
  sample = jax.jit(family.sample_with_condition, static_argnums=3)
  rng = jax.random.PRNGKey(0)
  blue = sample(new_state.params, rng,
                jnp.asarray(captions.tokenize(["a blue square at bottom right"] * 2)), 2)
  red = sample(new_state.params, rng,
               jnp.asarray(captions.tokenize(["a red circle at top left"] * 2)), 2)
  assert blue.shape == (2, 8, 8, 3) and blue.dtype == jnp.uint8
  assert not np.array_equal(np.asarray(blue), np.asarray(red))   # the prompt matters
  # Default samples cycle through every caption, each factor balanced.
  f = shapes.cycling_caption_factors(216)
  combos = set(zip(*(np.asarray(f[k]).tolist() for k in ("shape", "colour", "position"))))
  assert len(combos) == 216


# ----------------------------------------------------- end to end (loop + CLI)
@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory):
  """A 2-step unconditional DDPM on digits, trained through the loop."""
  from configs import ddpm_digits
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    config = _tiny(ddpm_digits.get_config())
    workdir = str(tmp_path_factory.mktemp("digits"))
    loop.train_and_evaluate(config, workdir)
  finally:
    jax.config.update("jax_disable_most_optimizations", False)
  return config, workdir


def _write_png(path, image):
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
  return str(path)


@pytest.mark.integration
def test_inpaint_and_sdedit_from_files(digits_workdir, tmp_path, fast_compile):
  config, workdir = digits_workdir
  digit = np.random.default_rng(2).integers(0, 256, (8, 8, 1), dtype=np.uint8)
  png = _write_png(tmp_path / "digit.png", digit)
  out = edit_lib.edit(config, workdir, dict(edit="inpaint", input=png, mask="left"))
  images = np.load(os.path.join(out["directory"], "samples.npz"))["arr_0"]
  assert images.shape == (1, 8, 8, 1)
  np.testing.assert_array_equal(images[0, :, 4:], digit[:, 4:])   # kept pixels exact
  for name in ("grid.png", "inputs.png", "mask.png", "inputs.npz", "settings.json"):
    assert os.path.exists(os.path.join(out["directory"], name)), name
  settings = json.load(open(os.path.join(out["directory"], "settings.json")))
  assert settings["edit"] == "inpaint" and settings["nfe"] == 6
  assert image_io.read_png_provenance(os.path.join(out["directory"], "grid.png"))[
      "edit"] == "inpaint"
  # SDEdit at strength 0 returns the guides exactly, from an .npz batch.
  guides = np.random.default_rng(3).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
  np.savez(tmp_path / "guides.npz", arr_0=guides)
  out = edit_lib.edit(config, workdir, dict(edit="sdedit", input=str(tmp_path / "guides.npz"),
                                        strength=0.0))
  np.testing.assert_array_equal(
      np.load(os.path.join(out["directory"], "samples.npz"))["arr_0"], guides)
  assert out["settings"]["nfe"] == 0 and out["settings"]["strength"] == 0.0


@pytest.mark.integration
def test_interpolation_writes_one_row_per_pair(digits_workdir, tmp_path, fast_compile):
  config, workdir = digits_workdir
  rng = np.random.default_rng(4)
  np.save(tmp_path / "a.npy", rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8))
  np.save(tmp_path / "b.npy", rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8))
  out = edit_lib.edit(config, workdir, dict(edit="interpolate", input=str(tmp_path / "a.npy"),
                                        input_b=str(tmp_path / "b.npy"), num_points=3,
                                        ddim_steps=3))
  images = np.load(os.path.join(out["directory"], "samples.npz"))["arr_0"]
  assert images.shape == (6, 8, 8, 1)
  assert os.path.exists(os.path.join(out["directory"], "interpolations.png"))


@pytest.mark.integration
def test_bad_edit_inputs_raise_clear_errors(digits_workdir, tmp_path):
  config, workdir = digits_workdir
  with pytest.raises(FileNotFoundError, match="no such file"):
    edit_lib.edit(config, workdir, dict(edit="inpaint", input=str(tmp_path / "none.png")))
  big = _write_png(tmp_path / "big.png", np.zeros((10, 10, 3), np.uint8))
  with pytest.raises(ValueError, match=r"10x10x3 images; this model wants 8x8x1"):
    edit_lib.edit(config, workdir, dict(edit="sdedit", input=big))
  small = _write_png(tmp_path / "small.png", np.zeros((8, 8, 1), np.uint8))
  with pytest.raises(ValueError, match="RGB model"):
    edit_lib.edit(config, workdir, dict(edit="colorize", input=small))
  with pytest.raises(ValueError, match="--prompt needs a caption-conditioned"):
    edit_lib.edit(config, workdir, dict(prompt="a red circle at top left"))
  with pytest.raises(ValueError, match="needs --input_b"):
    edit_lib.edit(config, workdir, dict(edit="interpolate", input=small))
  with pytest.raises(ValueError, match="choose one of"):
    edit_lib.edit(config, workdir, dict(edit="paint", input=small))


@pytest.mark.integration
def test_cli_reports_a_wrong_input_size(digits_workdir, tmp_path):
  """main.py --mode=sample --edit=... reaches edit.edit and fails before compiling."""
  _, workdir = digits_workdir
  big = _write_png(tmp_path / "big.png", np.zeros((16, 16, 1), np.uint8))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "main.py"),
       "--config=" + os.path.join(REPO, "configs", "ddpm_digits.py"),
       f"--workdir={workdir}", "--mode=sample", "--edit=inpaint", f"--input={big}",
       "--config.data.data_dir=" + os.environ["TFDS_DATA_DIR"]],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "16x16x1 images; this model wants 8x8x1" in result.stderr


@pytest.mark.integration
def test_prompt_sampling_writes_samples_and_prompt_accuracy(tmp_path, fast_compile):
  config = _tiny(ddpm_shapes_text.get_config(), num_train_steps=1)
  config.data.image_size = 8        # mock shapes images, resized: a tiny U-Net
  with tfds.testing.mock_data(num_examples=8):
    loop.train_and_evaluate(config, str(tmp_path))
    config.guidance.weight = 2.0
    out = edit_lib.edit(config, str(tmp_path), dict(prompt="a blue square at bottom right",
                                                num_samples=3, shape_classifier=False))
  images = np.load(os.path.join(out["directory"], "samples.npz"))["arr_0"]
  assert images.shape == (3, 8, 8, 3)
  report = json.load(open(os.path.join(out["directory"], "prompt_accuracy.json")))
  assert report["prompt"] == "a blue square at bottom right"
  assert report["guidance_weight"] == 2.0 and report["num_samples"] == 3
  assert 0.0 <= report["all_accuracy"] <= 1.0 and "colour_accuracy" in report
  with pytest.raises(ValueError, match="Unknown word"):
    edit_lib.edit(config, str(tmp_path), dict(prompt="a purple square at top left"))


# ------------------------------------------------------------------------ SR3
@pytest.mark.integration
def test_sr3_trains_and_super_resolves(tmp_path, fast_compile):
  config = _tiny(sr3_digits.get_config(), num_train_steps=1)
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 1
  assert json.load(open(tmp_path / "eval" / "step_00000001.json"))["bpd_vlb"] > 0
  low = np.random.default_rng(5).integers(0, 256, (2, 4, 4, 1), dtype=np.uint8)
  np.savez(tmp_path / "low.npz", arr_0=low)
  out = edit_lib.edit(config, str(tmp_path), dict(edit="superres",
                                              input=str(tmp_path / "low.npz")))
  images = np.load(os.path.join(out["directory"], "samples.npz"))["arr_0"]
  assert images.shape == (2, 8, 8, 1)
  assert out["settings"]["superres_factor"] == 2
  big = _write_png(tmp_path / "big.png", np.zeros((8, 8, 1), np.uint8))
  with pytest.raises(ValueError, match=r"wants 4x4x1"):
    edit_lib.edit(config, str(tmp_path), dict(edit="superres", input=big))
  with pytest.raises(ValueError, match="only super-resolves"):
    edit_lib.edit(config, str(tmp_path), dict(edit="sdedit", input=big))


# ---------------------------------------------------------------- score family
@pytest.mark.integration
def test_score_family_guidance_and_label_dropout(fast_compile):
  from configs import score_digits
  from train import score as score_family
  config = score_digits.get_config("edm")
  m = config.model
  m.name, m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.num_groups = (
      "ddpm_unet", 8, (1, 2), 1, (), 4)
  m.conditional = True
  config.sampling.method, config.sampling.num_steps = "edm_heun", 3
  config.optim.warmup_steps = 0      # a first step that moves the weights
  family = score_family.ScoreSDE(config, (8, 8, 1), 10)
  state = family.init(jax.random.PRNGKey(0), _digits_batch(1))
  state, _ = jax.jit(family.train_step)(state, _digits_batch())
  rng = jax.random.PRNGKey(1)
  plain = np.asarray(family.sample(state.params, rng, 4))
  config.guidance.weight = 0.0
  np.testing.assert_array_equal(
      np.asarray(score_family.ScoreSDE(config, (8, 8, 1), 10).sample(state.params, rng, 4)),
      plain)
  # w = 2: eq. 6 on the denoiser, against the two unguided denoisers.
  config.guidance.weight = 2.0
  y = jnp.arange(4, dtype=jnp.int32)
  x = jax.random.normal(rng, (4, 8, 8, 1))
  sigma = jnp.full((4,), 1.5)
  _, guided = score_family.ScoreSDE(config, (8, 8, 1), 10).guided_fns(state.params, y)
  cond = family.denoiser_fn(state.params, y)(x, sigma)
  uncond = family.denoiser_fn(state.params, jnp.full((4,), 10, jnp.int32))(x, sigma)
  assert float(jnp.abs(cond - uncond).max()) > 1e-6
  np.testing.assert_allclose(guided(x, sigma), 3.0 * cond - 2.0 * uncond, atol=1e-5)
  # p_uncond = 1: the loss of the null label.
  batch, null_batch = _digits_batch(), dict(_digits_batch(), label=np.full((4,), 10,
                                                                          np.int32))
  config.guidance.p_uncond = 1.0
  dropped = score_family.ScoreSDE(config, (8, 8, 1), 10).per_example_loss(
      state.params, batch, rng)
  config.guidance.p_uncond = 0.0
  plain_family = score_family.ScoreSDE(config, (8, 8, 1), 10)
  np.testing.assert_array_equal(dropped, plain_family.per_example_loss(
      state.params, null_batch, rng))
  assert not np.array_equal(dropped, plain_family.per_example_loss(state.params, batch, rng))
