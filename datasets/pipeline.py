"""Deterministic, per-process batches of uint8 images from tfds array_record sources.

Global example stream: position g = step * global_batch_size + row. Epoch
e = g // N holds positions [e N, (e + 1) N) and visits every training example
once, in the order of a permutation that depends only on (seed, e). Process p
takes rows [p * local_B, (p + 1) * local_B) of every global batch and reads only
those examples. Random flips depend only on (seed, g). So `get(step)` is a pure
function of (config, seed, step, process): resuming at a step reproduces the
run exactly, whatever the batch was when the run stopped.

The batches are a grain `MapDataset` over step numbers (TrainBatches): one stage
selects this process's examples of the step, the next reads and decodes them from
the tfds ArrayRecord source, resizes and flips them; grain reads them ahead with
threads and, with config.data.num_workers > 0, worker processes.

`toy2d/<mixture>` names serve float32 2-D points instead (datasets/toy2d.py) through
the same three functions, under the same 'image' key; DatasetInfo.kind tells them
apart ('images' | 'points').
"""
from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
import dataclasses
import math
import os
import threading
from typing import Any, Callable

from absl import flags
import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from datasets import toy2d
from datasets import transforms

# Embedded datasets: prepared automatically, without download, on first use.
EMBEDDED_DATASETS = ('digits', 'shapes', 'shapes/16', 'shapes/32', 'shapes/64')
_EMBEDDED_BUILDERS = ('digits', 'shapes')
# Centre crop applied before squaring and resizing (score_sde / NCSN for CelebA).
_PRE_CROP = {'celeb_a': 140}
_FLIP_STREAM = 1  # Hash streams, so flips and shuffles are independent.
_SHUFFLE_STREAM = 2
_READ_THREADS = 2  # Per process; ArrayRecord reads and PIL decoding release the GIL.
_PREFETCH_BATCHES = 4  # Elements read ahead, per process.
_PREFETCH_PER_WORKER = 2  # Elements each worker process holds ready.
_DEVICE_BUFFER = 2  # Batches put on the devices ahead of the step.
_POSITION_LIMIT = 2**62  # Stream positions stay below it (int64 with room).


class DatasetNotPreparedError(FileNotFoundError):
  """A tfds dataset is not in data_dir and downloading was not allowed."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs to know about the data, after the pipeline's crop/resize."""

  name: str
  # One example under 'image': (H, W, C) after resize/crop; points: (D,).
  image_shape: tuple[int, ...]
  num_classes: int  # 0 when the dataset has no labels.
  num_train_examples: int  # Size of data_config.train_split; 0: unbounded (toy2d).
  num_eval_examples: int  # Size of data_config.eval_split.
  # What each batch holds beside 'image': 'label' (zeros when the dataset has none)
  # and any integer factors (shapes: 'colour', 'position').
  condition_keys: tuple[str, ...] = ('label',)
  kind: str = 'images'  # 'images': uint8 NHWC; 'points': float vectors [B, D].
  dtype: str = 'uint8'  # of 'image' (points: 'float32').
  # Points only, for plots: the square [-extent, extent]^2 that holds the data, and
  # points to mark in it (a mixture's mode centres).
  extent: float = 0.0
  landmarks: tuple[tuple[float, ...], ...] = ()

  @property
  def batch_keys(self) -> tuple[str, ...]:
    """The keys of every batch the pipeline yields (what a step may read)."""
    return ('image', *self.condition_keys)

  def example_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
    """A zero batch with every key, dtype and shape of a real one (for init)."""
    return dict(image=np.zeros((batch_size, *self.image_shape), self.dtype),
                **{key: np.zeros((batch_size,), np.int32) for key in self.condition_keys})


@dataclasses.dataclass(frozen=True)
class _DataOptions:
  """The validated fields of a data config."""

  dataset: str
  data_dir: str | None
  train_split: str
  eval_split: str
  image_size: int | None
  random_flip: bool
  download: bool
  num_workers: int


