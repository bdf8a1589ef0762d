"""Workdirs on cloud storage (gs://): the project's own writers go through etils.epath.

No bucket is reachable here, so fsspec's in-memory filesystem stands in for gs:// and
epath is made to use its fsspec backend (on a cluster it uses tf.io.gfile). Orbax's
own gs:// support (tensorstore) is not exercised.
"""
import json

import fsspec
import ml_collections
import numpy as np
import pytest
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

from configs import ddpm_digits
from sampling import image_io
from train import checkpoint
from train import workdir_guard


class _MemoryGCS(MemoryFileSystem):
  protocol = ("gs", "gcs")
  store, pseudo_dirs = {}, [""]     # its own store, apart from memory://


@pytest.fixture
def fake_gcs(monkeypatch):
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, _MemoryGCS, clobber=True)
  _MemoryGCS.store.clear()
  yield _MemoryGCS()
  _MemoryGCS.store.clear()


def test_urls_are_not_made_local():
  assert checkpoint.absolute_path("gs://bucket/run/checkpoints") == \
      "gs://bucket/run/checkpoints"
  assert checkpoint.absolute_path("rel/dir").startswith("/")


def test_samples_and_png_provenance_on_gs(fake_gcs):
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  paths = image_io.save_samples("gs://bucket/run/samples/step_1", images, dict(seed=3))
  with fake_gcs.open(paths["npz"], "rb") as f:
    np.testing.assert_array_equal(np.load(f)["arr_0"], images)
  provenance = json.loads(fake_gcs.cat(paths["provenance"]))
  assert provenance["seed"] == 3 and provenance["num_samples"] == 5
  assert image_io.read_png_provenance(paths["grid"])["seed"] == 3


def test_workdir_config_check_on_gs(fake_gcs):
  config = ddpm_digits.get_config("runlocal")
  workdir_guard.check_workdir_config(config, "gs://bucket/run")
  saved = json.loads(fake_gcs.cat("gs://bucket/run/config.json"))
  assert saved["name"] == "ddpm_digits"
  workdir_guard.check_workdir_config(config, "gs://bucket/run")     # same config: accepted
  changed = ml_collections.ConfigDict(config.to_dict())
  changed.optim.learning_rate = 0.5
  with pytest.raises(ValueError, match="optim.learning_rate"):
    workdir_guard.check_workdir_config(changed, "gs://bucket/run")
