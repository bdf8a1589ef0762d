"""`--mode=sample` with a condition or an edit: prompted/labelled sampling, inpainting,
colorization, SDEdit, DDIM interpolation and super-resolution from a trained model.

Reads the user's images (PNG/JPEG, .npz or .npy), runs the edit with the newest
checkpoint (sampling/editing.py holds the algorithms) and writes the results, the
inputs and the settings under workdir/edits/.
"""

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from datasets import captions, shapes, transforms
from evaluation import prompt_accuracy
from sampling import editing, image_io
from sampling.edit_options import EDIT_DEFAULTS
from train import contract
from train.run import EDIT, Run
from train.workdir_guard import (check_preemption, exit_on_preemption,
                                 write_text_atomically)



def edit(config: ml_collections.ConfigDict, workdir: str,
         options: dict[str, Any]) -> dict[str, Any] | None:
  """Edits images, or samples one prompt or label, with the newest checkpoint.

  options['edit'] in sampling.editing.EDIT_KINDS reads options['input'] (and
  'input_b', 'mask') and runs that edit; None samples options['prompt'] (a caption
  of a text-conditioned model; 'all' cycles through every caption) or
  options['label']. A prompt or label also conditions an edit (otherwise a
  conditional model edits unconditionally, with its null condition). Guidance:
  config.guidance.weight. Writes the outputs (samples.npz, with the label under arr_1
  for --label; grid.png; png/ with config.sampling.png_folder), the inputs
  (inputs.npz, inputs.png) and settings.json with provenance.json to
  workdir/edits/<kind>_step_N/; on the shapes datasets a prompt's accuracy goes to
  prompt_accuracy.json there too. Returns the paths, settings and any accuracy.
  """
  opts = _edit_options(options)
  with exit_on_preemption("the edit"):   # SIGTERM: exit 0 between two sample batches
    run = Run(config, workdir)
    try:
      return _edit(run, opts)
    finally:
      run.close()
  return None


