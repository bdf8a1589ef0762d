"""The grain training pipeline: batches are the documented function of (seed, step).

The expected batches are computed here from the raw split, independently of
datasets/pipeline.py: global stream position g = step * B + p * B / P + row,
epoch g // N read in the order of transforms.permutation(derive_key(seed, 2, epoch)),
flipped where the top bit of hash_counters(derive_key(seed, 1), g) is set. That is
the scheme of the loader grain replaced, so runs and figures made before still hold.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import datasets
from datasets import transforms

SEED, BATCH = 3, 64
# 1442 / 64 = 22.5 steps per epoch: step 22 spans the first epoch boundary.
STEPS = (0, 5, 22, 23, 45)
SHUFFLE_STREAM, FLIP_STREAM = 2, 1


def data_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  fields = dict(dataset='digits', data_dir=str(data_dir), train_split='train',
                eval_split='test', image_size=None, random_flip=True, download=False,
                num_workers=0)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  datasets.get_dataset_info(data_config(path))   # prepares the embedded digits
  return path


@pytest.fixture(scope='module')
def train_split(data_dir):
  """(images uint8 [N, 8, 8, 1], labels) of the train split in storage order."""
  source = tfds.data_source('digits', split='train', data_dir=str(data_dir),
                            download=False)
  records = [source[i] for i in range(len(source))]
  return (np.stack([r['image'] for r in records]),
          np.array([r['label'] for r in records], np.int32))


def expected_batch(train_split, step, process_index=0, process_count=1):
  images, labels = train_split
  n, local = len(labels), BATCH // process_count
  positions = step * BATCH + process_index * local + np.arange(local)
  indices = np.array([
      transforms.permutation(
          transforms.derive_key(SEED, SHUFFLE_STREAM, int(g) // n), n)[g % n]
      for g in positions])
  flip_key = transforms.derive_key(SEED, FLIP_STREAM)
  flip_hash = transforms.hash_counters(flip_key, positions)
  flip = flip_hash >= np.uint64(2**63)
  batch_images = images[indices].copy()
  batch_images[flip] = batch_images[flip][:, :, ::-1]
  return {'image': batch_images, 'label': labels[indices]}


def assert_same(batch, expected):
  assert set(batch) == set(expected)
  for key in expected:
    assert batch[key].dtype == expected[key].dtype, key
    np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)


def test_batches_are_the_function_of_seed_step_and_process(data_dir, train_split):
  for process_count in (1, 2):
    for process_index in range(process_count):
      batches = datasets.make_train_batches(
          data_config(data_dir), seed=SEED, global_batch_size=BATCH,
          process_index=process_index, process_count=process_count)
      for step in STEPS:
        expected = expected_batch(train_split, step, process_index, process_count)
        assert_same(batches.get(step), expected)
      iterator = batches.iterate(STEPS[-1])
      for step in range(STEPS[-1], STEPS[-1] + 3):
        assert_same(next(iterator),
                    expected_batch(train_split, step, process_index, process_count))
      iterator.close()


def test_two_processes_cover_the_global_batch_exactly_once(data_dir, train_split):
  whole = datasets.make_train_batches(data_config(data_dir), seed=SEED,
                                      global_batch_size=BATCH)
  halves = [datasets.make_train_batches(data_config(data_dir), seed=SEED,
                                        global_batch_size=BATCH, process_index=p,
                                        process_count=2) for p in range(2)]
  for step in STEPS:
    parts = [half.get(step) for half in halves]
    assert [len(part['label']) for part in parts] == [BATCH // 2] * 2
    joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    assert_same(joined, whole.get(step))
    assert_same(joined, expected_batch(train_split, step))


def test_a_restart_at_any_step_continues_the_uninterrupted_stream(data_dir):
  batches = datasets.make_train_batches(data_config(data_dir), seed=SEED,
                                        global_batch_size=BATCH)
  uninterrupted = batches.iterate(0)
  stream = [next(uninterrupted) for _ in range(30)]
  uninterrupted.close()
  for restart in (1, 22, 23):   # the position is the step: nothing else to restore
    fresh = datasets.make_train_batches(data_config(data_dir), seed=SEED,
                                        global_batch_size=BATCH)
    resumed = fresh.iterate(restart)
    for step in range(restart, restart + 4):
      assert_same(next(resumed), stream[step])
    resumed.close()


def test_fused_steps_come_stacked_and_put_runs_on_each(data_dir):
  batches = datasets.make_train_batches(data_config(data_dir), seed=SEED,
                                        global_batch_size=BATCH)
  put_calls = []

  def put(local):
    put_calls.append(local['image'].shape)
    return jax.device_put(local)

  iterator = batches.iterate(20, steps_per_call=3, put=put)
  for first_step in (20, 23, 26):
    fused = next(iterator)
    assert isinstance(fused['image'], jax.Array)
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.asarray(fused[key]),
          np.stack([batches.get(first_step + i)[key] for i in range(3)]))
  iterator.close()
  assert put_calls and set(put_calls) == {(3, BATCH, 8, 8, 1)}


def test_toy_points_go_through_the_same_pipeline():
  config = ml_collections.ConfigDict(dict(dataset='toy2d/ring', train_split='train',
                                          eval_split='test'))
  batches = datasets.make_train_batches(config, seed=SEED, global_batch_size=16)
  iterator = batches.iterate(4, steps_per_call=2)
  fused = next(iterator)
  iterator.close()
  np.testing.assert_array_equal(fused['image'],
                                np.stack([batches.get(s)['image'] for s in (4, 5)]))
  assert fused['image'].shape == (2, 16, 2) and fused['image'].dtype == np.float32


@pytest.mark.parametrize('num_workers', [-1, 1.5, True, '2'])
def test_bad_num_workers_is_refused(data_dir, num_workers):
  with pytest.raises(ValueError, match=r'data\.num_workers must be an int >= 0'):
    datasets.make_train_batches(data_config(data_dir, num_workers=num_workers),
                                seed=0, global_batch_size=8)


def test_bad_steps_are_refused(data_dir):
  batches = datasets.make_train_batches(data_config(data_dir), seed=0,
                                        global_batch_size=8)
  with pytest.raises(ValueError, match='step must be an int >= 0'):
    batches.get(-1)
  with pytest.raises(ValueError, match='start_step must be an int >= 0'):
    batches.iterate(-2)
  with pytest.raises(ValueError, match='steps_per_call must be an int >= 1'):
    batches.iterate(0, steps_per_call=0)


@pytest.mark.integration   # starts worker processes (seconds each on 2 cores)
def test_two_worker_processes_give_the_batches_of_none(data_dir, train_split):
  workers = datasets.make_train_batches(data_config(data_dir, num_workers=2), seed=SEED,
                                        global_batch_size=BATCH, process_index=1,
                                        process_count=2)
  produced = workers.iterate(21, steps_per_call=2)
  for first_step in range(21, 31, 2):   # more elements than workers: each serves some
    fused = next(produced)
    for key in ('image', 'label'):
      np.testing.assert_array_equal(fused[key], np.stack(
          [expected_batch(train_split, first_step + i, 1, 2)[key] for i in range(2)]))
  produced.close()
  # Resizing (the decode-side work workers exist for) too, against no workers.
  resized = [datasets.make_train_batches(
      data_config(data_dir, num_workers=num_workers, image_size=12), seed=SEED,
      global_batch_size=BATCH).iterate(40) for num_workers in (2, 0)]
  for _ in range(3):
    assert_same(*[next(iterator) for iterator in resized])
  for iterator in resized:
    iterator.close()
