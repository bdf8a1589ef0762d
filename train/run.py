"""What every mode shares: the validated config, dataset info, family, mesh, checkpoints.

`Run(config, workdir)` is built by training (train/loop.py), the read-only modes
(train/modes.py) and editing (train/edit_mode.py) alike; it restores or initialises the
TrainState and samples in sharded batches.
"""

import datetime
import functools
import importlib.util
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

import datasets
from evaluation.progress import progress_line
from train import families, sharding, user_errors
from train.checkpoint import Checkpointer, CheckpointShapeError, absolute_path
from train.state import TrainState, jit_run_once, num_params
from train.wandb_writer import WANDB_PIN, WandbWriter   # imports wandb only if used
from train.workdir_guard import check_read_only_config

# Purposes that keys are folded with: fold_in(PRNGKey(seed), purpose).
INIT, SAMPLE_GRID, EVAL, SAMPLE, SAMPLE_EVAL, EDIT = 0, 1, 2, 3, 4, 5


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Errors a user can cause, raised before anything is compiled."""
  t = config.training
  k = t.steps_per_call
  if k < 1:
    raise ValueError(f"config.training.steps_per_call must be >= 1, got {k}.")
  if t.num_train_steps < 0:
    raise ValueError(f"config.training.num_train_steps must be >= 0, got "
                     f"{t.num_train_steps}.")
  for name, value in (("num_train_steps", t.num_train_steps),
                      ("log_every_steps", t.log_every_steps),
                      ("checkpoint_every_steps", t.checkpoint_every_steps),
                      ("sample_every_steps", t.sample_every_steps)):
    if name != "num_train_steps" and name != "sample_every_steps" and value <= 0:
      raise ValueError(f"config.training.{name} must be > 0, got {value}.")
    if value % k:
      raise ValueError(f"config.training.{name}={value} must be a multiple of "
                       f"config.training.steps_per_call={k}.")
  sharding.check_batch_size(t.batch_size, "training.batch_size")
  sharding.check_batch_size(config.eval.batch_size, "eval.batch_size")
  log = config.logging
  for name, value in (("profile_start_step", log.profile_start_step),
                      ("profile_num_steps", log.profile_num_steps)):
    if value < 0:
      raise ValueError(f"config.logging.{name} must be >= 0, got {value}.")
  if log.wandb:
    if not log.wandb_project:
      raise ValueError("config.logging.wandb=True needs config.logging.wandb_project.")
    if importlib.util.find_spec("wandb") is None:   # found without importing it
      raise user_errors.UserError(
          f"config.logging.wandb=True needs wandb: pip install {WANDB_PIN} (or set "
          "--config.logging.wandb=False).")


class Run:
  """What train, eval, sample and edit share: dataset info, family, mesh, checkpoints."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    validate_config(config)
    self.config, self.workdir = config, workdir
    self.info = datasets.get_dataset_info(config.data)
    self.family, self.capabilities = families.build_family(
        config, self.info.image_shape, self.info.num_classes)
    self.mesh = sharding.make_mesh()
    self.replicated = sharding.replicated(self.mesh)
    self.root_rng = jax.random.PRNGKey(config.seed)
    t = config.training
    self.checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints,
        keep_every=t.keep_checkpoint_every_steps, async_save=t.async_checkpointing)
    self.is_writer = jax.process_index() == 0
    self.measured_nfe: float | None = None

  def device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keys of a pipeline batch that a step reads (the dataset declares them)."""
    return {key: batch[key] for key in self.info.batch_keys}

  def init_or_restore(self, *, must_exist: bool = False,
                      step: int | None = None) -> TrainState:
    """The newest checkpoint (or `step`) in the workdir, or a freshly initialised state.

    must_exist: a read-only mode (eval, sample, edit) reads the workdir and changes
    nothing in it: the config is compared with workdir/config.json first, the step is
    `step`, else config.checkpoint.step, else the newest, and an unreadable step is
    reported, never moved aside (train/checkpoint.py).
    """
    read_only = must_exist
    changed = check_read_only_config(self.config, self.workdir) if read_only else []
    if step is None:
      step = self.config.checkpoint.step
      if step is not None and not read_only:
        raise ValueError(f"config.checkpoint.step={step} picks the checkpoint of eval, "
                         "sample and edit; training resumes from the newest one.")
    init_fn = jit_run_once(self.family.init, out_shardings=self.replicated)
    init_rng = jax.random.fold_in(self.root_rng, INIT)
    example = self.info.example_batch()
    if self.checkpointer.latest_step() is None:
      if must_exist:
        raise FileNotFoundError(
            f"No checkpoint in {self.checkpointer.directory}: train first with "
            f"--mode=train --workdir={self.workdir}.")
      state = init_fn(init_rng, example)
      logging.info("Initialised %s: %s parameters.", self.config.name,
                   f"{num_params(state.params):,}")
      return state
    # Restore straight into the target shardings without running init.
    abstract = jax.eval_shape(init_fn, init_rng, example)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated),
        abstract.checkpoint_tree())
    try:
      tree, meta, step = self.checkpointer.restore(target, step=step,
                                                   read_only=read_only)
    except CheckpointShapeError as error:
      why = (f"this config differs from {self.workdir}/config.json in "
             f"{', '.join(changed)}" if changed else
             "pass the config (and overrides) it was trained with")
      raise CheckpointShapeError(f"{error} {why[0].upper()}{why[1:]}.") from None
    logging.info("Restored checkpoint at step %d from %s (%s).", step,
                 self.checkpointer.directory, meta.get("config_name"))
    return abstract.replace_from_checkpoint(tree)

  def sampling_params(self, state: TrainState):
    """What `family.sample` takes (EMA or raw params: config.sampling.use_ema)."""
    return self.family.sampling_params(state, use_ema=self.config.sampling.use_ema)

  @staticmethod
  def sample_batch_size(batch_size: int) -> int:
    """batch_size rounded up to a multiple of the device count (samples are sharded)."""
    return math.ceil(batch_size / jax.device_count()) * jax.device_count()

  @functools.cached_property
  def sample_fn(self):
    """params, rng, n -> (samples, measured NFE or None), compiled once per run.

    Families whose samplers take a data-dependent number of network evaluations
    (adaptive ODE solvers, the CountsNFE capability) report it; it is kept for
    provenance.
    """
    images = sharding.batch_sharding(self.mesh)
    if self.capabilities.counts_nfe:
      return jax.jit(self.family.sample_with_nfe, static_argnums=2,
                     out_shardings=(images, self.replicated))
    fn = jax.jit(self.family.sample, static_argnums=2, out_shardings=images)
    return lambda params, rng, n: (fn(params, rng, n), None)

  def sample_batch(self, params, rng: jax.Array, batch_size: int,
                   nfes: list[float]) -> np.ndarray:
    """One batch of samples on the host (all processes'); appends its NFE."""
    images, nfe = self.sample_fn(params, rng, batch_size)
    if nfe is not None:
      nfes.append(float(nfe))
    return np.asarray(multihost_utils.process_allgather(images, tiled=True))

  def provenance(self, step: int, purpose: str) -> dict[str, Any]:
    return dict(generated=True, config_name=self.config.name, checkpoint_step=int(step),
                seed=int(self.config.seed), dataset=self.config.data.dataset,
                family=self.config.model.family, purpose=purpose,
                workdir=absolute_path(self.workdir),
                created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                **self.family.sampler_settings(),
                **({"nfe_measured": self.measured_nfe} if self.measured_nfe is not None
                   else {}))

  def make_writer(self) -> metric_writers.MetricWriter:
    """TensorBoard event files from process 0 (the console gets the progress lines),
    and Weights & Biases beside them if config.logging.wandb."""
    if not self.is_writer:
      return metric_writers.MultiWriter([])
    writers = [metric_writers.SummaryWriter(os.path.join(self.workdir, "tensorboard"))]
    log = self.config.logging
    if log.wandb:
      name = log.wandb_run_name or (
          f"{self.config.name} {os.path.basename(self.workdir.rstrip('/'))}")
      writers.append(WandbWriter(
          self.workdir, project=log.wandb_project, entity=log.wandb_entity, name=name))
    return metric_writers.AsyncMultiWriter(writers)

  def sample_images(self, params, rng: jax.Array, num_samples: int,
                    batch_size: int | None = None,
                    log_progress: str = "") -> np.ndarray:
    """`num_samples` samples (uint8 NHWC images, or float points [N, D] where
    info.kind == 'points'), generated in sharded batches of `batch_size`.

    log_progress: a name for the phase ("sample grid"); a progress line per batch.
    """
    batch_size = self.sample_batch_size(batch_size or num_samples)
    chunks, start = [], time.time()
    num_batches = math.ceil(num_samples / batch_size)
    nfes: list[float] = []
    for i in range(num_batches):
      chunks.append(self.sample_batch(params, jax.random.fold_in(rng, i), batch_size, nfes))
      if log_progress:
        done = min((i + 1) * batch_size, num_samples)
        logging.info(progress_line(f"{log_progress}: images", done, num_samples,
                                   done / (time.time() - start), "images"))
    # Network evaluations per sample, as measured (the mean over batches).
    self.measured_nfe = float(np.mean(nfes)) if nfes else None
    return np.concatenate(chunks)[:num_samples]

  def close(self) -> None:
    self.checkpointer.close()