def _options(data_config: Any) -> _DataOptions:
  """Reads a data ConfigDict (or dict), filling defaults and validating types."""
  get = data_config.get
  dataset = get('dataset', None)
  if not isinstance(dataset, str) or not dataset:
    raise ValueError(
        f'config.data.dataset must be a tfds name such as "cifar10", got {dataset!r}.')
  image_size = get('image_size', None)
  is_size = isinstance(image_size, int) and not isinstance(image_size, bool)
  if image_size is not None and not (is_size and image_size >= 1):
    raise ValueError(
        f'config.data.image_size must be None or a positive int, got {image_size!r}.')
  data_dir = get('data_dir', None)
  num_workers = get('num_workers', 0)
  is_count = isinstance(num_workers, int) and not isinstance(num_workers, bool)
  if not (is_count and num_workers >= 0):
    raise ValueError(
        f'config.data.num_workers must be an int >= 0, got {num_workers!r}.')
  return _DataOptions(
      dataset=dataset,
      data_dir=os.fspath(data_dir) if data_dir else None,
      train_split=get('train_split', 'train'),
      eval_split=get('eval_split', 'test'),
      image_size=image_size,
      random_flip=bool(get('random_flip', False)),
      download=bool(get('download', False)),
      num_workers=num_workers,
  )


def _data_dir_root(data_dir: str | None) -> str:
  return os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)


def _make_builder(options: _DataOptions) -> tfds.core.DatasetBuilder:
  """tfds builder for the name; clear errors for names that cannot work."""
  dataset_name, _ = tfds.core.naming.parse_builder_name_kwargs(options.dataset)
  if dataset_name.namespace:
    # 'huggingface:...' would make tfds `import datasets`, which is this package.
    raise ValueError(
        f'Dataset {options.dataset!r} names a tfds community namespace '
        f'({dataset_name.namespace!r}); only plain tfds names and the embedded '
        f'datasets {", ".join(EMBEDDED_DATASETS)} are supported.'
    )
  try:
    return tfds.builder(options.dataset, data_dir=options.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f'Unknown dataset {options.dataset!r}: tfds has no builder of that name and '
        f'none is prepared in data_dir={_data_dir_root(options.data_dir)!r}. Embedded '
        f'datasets (no download needed): {", ".join(EMBEDDED_DATASETS)}; otherwise use '
        'a tfds catalog name (https://www.tensorflow.org/datasets/catalog), e.g. '
        '"cifar10", "mnist", "celeb_a", "imagenet_resized/32", "lsun/church_outdoor".'
    ) from None


def _not_prepared_message(options: _DataOptions, builder: tfds.core.DatasetBuilder) -> str:
  root = _data_dir_root(options.data_dir)
  dataset_dir = os.path.join(root, builder.name)
  found = sorted(os.listdir(dataset_dir)) if os.path.isdir(dataset_dir) else []
  found_text = f' (found in {dataset_dir}: {found})' if found else ''
  return (
      f'Dataset {options.dataset!r} is not prepared in data_dir={root!r}: expected '
      f'{os.fspath(builder.data_dir)}{found_text}, and config.data.download is False. '
      'Prepare it offline on a machine with internet:\n'
      f'  tfds build {options.dataset} --data_dir=DIR --file_format=array_record\n'
      f'then copy DIR to the cluster and set config.data.data_dir to it (or set '
      'config.data.download=True to download and prepare it here).'
  )


def _tfrecord_only_message(options: _DataOptions, builder: tfds.core.DatasetBuilder) -> str:
  return (
      f'Dataset {options.dataset!r} is prepared in {os.fspath(builder.data_dir)} '
      f'only as {builder.info.file_format}, which has no random access. Convert it:\n'
      f'  tfds convert_format --dataset_version_dir={os.fspath(builder.data_dir)} '
      '--out_file_format=array_record\n'
      f'or rebuild it: tfds build {options.dataset} --data_dir=DIR '
      '--file_format=array_record (in an empty DIR).'
  )