def _edit_options(options: dict[str, Any]) -> dict[str, Any]:
  unknown = sorted(set(options) - set(EDIT_DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown edit option(s) {unknown}; known: {sorted(EDIT_DEFAULTS)}.")
  opts = dict(EDIT_DEFAULTS, **{k: v for k, v in options.items() if v is not None})
  kind = opts["edit"]
  if kind is not None and kind not in editing.EDIT_KINDS:
    raise ValueError(f"--edit={kind!r}; choose one of {editing.EDIT_KINDS}.")
  if kind is None and opts["prompt"] is None and opts["label"] is None:
    raise ValueError("Nothing to do: pass --edit=KIND with --input=PATH, or --prompt / "
                     "--label to sample one condition (plain --mode=sample samples "
                     "them all).")
  if kind is not None and opts["input"] is None:
    raise ValueError(f"--edit={kind} needs --input=PATH (a PNG, or an .npz whose arr_0 "
                     "holds uint8 [N, H, W, C] images).")
  if opts["prompt"] is not None and opts["label"] is not None:
    raise ValueError("Pass --prompt (caption models) or --label (class models), not both.")
  if opts["prompt"] == "all" and kind is not None:
    raise ValueError("--prompt=all samples every caption; an edit takes one prompt.")
  for name in ("num_resample", "num_points", "ddim_steps"):
    if int(opts[name]) < 1:
      raise ValueError(f"--{name} must be >= 1, got {opts[name]}.")
  if opts["num_samples"] is not None and int(opts["num_samples"]) < 1:
    raise ValueError(f"--num_samples must be >= 1, got {opts['num_samples']}.")
  if not 0.0 <= float(opts["strength"]) <= 1.0:
    raise ValueError(f"--strength (SDEdit t0) must be in [0, 1], got {opts['strength']}.")
  return opts


def _read_images(path: str, flag: str) -> np.ndarray:
  """uint8 [N, H, W, C] from a PNG/JPEG file or an .npz (arr_0) / .npy array."""
  return image_io.read_images(path, f"--{flag}")


def _check_image_size(images: np.ndarray, want: tuple[int, ...], flag: str, path: str,
                      why: str) -> None:
  h, w, c = images.shape[1:]
  if (h, w) != tuple(want[:2]) or c not in want[2:]:
    channels = " or ".join(str(x) for x in want[2:])
    raise ValueError(f"--{flag}={path} holds {h}x{w}x{c} images; {why} wants "
                     f"{want[0]}x{want[1]}x{channels} (height x width x channels).")


def _edit_condition(conditioning, opts: dict[str, Any]):
  """(condition [N, ...] or None, factors for prompt accuracy or None, name)."""
  prompt, label = opts["prompt"], opts["label"]
  text = conditioning.kind == "caption"
  num_classes = conditioning.num_classes if conditioning.kind == "class" else 0
  if prompt is not None:
    if not text:
      raise ValueError("--prompt needs a caption-conditioned model (config.text.enabled"
                       "=True, trained on shapes); this one is not.")
    if prompt == "all":
      n = int(opts["num_samples"] or np.prod(captions.caption_table().shape[:3]))
      factors = shapes.cycling_caption_factors(n)
      tokens = np.asarray(captions.tokens_from_factors(
          factors["shape"], factors["colour"], factors["position"]))
      return tokens, factors, "prompt_all"
    tokens = captions.tokenize(prompt)     # ValueError naming the vocabulary
    try:
      parsed = captions.parse_caption(prompt)
    except ValueError:
      parsed = None                            # a partial caption: no accuracy
    return tokens, parsed, "prompt"
  if label is not None:
    if not num_classes:
      raise ValueError("--label needs a class-conditional model "
                       "(config.model.conditional=True); this one is not.")
    if not 0 <= int(label) < num_classes:
      raise ValueError(f"--label={label} must be in [0, {num_classes}).")
    return np.asarray([int(label)], np.int32), None, f"label_{int(label)}"
  if text or num_classes:
    if conditioning.p_uncond <= 0:
      raise ValueError("This conditional model was not trained with a null condition "
                       "(config.guidance.p_uncond=0): pass --prompt or --label.")
    null = conditioning.null_value
    shape = (1, captions.MAX_CAPTION_TOKENS) if text else (1,)
    return np.full(shape, null, np.int32), None, "null"
  return None, None, None


def _edit(run: Run, opts: dict[str, Any]) -> dict[str, Any]:
  config, family = run.config, run.family
  contract.require(run.capabilities, "editable",
                   "--edit/--prompt/--label (the DDPM and score families have it)")
  contract.require(run.capabilities, "conditional", "--edit/--prompt/--label")
  kind = opts["edit"]
  superres = family.edit_process.superres_factor
  if kind == "superres" and not superres:
    raise ValueError("--edit=superres needs an SR3 model (a DDPM-family model with "
                     "config.superres.factor > 0, e.g. configs/sr3_digits.py): it "
                     "samples given a low-res image the network was trained to see.")
  if superres and kind != "superres":
    raise ValueError("An SR3 model only super-resolves: use --edit=superres "
                     "--input=LOW_RES.png.")
  condition, factors, condition_name = _edit_condition(family.conditioning, opts)
  h, w, c = family.image_shape
  inputs: dict[str, np.ndarray] = {}
  if kind is not None:
    images = _read_images(opts["input"], "input")
    if kind == "superres":
      _check_image_size(images, (h // superres, w // superres, c), "input",
                        opts["input"], f"this SR3 model (x{superres} to {h}x{w})")
    elif kind == "colorize":
      if c != 3:
        raise ValueError(f"--edit=colorize needs an RGB model; this one makes "
                         f"{h}x{w}x{c} images.")
      _check_image_size(images, (h, w, 1, 3), "input", opts["input"], "colorize")
    else:
      _check_image_size(images, (h, w, c), "input", opts["input"], "this model")
    inputs["inputs"] = images
    if kind == "interpolate":
      if opts["input_b"] is None:
        raise ValueError("--edit=interpolate needs --input_b=PATH, the second image of "
                         "each pair.")
      images_b = _read_images(opts["input_b"], "input_b")
      _check_image_size(images_b, (h, w, c), "input_b", opts["input_b"], "this model")
      if images_b.shape[0] != images.shape[0]:
        raise ValueError(f"--input holds {images.shape[0]} images and --input_b "
                         f"{images_b.shape[0]}: give one pair per image.")
      inputs["inputs_b"] = images_b
    if kind == "inpaint":
      mask = opts["mask"]
      if mask in editing.MASK_KINDS:
        mask = editing.make_mask(mask, h, w)
      else:
        mask = _read_images(mask, "mask")
        if mask.shape[0] != 1 or mask.shape[1:3] != (h, w) or mask.shape[3] not in (1, c):
          raise ValueError(f"--mask={opts['mask']} holds {mask.shape[1:]} images; give "
                           f"one {h}x{w} mask (white = keep, black = fill) or one of "
                           f"{editing.MASK_KINDS}.")
        mask = mask[0, ..., 0] if mask.shape[3] == 1 else mask[0]
      inputs["mask"] = np.asarray(editing.to_mask(mask, images.shape) * 255).astype(np.uint8)

  state = run.init_or_restore(must_exist=True)
  step = int(state.step)
  params = run.sampling_params(state)
  rng = jax.random.fold_in(run.root_rng, EDIT)
  if kind is None:
    images, settings = _sample_condition(run, params, rng, condition, opts)
    name = condition_name
  else:
    images, settings = _run_edit(run, params, rng, kind, inputs, condition, opts)
    name = kind
  if opts["prompt"] is not None:
    settings["prompt"] = opts["prompt"]
  if opts["label"] is not None:
    settings["label"] = int(opts["label"])
  settings["guidance_weight"] = float(family.conditioning.guidance_weight)
  directory = os.path.join(run.workdir, "edits", f"{name}_step_{step:08d}")
  result: dict[str, Any] = dict(directory=directory, settings=settings)
  out = images.reshape((-1, *images.shape[-3:]))
  accuracy = None
  if factors is not None and str(config.data.dataset).startswith("shapes"):
    n = out.shape[0]
    factors = {k: np.resize(np.asarray(v), n) for k, v in factors.items()}
    accuracy = _prompt_accuracy(run, out, factors, opts["shape_classifier"])
    result["prompt_accuracy"] = accuracy
    logging.info("Prompt accuracy of %d samples (%s): %s", n, opts["prompt"],
                 ", ".join(f"{k}={v:.3f}" for k, v in accuracy.items()))
  if run.is_writer:
    provenance = dict(run.provenance(step, name), **settings)
    labels = (None if opts["label"] is None else
              np.full(out.shape[0], int(opts["label"]), np.int64))
    result["paths"] = image_io.save_samples(directory, out, provenance, labels=labels,
                                            png_folder=config.sampling.png_folder)
    if kind == "interpolate":   # one row per pair, ends at the sides
      grid = image_io.make_grid(out, num_cols=int(opts["num_points"]))
      image_io.save_png(os.path.join(directory, "interpolations.png"),
                        image_io.upscale(grid), provenance)
    if inputs:
      buffer_path = os.path.join(directory, "inputs.npz")
      with epath.Path(buffer_path).open("wb") as f:
        np.savez(f, arr_0=inputs["inputs"], **{k: v for k, v in inputs.items()
                                               if k != "inputs"})
      for key, value in inputs.items():
        value = value if value.ndim == 4 else value[None]
        image_io.save_png(os.path.join(directory, f"{key}.png"),
                          image_io.upscale(image_io.make_grid(value)),
                          dict(generated=False, source=opts.get("input"), role=key))
    write_text_atomically(epath.Path(directory) / "settings.json",
                           json.dumps(dict(settings, step=step, **{
                               k: v for k, v in opts.items() if v is not None}),
                                      indent=2, sort_keys=True, default=str))
    if accuracy is not None:
      write_text_atomically(epath.Path(directory) / "prompt_accuracy.json",
                             json.dumps(dict(accuracy, prompt=opts["prompt"],
                                             num_samples=int(out.shape[0]), step=step,
                                             guidance_weight=settings["guidance_weight"]),
                                        indent=2))
    logging.info("Wrote %d %s images to %s.", out.shape[0], name, directory)
  return result


def _sample_condition(run: Run, params, rng: jax.Array, condition: np.ndarray,
                      opts: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
  """Samples of one condition (repeated) or of per-sample conditions, in batches."""
  n = int(opts["num_samples"] or (condition.shape[0] if opts["prompt"] == "all" else 64))
  conditions = np.resize(condition, (n, *condition.shape[1:]))
  batch_size = run.sample_batch_size(min(n, run.config.sampling.batch_size))
  fn = jax.jit(run.family.sample_with_condition, static_argnums=3)
  chunks = []
  for i in range(math.ceil(n / batch_size)):
    check_preemption(f"{i * batch_size} of {n} images were sampled (not written).")
    rows = np.arange(i * batch_size, (i + 1) * batch_size) % n
    images = fn(params, jax.random.fold_in(rng, i), jnp.asarray(conditions[rows]),
                batch_size)
    chunks.append(np.asarray(multihost_utils.process_allgather(images, tiled=True)))
  images = np.concatenate(chunks)[:n]
  return images, dict(run.family.sampler_settings())


def _run_edit(run: Run, params, rng: jax.Array, kind: str, inputs: dict[str, np.ndarray],
              condition: np.ndarray | None, opts: dict[str, Any]):
  """One compiled `editing.apply_edit` call; returns uint8 outputs and its settings."""
  family, process = run.family, run.family.edit_process
  if kind == "interpolate":   # DDIM on the process's own T steps
    diffusion, timestep_map = process.diffusion, None
  else:
    diffusion, timestep_map = process.sampling_diffusion, process.sampling_timesteps
  settings: dict[str, Any] = {}

  def edit_fn(params, rng):
    def eps_fn(x, t):
      if condition is None:
        return family.edit_eps_fn(params)(x, t)
      # One condition for every image, whatever batch the edit evaluates.
      c = jnp.repeat(jnp.asarray(condition[:1]), x.shape[0], axis=0)
      return family.edit_eps_fn(params, c)(x, t)

    out, edit_settings = editing.apply_edit(
        kind, eps_fn, diffusion, rng, inputs["inputs"], mask=inputs.get("mask"),
        images_b=inputs.get("inputs_b"), strength=float(opts["strength"]),
        num_resample=int(opts["num_resample"]), num_points=int(opts["num_points"]),
        ddim_steps=int(opts["ddim_steps"]),
        num_fixed_point_iterations=int(opts["fixed_point_iterations"]),
        superres_factor=process.superres_factor or 4,
        upsample_method=process.upsample_method,
        var_type=process.var_type, clip_denoised=process.clip_denoised,
        timestep_map=timestep_map)
    settings.update(edit_settings)
    return out.images

  images = jax.jit(lambda p, r: transforms.centered_to_uint8(edit_fn(p, r)))(params, rng)
  return np.asarray(images), settings


def _prompt_accuracy(run: Run, images: np.ndarray, factors: dict[str, np.ndarray],
                     use_classifier: bool) -> dict[str, float]:
  """prompt_accuracy.prompt_accuracy, the shape scored by the dataset's classifier."""
  from evaluation import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
  config = run.config
  classifier = None
  if use_classifier:
    classifier = classifier_lib.load_or_train(
        config.data.dataset, config.eval.classifier_dir, data_dir=config.data.data_dir,
        image_size=config.data.image_size)
  return prompt_accuracy.prompt_accuracy(images, factors, classifier)
