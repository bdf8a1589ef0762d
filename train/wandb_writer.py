"""Weights & Biases as a clu MetricWriter, beside TensorBoard (config.logging.wandb).

train/run.py imports this module only when config.logging.wandb is set, and this
module imports wandb only when a writer is made: wandb is an optional install
(`pip install wandb==0.31.0`). The W&B run id is kept in workdir/wandb_run_id, so a
resumed training (or its final evaluation) logs into the same W&B run.

Every record carries the training step as the metric `step`, which W&B plots against
(define_metric): a resumed run logs steps again from its checkpoint, and an eval_watch
logs steps that training has passed, which W&B's own monotonic step would drop.
"""

from __future__ import annotations

import html
import os
import secrets
import string
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu.metric_writers import interface
from etils import epath

from train.user_errors import UserError

RUN_ID_FILE = "wandb_run_id"
WANDB_PIN = "wandb==0.31.0"   # requirements-test.txt pins the same version
STEP = "step"
_ID_CHARACTERS = string.ascii_lowercase + string.digits


def run_id(workdir: str) -> str:
  """The workdir's W&B run id: read from workdir/wandb_run_id, else made and stored."""
  path = epath.Path(workdir) / RUN_ID_FILE
  if path.exists():
    stored = path.read_text().strip()
    if stored and all(c in _ID_CHARACTERS for c in stored):
      return stored
    raise UserError(f"{path} holds {stored[:40]!r}, not a W&B run id (lowercase "
                    "letters and digits); delete it to start a new W&B run.")
  new = "".join(secrets.choice(_ID_CHARACTERS) for _ in range(12))
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(new + "\n")
  return new


def _local_dir(workdir: str) -> str | None:
  """Where wandb keeps its run files: $WANDB_DIR, else the workdir if it is local."""
  if os.environ.get("WANDB_DIR"):
    return os.environ["WANDB_DIR"]
  return None if "://" in workdir else workdir


class WandbWriter(interface.MetricWriter):
  """Scalars, images, histograms, texts and hyperparameters to one W&B run."""

  def __init__(self, workdir: str, *, project: str, entity: str | None = None,
               name: str | None = None):
    try:
      import wandb  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError(f"config.logging.wandb=True needs wandb: pip install "
                      f"{WANDB_PIN} (or set --config.logging.wandb=False).") from None
    self._wandb = wandb
    # "finish_previous": the final evaluation reopens the run training just closed.
    self._run = wandb.init(project=project, entity=entity, name=name,
                           id=run_id(workdir), resume="allow", dir=_local_dir(workdir),
                           reinit="finish_previous")
    self._run.define_metric(STEP)
    self._run.define_metric("*", step_metric=STEP)

  def _log(self, step: int, values: Mapping[str, Any]) -> None:
    self._run.log({STEP: int(step), **values})

  def write_summaries(self, step, values, metadata=None) -> None:
    del metadata
    self._log(step, {k: np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v)
                     for k, v in values.items()})

  def write_scalars(self, step, scalars) -> None:
    self._log(step, {k: float(np.asarray(v)) for k, v in scalars.items()})

  def write_images(self, step, images) -> None:
    """images: name -> [N, H, W, C] uint8 or floats in [0, 1] (clu's layout)."""
    logged = {}
    for key, batch in images.items():
      batch = np.asarray(batch)
      if batch.dtype != np.uint8:
        batch = np.clip(np.round(batch * 255), 0, 255).astype(np.uint8)
      pictures = [self._wandb.Image(image) for image in batch]
      logged[key] = pictures[0] if len(pictures) == 1 else pictures
    self._log(step, logged)

  def write_videos(self, step, videos) -> None:
    self._log(step, {k: self._wandb.Video(np.asarray(v)) for k, v in videos.items()})

  def write_audios(self, step, audios, *, sample_rate) -> None:
    self._log(step, {k: [self._wandb.Audio(np.asarray(a), sample_rate=sample_rate)
                         for a in np.asarray(v)] for k, v in audios.items()})

  def write_texts(self, step, texts) -> None:
    self._log(step, {k: self._wandb.Html(f"<pre>{html.escape(str(v))}</pre>")
                     for k, v in texts.items()})

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    num_buckets = num_buckets or {}
    self._log(step, {k: self._wandb.Histogram(np.asarray(v).ravel(),
                                              num_bins=num_buckets.get(k) or 64)
                     for k, v in arrays.items()})

  def write_hparams(self, hparams) -> None:
    self._run.config.update(dict(hparams), allow_val_change=True)

  def flush(self) -> None:
    pass   # wandb streams every record to its service process as it is logged

  def close(self) -> None:
    self._run.finish()