def _prepare(builder: tfds.core.DatasetBuilder, options: _DataOptions) -> tfds.core.DatasetBuilder:
  """Prepares the dataset as array_record; returns a builder that reads the files."""
  try:
    builder.download_and_prepare(file_format='array_record')
    return builder
  except OSError:
    # Processes sharing a data_dir may prepare at once: tfds renames each finished
    # folder into place, which fails for all but the first. Theirs is as good.
    prepared_elsewhere = _make_builder(options)
    if not prepared_elsewhere.is_prepared():
      raise
    return prepared_elsewhere


def _open_sources(
    options: _DataOptions, splits: Sequence[str]
) -> tuple[tfds.core.DatasetBuilder, list[Sequence[Any]]]:
  """Random-access sources of the given splits; prepares embedded datasets."""
  builder = _make_builder(options)
  is_embedded = builder.name in _EMBEDDED_BUILDERS
  if (is_embedded or options.download) and not builder.is_prepared():
    builder = _prepare(builder, options)
  # Ask for the sources before checking `is_prepared`, so that
  # `tfds.testing.mock_data` (which fakes the sources, not the files) works.
  try:
    sources = [builder.as_data_source(split=split) for split in splits]
  except (NotImplementedError, ValueError, FileNotFoundError) as error:
    if not builder.is_prepared():
      raise DatasetNotPreparedError(_not_prepared_message(options, builder)) from None
    if isinstance(error, NotImplementedError):
      raise ValueError(_tfrecord_only_message(options, builder)) from error
    if isinstance(error, ValueError):
      raise ValueError(
          f'Dataset {options.dataset!r}: cannot read split(s) {list(splits)}; '
          f'available splits: {list(builder.info.splits)} ({error}). Check '
          'config.data.train_split / eval_split.'
      ) from error
    raise
  return builder, sources


def _image_spec(
    builder: tfds.core.DatasetBuilder, options: _DataOptions
) -> tuple[tuple[int, int, int], int]:
  """(image shape after the pipeline, number of classes) from the tfds features."""
  features = builder.info.features
  if 'image' not in features:
    raise ValueError(
        f'Dataset {options.dataset!r} has no "image" feature; features: {list(features)}.')
  height, width, channels = features['image'].shape
  if options.image_size is None:
    if height is None or width is None:
      raise ValueError(
          f'Dataset {options.dataset!r} has images of varying size; set '
          'config.data.image_size to crop and resize them to a square.'
      )
    shape = (height, width, channels)
  else:
    shape = (options.image_size, options.image_size, channels)
  label = features['label'] if 'label' in features else None
  num_classes = label.num_classes if isinstance(label, tfds.features.ClassLabel) else 0
  return shape, num_classes


