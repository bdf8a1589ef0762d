"""Converted weights -> the workdir a training run would have left.

The family is built and initialised as `train.run.Run` does; params AND ema_params are
replaced by the converted weights (published DDPM weights are the EMA weights, and
`--mode=eval` samples from ema_params by default), or, where a checkpoint keeps its
averaged weights apart (Converted.ema_params), params by the raw and ema_params by the
averaged ones; the optimizer state is a fresh one for params; the checkpoint and
workdir/config.json are written by the training loop's own Checkpointer and workdir
guard. Every check runs before anything is written.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath

import datasets
from convert import (common, ddpm_tf, diffusers_ncsnpp, diffusers_unet, edm,
                     improved_diffusion, pixelcnnpp_tf, score_sde, vdvae)
from train import families
from train.checkpoint import absolute_path
from train.run import INIT, Run, validate_config
from train.workdir_guard import check_workdir_config

# --from= choices, each a module's common.Format.
FORMATS: dict[str, common.Format] = {
    "diffusers": diffusers_unet.FORMAT,
    "ddpm_tf": ddpm_tf.FORMAT,
    "improved_diffusion": improved_diffusion.FORMAT,
    "edm": edm.FORMAT,
    "pixelcnnpp_tf": pixelcnnpp_tf.FORMAT,
    "vdvae": vdvae.FORMAT,
    "diffusers_ncsnpp": diffusers_ncsnpp.FORMAT,
    "score_sde_pytorch": score_sde.PYTORCH_FORMAT,
    "score_sde_flax": score_sde.FLAX_FORMAT,
}

# common.Format.source -> whether --source is one. A TensorFlow checkpoint is named by
# its prefix: V2 writes <prefix>.index and <prefix>.data-*; V1 (params_cifar.ckpt, the
# released PixelCNN++) is the single file <prefix>.
SOURCE_KINDS = {
    "folder": os.path.isdir,
    "file": os.path.isfile,
    "tf_checkpoint": lambda source: (os.path.isfile(source + ".index")
                                     or os.path.isfile(source)),
}


def check_empty(workdir: str) -> None:
  """A workdir that already holds checkpoints is refused: converting never overwrites."""
  directory = epath.Path(workdir) / "checkpoints"
  if directory.exists() and any(directory.iterdir()):
    raise ValueError(f"{workdir} already holds checkpoints ({directory}); convert into "
                     "a new --workdir.")


def convert_to_workdir(config: ml_collections.ConfigDict, workdir: str, source: str, *,
                       source_format: str = "diffusers", step: int = 0,
                       defaults: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """Writes `source`'s weights as workdir's checkpoint at `step`; returns its metadata.

  `defaults`: the family's base config, as training passes it to the workdir guard.
  Raises ValueError (one line, naming the first problem) before writing anything.
  """
  if source_format not in FORMATS:
    raise ValueError(f"--from={source_format!r}; choose from {sorted(FORMATS)}.")
  form = FORMATS[source_format]
  if config.model.family not in form.families:
    raise ValueError(f"--from={source_format} converts to config.model.family in "
                     f"{form.families}, not {config.model.family!r}.")
  if not isinstance(step, int) or step < 0:
    raise ValueError(f"--step must be an integer >= 0, got {step!r}.")
  if not SOURCE_KINDS[form.source](source):
    kind = {"tf_checkpoint": "TensorFlow checkpoint"}.get(form.source, form.source)
    raise ValueError(f"--source={source!r} is not a {kind}: --from="
                     f"{source_format} reads {form.description}.")
  validate_config(config)
  check_empty(workdir)
  # The same family and parameter tree Run restores into (shapes only: nothing runs).
  info = datasets.get_dataset_info(config.data)
  family, _ = families.build_family(config, info.image_shape, info.num_classes)
  init_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), INIT)
  abstract = jax.eval_shape(family.init, init_rng, info.example_batch())
  converted = form.convert(source, config, tuple(info.image_shape), abstract.params)

  # Everything is checked: from here on the workdir is written.
  check_workdir_config(config, workdir, defaults)
  run = Run(config, workdir)
  try:
    state = run.init_or_restore()
    params = jax.device_put(converted.params, run.replicated)
    ema_params = (params if converted.ema_params is None
                  else jax.device_put(converted.ema_params, run.replicated))
    state = state.replace(step=jax.device_put(jnp.asarray(step, jnp.int32), run.replicated),
                          params=params, ema_params=ema_params,
                          opt_state=jax.jit(state.tx.init,
                                            out_shardings=run.replicated)(params))
    metadata = dict(
        config_name=config.name, step=step,
        converted_from=dict(
            format=source_format, source=absolute_path(source),
            files={absolute_path(p): sha for p, sha in sorted(converted.files.items())},
            num_tensors=converted.num_tensors, **converted.details,
            created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat()))
    run.checkpointer.save(step, state.checkpoint_tree(), metadata)
    run.checkpointer.wait()
  finally:
    run.close()
  logging.info("Converted %d tensors of %s into %s (step %d).", converted.num_tensors,
               source, run.checkpointer.directory, step)
  return metadata
