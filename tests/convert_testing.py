"""What the tests of `python -m convert`'s formats share (a helper module, not a test
file): comparing parameter trees, the command line's flags, restoring the workdir it
wrote, and the checks every malformed source must pass (one-line error, nothing
written, no code from the file run)."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from flax import traverse_util

from convert import __main__ as cli
from convert import workdir as workdir_lib
from train import families
from train.run import Run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_same_params(a, b) -> None:
  """The same parameter paths, and every leaf of `a` equals `b`'s (the path in the
  message)."""
  flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert flat_a.keys() == flat_b.keys(), sorted(set(flat_a) ^ set(flat_b))[:5]
  for key in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]),
                                  err_msg="/".join(key))


def family_and_abstract_params(config, image_shape: tuple[int, ...],
                               num_classes: int = 10):
  """(the config's family, its parameter tree as shapes: jax.eval_shape, no compile)."""
  family, _ = families.build_family(config, image_shape, num_classes)
  example = dict(image=np.zeros((1, *image_shape), np.uint8),
                 label=np.zeros((1,), np.int32))
  return family, jax.eval_shape(family.init, jax.random.PRNGKey(0), example).params


def cli_flags(source_format: str, source, config: str, workdir, *overrides
              ) -> flags.FlagValues:
  """`python -m convert --from=<source_format> --source=... --config=configs/<config>
  --workdir=... <overrides>`'s flags, parsed apart from main.py's."""
  argv = ["convert", f"--from={source_format}", f"--source={source}",
          f"--config={os.path.join(REPO, 'configs', config)}", f"--workdir={workdir}",
          *overrides]
  flag_values = flags.FlagValues()
  cli.define_flags(flag_values, argv)
  flag_values(argv)
  return flag_values


def restore(config, workdir: str):
  """The train state main.py's later runs restore from the converted workdir."""
  run = Run(config, workdir)
  try:
    return run.init_or_restore(must_exist=True)
  finally:
    run.close()


def assert_converting_again_is_refused(flag_values: flags.FlagValues) -> None:
  with pytest.raises(ValueError, match="already holds checkpoints"):
    cli.run(flag_values)


class Reading(dict):
  """A state dict that records which tensors were read (the tests check which ones a
  reference forward pass used)."""

  def __init__(self, tensors):
    super().__init__(tensors)
    self.read = set()

  def __getitem__(self, name):
    self.read.add(name)
    return super().__getitem__(name)


# ------------------------------------------------------------- malformed sources
def write_first_half(source, destination=None) -> str:
  """A truncated file: the first half of `source`'s bytes, written to `destination`
  (default: over `source`); returns its path."""
  with open(source, "rb") as f:
    data = f.read()
  destination = source if destination is None else destination
  with open(destination, "wb") as f:
    f.write(data[:len(data) // 2])
  return str(destination)


class _Payload:
  """Unpickling it would create the folder `marker`: the tests check it does not."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return os.mkdir, (self.marker,)


def save_code_pickle(path, name: str, tmp_path) -> str:
  """A torch.save file whose entry `name` runs code when unpickled (it would create
  tmp_path/ran); returns its path."""
  import torch
  torch.save({name: _Payload(str(tmp_path / "ran"))}, path)
  return str(path)


def assert_fails_before_writing(tmp_path, config, source: str, source_format: str,
                                match: str, num_examples: int = 8) -> None:
  """Converting `source` into tmp_path/workdir fails with a one-line ValueError
  matching `match`, writes nothing, and runs no code from the file (a pickled payload
  would create tmp_path/ran)."""
  workdir = tmp_path / "workdir"
  with tfds.testing.mock_data(num_examples=num_examples):
    with pytest.raises(ValueError, match=match) as error:
      workdir_lib.convert_to_workdir(config, str(workdir), source,
                                     source_format=source_format)
  assert "\n" not in str(error.value)
  assert not workdir.exists(), "nothing may be written for a malformed source"
  assert not (tmp_path / "ran").exists(), "code from the checkpoint ran"