def get_dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Shapes and sizes of the configured dataset (prepares embedded datasets)."""
  options = _options(data_config)
  if toy2d.is_toy(options.dataset):
    return _points_info(options)
  splits = [options.train_split, options.eval_split]
  builder, (train, evaluation) = _open_sources(options, splits)
  image_shape, num_classes = _image_spec(builder, options)
  return DatasetInfo(
      name=options.dataset,
      image_shape=image_shape,
      num_classes=num_classes,
      num_train_examples=len(train),
      num_eval_examples=len(evaluation),
      condition_keys=('label', *_factor_keys(builder)),
  )


def _points_info(options: _DataOptions) -> DatasetInfo:
  """A 2-D mixture (datasets/toy2d.py): float32 points, no labels, no tfds."""
  mixture = toy2d.mixture_of(options.dataset)
  for split in (options.train_split, options.eval_split):
    toy2d.check_split(split)
  return DatasetInfo(
      name=options.dataset, image_shape=(2,), num_classes=0, num_train_examples=0,
      num_eval_examples=toy2d.EVAL_EXAMPLES, kind='points', dtype='float32',
      extent=mixture.extent, landmarks=tuple(map(tuple, mixture.centres.tolist())))


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f'Need 0 <= process_index < process_count, got {process_index} and {process_count}.')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={global_batch_size} must be a positive multiple of the '
        f'number of processes ({process_count}); change config.batch_size.'
    )
  return global_batch_size // process_count


def _supports_batched_reads(source: Sequence[Any]) -> bool:
  """Whether source.__getitems__ works: it reads in parallel (fast on remote storage).

  The fake sources of `tfds.testing.mock_data` define a __getitems__ that cannot be
  called (it lacks `self`), so this is probed once rather than assumed.
  """
  if not hasattr(source, '__getitems__') or len(source) == 0:
    return False
  try:
    source.__getitems__([0])
  except TypeError:
    return False
  return True


# Integer factor ids batches carry beside 'label' when the dataset has them (shapes:
# the caption is "a {colour} {label} at {position}"), for caption conditioning.
FACTOR_KEYS = ('colour', 'position')


def _factor_keys(builder) -> tuple[str, ...]:
  return tuple(name for name in FACTOR_KEYS if name in builder.info.features)


class _Reader:
  """Reads examples by index and turns them into a uint8/int32 batch."""

  def __init__(self, source: Sequence[Any], options: _DataOptions, builder_name: str,
               image_shape: tuple[int, int, int], has_labels: bool,
               factors: Sequence[str] = ()):
    self._source = source
    self.factors = tuple(factors)
    self._image_size = options.image_size
    self._pre_crop = _PRE_CROP.get(builder_name)
    self._image_shape = image_shape
    self._has_labels = has_labels
    self._batched_reads = _supports_batched_reads(source)

  def __len__(self) -> int:
    return len(self._source)

  def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    keys = [int(i) for i in indices]
    if self._batched_reads:
      records = self._source.__getitems__(keys)
    else:
      records = [self._source[key] for key in keys]
    images = np.empty((len(keys), *self._image_shape), np.uint8)
    labels = np.zeros(len(keys), np.int32)
    extras = {name: np.zeros(len(keys), np.int32) for name in self.factors}
    for row, record in enumerate(records):
      image = np.asarray(record['image'])
      if self._image_size is not None:
        image = transforms.square_and_resize(image, self._image_size, self._pre_crop)
      images[row] = image
      if self._has_labels:
        labels[row] = record['label']
      for name in self.factors:
        extras[name][row] = record[name]
    return {'image': images, 'label': labels, **extras}


def _open_reader(data_config: Any, split_field: str) -> tuple[_DataOptions, _Reader]:
  options = _options(data_config)
  split = getattr(options, split_field)
  builder, (source,) = _open_sources(options, [split])
  image_shape, num_classes = _image_spec(builder, options)
  factors = _factor_keys(builder)
  return options, _Reader(source, options, builder.name, image_shape, num_classes > 0,
                          factors)


class _PointsReader:
  """A fixed set of points read by index, as _Reader reads images."""

  factors = ()

  def __init__(self, points: np.ndarray):
    self._points = points

  def __len__(self) -> int:
    return len(self._points)

  def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    points = self._points[np.asarray(indices, np.int64)]
    return {'image': points, 'label': np.zeros(len(points), np.int32)}


# ------------------------------------------------------------- grain stages
class _SelectExamples(grain.transforms.Map):
  """step -> (global stream positions, dataset indices) of this process's rows.

  Per-process sharding and shuffling as the module docstring says; the epoch
  permutations are cached for the last few epochs (a batch spans at most 2).
  """

  def __init__(self, num_examples: int, *, seed: int, global_batch_size: int,
               process_index: int, process_count: int):
    self._num_examples = num_examples
    self._seed = seed
    self._global_batch_size = global_batch_size
    self._local_batch_size = global_batch_size // process_count
    self._row_offset = process_index * self._local_batch_size
    self._permutations: dict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()  # grain's read threads share this stage.

  def __getstate__(self) -> dict[str, Any]:
    # Sent to worker processes: a lock does not pickle, and the cache is rebuilt.
    state = dict(self.__dict__, _permutations=collections.OrderedDict())
    del state['_lock']
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _epoch_permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._permutations:
        key = transforms.derive_key(self._seed, _SHUFFLE_STREAM, epoch)
        self._permutations[epoch] = transforms.permutation(key, self._num_examples)
        while len(self._permutations) > 3:
          self._permutations.popitem(last=False)
      return self._permutations[epoch]

  def map(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    first = int(step) * self._global_batch_size + self._row_offset
    positions = first + np.arange(self._local_batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self._num_examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      in_epoch = epochs == epoch
      indices[in_epoch] = self._epoch_permutation(int(epoch))[offsets[in_epoch]]
    return positions, indices


class _ReadAndAugment(grain.transforms.Map):
  """(positions, indices) -> batch: reads and decodes, resizes, flips by position."""

  def __init__(self, reader: _Reader, *, seed: int, random_flip: bool):
    self._reader = reader
    self._flip_key = transforms.derive_key(seed, _FLIP_STREAM) if random_flip else None

  def map(self, rows: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    positions, indices = rows
    batch = self._reader.read(indices)
    if self._flip_key is not None:
      flip_bits = transforms.hash_counters(self._flip_key, positions) >> np.uint64(63)
      flip = flip_bits.astype(bool)
      batch['image'][flip] = batch['image'][flip, :, ::-1]
    return batch


def _all_steps(global_batch_size: int) -> grain.MapDataset:
  """Step numbers 0, 1, ...: as many as int64 stream positions can count."""
  return grain.MapDataset.range(_POSITION_LIMIT // global_batch_size)


def _read_ahead(dataset: grain.MapDataset, num_workers: int = 0) -> grain.IterDataset:
  """dataset's elements in order, produced _PREFETCH_BATCHES ahead by read threads;
  with num_workers > 0, by that many processes, each producing every num_workers-th
  element whole (grain's mp_prefetch: decoding and augmentation leave the GIL of
  the training process)."""
  elements = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=_READ_THREADS, prefetch_buffer_size=_PREFETCH_BATCHES))
  if num_workers:
    _grain_flags_at_defaults()
    elements = elements.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=_PREFETCH_PER_WORKER))
  return elements


def _grain_flags_at_defaults() -> None:
  """Lets grain's worker processes start in programs that never parse absl flags.

  grain 0.2.18 reads its absl flags when it starts workers; in a program that did
  not parse flags (tests, benchmarks, notebooks; main.py does) that read raises.
  Marking only grain's flags as given keeps their defaults and every other flag
  untouched.
  """
  if flags.FLAGS.is_parsed():
    return
  for name in list(flags.FLAGS):
    if name.startswith('grain_'):
      flags.FLAGS[name].present = max(flags.FLAGS[name].present, 1)


def _check_step(step: int, name: str) -> None:
  if not isinstance(step, (int, np.integer)) or step < 0:
    raise ValueError(f'{name} must be an int >= 0, got {step!r}.')


class TrainBatches:
  """Training batches as a grain MapDataset whose element `step` is that step's batch.

  The element is a pure function of (config, seed, step, process) (module
  docstring), so the iterator's position IS the step: a resumed run iterates from
  its checkpoint's step, and checkpoints hold no iterator state.
  """

  def __init__(self, steps: grain.MapDataset, num_workers: int = 0):
    self._steps = steps
    self._num_workers = num_workers

  def get(self, step: int) -> dict[str, np.ndarray]:
    """This process's batch of global step `step`: 'image' uint8 NHWC, 'label' int32."""
    _check_step(step, 'step')
    return self._steps[int(step)]

  def iterate(self, start_step: int, *, steps_per_call: int = 1,
              put: Callable[[dict[str, np.ndarray]], Any] | None = None
              ) -> grain.DatasetIterator:
    """get(start_step), get(start_step + 1), ... forever, read ahead (_read_ahead).

    steps_per_call > 1 yields that many consecutive batches stacked on a new leading
    axis (fused steps). `put` (the loop's: this process's share -> global arrays on
    the batch sharding) runs with the stacking in a thread _DEVICE_BUFFER elements
    ahead, so each transfer overlaps the step before it; grain's own
    experimental.device_put is that with jax.device_put, which cannot assemble a
    multi-process array. close() the iterator to stop its threads and workers.
    """
    _check_step(start_step, 'start_step')
    if not isinstance(steps_per_call, int) or steps_per_call < 1:
      raise ValueError(f'steps_per_call must be an int >= 1, got {steps_per_call!r}.')
    elements = _read_ahead(self._steps[int(start_step):], self._num_workers)
    if steps_per_call > 1:  # after the read-ahead, which so holds steps, not groups
      elements = elements.batch(steps_per_call)
    if put is not None:
      elements = grain.experimental.ThreadPrefetchIterDataset(
          elements.map(put), prefetch_buffer_size=_DEVICE_BUFFER)
    return iter(elements)


def make_train_batches(
    data_config: ml_collections.ConfigDict,
    *,
    seed: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> TrainBatches:
  """Deterministic training batches of config.data.train_split for one process."""
  _local_batch_size(global_batch_size, process_index, process_count)
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative int, got {seed!r}.')
  options = _options(data_config)
  if toy2d.is_toy(options.dataset):
    toy2d.check_split(options.train_split)
    points = toy2d.TrainPoints(toy2d.mixture_of(options.dataset), seed=int(seed),
                               global_batch_size=global_batch_size,
                               process_index=process_index, process_count=process_count)
    return TrainBatches(_all_steps(global_batch_size).map(points.get),
                        options.num_workers)
  options, reader = _open_reader(data_config, 'train_split')
  if len(reader) == 0:
    raise ValueError('The training split is empty.')
  select = _SelectExamples(len(reader), seed=int(seed),
                           global_batch_size=global_batch_size,
                           process_index=process_index, process_count=process_count)
  read = _ReadAndAugment(reader, seed=int(seed), random_flip=options.random_flip)
  return TrainBatches(_all_steps(global_batch_size).map(select).map(read),
                      options.num_workers)


def make_eval_batches(
    data_config: ml_collections.ConfigDict,
    *,
    split: str,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    num_examples: int | None = None,
    random_subset_seed: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split` (or its first num_examples) in storage order.

  random_subset_seed: num_examples drawn uniformly at random without replacement
  (this seed) instead of the first ones, still in storage order.
  Every process gets the same number of batches, ceil(n / global_batch_size);
  rows past the end are zero images with label 0 and 'mask' False. Read ahead by
  threads (_read_ahead), never by worker processes: one pass does not repay them.
  """
  local_batch_size = _local_batch_size(global_batch_size, process_index, process_count)
  eval_config = dict(data_config.items())
  eval_config['eval_split'] = split
  options = _options(eval_config)
  if toy2d.is_toy(options.dataset):
    reader = _PointsReader(toy2d.split_points(toy2d.mixture_of(options.dataset), split))
  else:
    _, reader = _open_reader(eval_config, 'eval_split')
  if num_examples is None:
    num_examples = len(reader)
  elif not 0 <= num_examples <= len(reader):
    raise ValueError(
        f'num_examples={num_examples} must be in [0, {len(reader)}], the size of split {split!r}.')
  num_batches = math.ceil(num_examples / global_batch_size)
  chosen = np.arange(num_examples, dtype=np.int64)   # the positions read, in order
  if random_subset_seed is not None:
    chosen = np.sort(np.random.default_rng(random_subset_seed).choice(
        len(reader), num_examples, replace=False))

  def batch_at(batch_index: int) -> dict[str, np.ndarray]:
    first = batch_index * global_batch_size + process_index * local_batch_size
    positions = first + np.arange(local_batch_size, dtype=np.int64)
    mask = positions < num_examples
    real = reader.read(chosen[positions[mask]])
    batch = {
        'image': np.zeros((local_batch_size, *real['image'].shape[1:]),
                          real['image'].dtype),
        'label': np.zeros(local_batch_size, np.int32),
        'mask': mask,
        **{name: np.zeros(local_batch_size, np.int32) for name in reader.factors},
    }
    for name in ('image', 'label', *reader.factors):
      batch[name][mask] = real[name]
    return batch

  return iter(_read_ahead(grain.MapDataset.range(num_batches).map(batch_at)))
