"""Tests of the embedded tfds builders and of the deterministic input pipeline."""
import collections
import socket
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import datasets
from datasets import shapes
from datasets import transforms

NUM_DIGITS = 1797
DIGITS_TRAIN, DIGITS_TEST = 1442, 355


def data_config(dataset, data_dir, **overrides):
  fields = dict(
      dataset=dataset,
      data_dir=str(data_dir),
      train_split='train',
      eval_split='test',
      image_size=None,
      random_flip=False,
      download=False,
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A data_dir with digits and shapes/16 prepared once for the whole session."""
  path = tmp_path_factory.mktemp('tfds')
  datasets.get_dataset_info(data_config('digits', path))
  datasets.get_dataset_info(data_config('shapes/16', path))
  return path


@pytest.fixture
def no_network(monkeypatch):
  """Makes any attempt to open a connection or resolve a host fail loudly."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError('network access attempted in a test')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)
  return attempts


def read_split(dataset, data_dir, split, count=None):
  """The first `count` (default: all) records of a prepared split, in storage order."""
  source = tfds.data_source(dataset, split=split, data_dir=str(data_dir), download=False)
  return [source[i] for i in range(len(source) if count is None else count)]


def sklearn_digits():
  """uint8 images round(v * 255 / 16) computed with integers, and labels."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  counts = digits.images.astype(np.int64)
  # Round half up; v * 255 / 16 is a half-integer only at v = 8 (127.5 -> 128).
  images = ((counts * 255 + 8) // 16).astype(np.uint8)[..., None]
  return images, digits.target


def image_key(image, label):
  return (np.asarray(image).tobytes(), int(label))


# ---------------------------------------------------------------- digits


def test_digits_split_sizes_shapes_and_range(data_dir):
  train = read_split('digits', data_dir, 'train')
  test = read_split('digits', data_dir, 'test')
  assert (len(train), len(test)) == (DIGITS_TRAIN, DIGITS_TEST)
  for split in (train, test):
    images = np.stack([r['image'] for r in split])
    labels = np.array([r['label'] for r in split])
    assert images.shape[1:] == (8, 8, 1) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    assert set(labels) == set(range(10))
  test_counts = np.bincount([r['label'] for r in test], minlength=10)
  np.testing.assert_array_equal(test_counts, [35, 36, 35, 36, 36, 36, 36, 35, 34, 36])


def test_digits_are_sklearn_digits_and_splits_are_disjoint(data_dir):
  images, labels = sklearn_digits()
  expected = collections.Counter(image_key(x, y) for x, y in zip(images, labels))
  assert len(expected) == NUM_DIGITS  # All distinct, so keys identify examples.
  train, test = (
      collections.Counter(image_key(r['image'], r['label'])
                          for r in read_split('digits', data_dir, split))
      for split in ('train', 'test'))
  assert not set(train) & set(test)
  assert train + test == expected


def test_digits_test_split_is_every_fifth_example_of_each_class(data_dir):
  images, labels = sklearn_digits()
  expected_test = set()
  seen_per_class = collections.defaultdict(int)
  for image, label in zip(images, labels):
    seen_per_class[label] += 1
    if seen_per_class[label] % 5 == 0:
      expected_test.add(image_key(image, label))
  test = {image_key(r['image'], r['label']) for r in read_split('digits', data_dir, 'test')}
  assert test == expected_test


# ---------------------------------------------------------------- shapes

# Independent copies of the documented factor values.
COLOUR_RGB = {
    'red': (230, 25, 25),
    'green': (30, 200, 50),
    'blue': (40, 90, 255),
    'yellow': (245, 220, 30),
    'magenta': (220, 40, 220),
    'cyan': (30, 220, 230),
}
POSITION_FRACTIONS = {'top': 0.2, 'center': 0.5, 'bottom': 0.8, 'left': 0.2, 'right': 0.8}


def position_pixel(position, size):
  """'top left' -> (row, col); a lone 'center' is the centre in both axes."""
  words = position.split()
  vertical, horizontal = (words * 2)[:2]
  return int(POSITION_FRACTIONS[vertical] * size), int(POSITION_FRACTIONS[horizontal] * size)


def test_shapes_captions_labels_and_centre_colours(data_dir):
  builder = tfds.builder('shapes/16', data_dir=str(data_dir))
  features = builder.info.features
  records = read_split('shapes/16', data_dir, 'test')
  assert len(records) == 2000
  assert len(read_split('shapes/16', data_dir, 'train')) == 10000
  seen = collections.Counter()
  for record in records:
    shape = features['shape'].int2str(record['shape'])
    colour = features['colour'].int2str(record['colour'])
    position = features['position'].int2str(record['position'])
    assert record['caption'].decode() == f'a {colour} {shape} at {position}'
    assert record['label'] == record['shape']
    assert record['image'].shape == (16, 16, 3) and record['image'].dtype == np.uint8
    row, col = position_pixel(position, 16)
    np.testing.assert_array_equal(record['image'][row, col], COLOUR_RGB[colour])
    far_corner = record['image'][15 if row < 8 else 0, 15 if col < 8 else 0]
    assert far_corner[0] == far_corner[1] == far_corner[2] <= 64  # Grey background.
    seen[shape, colour, position] += 1
  assert len(seen) == 4 * 6 * 9  # Every combination of factors occurs.


@pytest.mark.parametrize('shape, fill_ratio', [
    ('circle', np.pi / 4),
    ('square', 1.0),
    ('triangle', 0.5),
    ('cross', 1 - (1 - 0.35) ** 2),
])
def test_shapes_are_recognisable_by_area_and_centroid(shape, fill_ratio):
  """At 64 px, the fraction of the bounding box covered is the shape's area ratio."""
  half_size = 20.0
  image = shapes.render(shape=shape, colour='red', position='center', half_size=half_size,
                        background_level=0, image_size=64)
  coverage = image[..., 0].astype(np.float64) / 230  # Red channel: 0 bg, 230 inside.
  area_ratio = coverage.sum() / (2 * half_size) ** 2
  assert abs(area_ratio - fill_ratio) < 0.02
  rows, cols = np.mgrid[:64, :64] + 0.5
  centre = 32.5  # Centre of pixel (32, 32).
  centroid_row = (coverage * rows).sum() / coverage.sum()
  centroid_col = (coverage * cols).sum() / coverage.sum()
  # A triangle with apex up has its centroid h/3 below the bounding-box centre.
  expected_row = centre + (half_size / 3 if shape == 'triangle' else 0.0)
  assert abs(centroid_row - expected_row) < 0.3 and abs(centroid_col - centre) < 0.3


def test_shapes_build_is_deterministic(data_dir, tmp_path):
  datasets.get_dataset_info(data_config('shapes/16', tmp_path))
  for split, count in (('test', 2000), ('train', 1000)):
    first = read_split('shapes/16', data_dir, split, count)
    second = read_split('shapes/16', tmp_path, split, count)
    for a, b in zip(first, second, strict=True):
      np.testing.assert_array_equal(a['image'], b['image'])
      assert a['caption'] == b['caption']


def test_shapes_default_config_is_32():
  builder = tfds.builder('shapes', data_dir='/nonexistent')
  assert builder.builder_config.name == '32'
  assert builder.info.features['image'].shape == (32, 32, 3)


# ---------------------------------------------------------------- pipeline


def test_dataset_info(data_dir):
  info = datasets.get_dataset_info(data_config('digits', data_dir))
  assert info == datasets.DatasetInfo('digits', (8, 8, 1), 10, DIGITS_TRAIN, DIGITS_TEST)
  info = datasets.get_dataset_info(data_config('shapes/16', data_dir, image_size=8))
  assert info == datasets.DatasetInfo('shapes/16', (8, 8, 3), 4, 10000, 2000,
                                      condition_keys=('label', 'colour', 'position'))


def test_get_is_a_pure_function_of_step(data_dir):
  config = data_config('digits', data_dir, random_flip=True)
  batches = datasets.make_train_batches(config, seed=3, global_batch_size=32)
  fresh = datasets.make_train_batches(config, seed=3, global_batch_size=32)
  for step in (0, 7, 200, 45):  # Out of order on purpose.
    batch = batches.get(step)
    assert batch['image'].shape == (32, 8, 8, 1) and batch['image'].dtype == np.uint8
    assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
    for other in (batches.get(step), fresh.get(step)):
      np.testing.assert_array_equal(batch['image'], other['image'])
      np.testing.assert_array_equal(batch['label'], other['label'])
  other_seed = datasets.make_train_batches(config, seed=4, global_batch_size=32)
  assert not np.array_equal(batches.get(0)['label'], other_seed.get(0)['label'])


def test_iterate_yields_get_from_start_step(data_dir):
  config = data_config('digits', data_dir, random_flip=True)
  batches = datasets.make_train_batches(config, seed=0, global_batch_size=16)
  iterator = batches.iterate(start_step=44)
  for step in range(44, 54):
    batch = next(iterator)
    np.testing.assert_array_equal(batch['image'], batches.get(step)['image'])
    np.testing.assert_array_equal(batch['label'], batches.get(step)['label'])
  iterator.close()


def test_each_epoch_visits_every_example_once_in_a_new_order(data_dir):
  images, labels = sklearn_digits()
  test_keys = {image_key(r['image'], r['label']) for r in read_split('digits', data_dir, 'test')}
  train_keys = {image_key(x, y) for x, y in zip(images, labels)} - test_keys
  batch_size = 2 * 103  # Divides 1442: 7 steps per epoch.
  config = data_config('digits', data_dir)
  batches = datasets.make_train_batches(config, seed=1, global_batch_size=batch_size)
  epochs = []
  for epoch in range(2):
    order = []
    for step in range(epoch * 7, (epoch + 1) * 7):
      batch = batches.get(step)
      order += [image_key(x, y) for x, y in zip(batch['image'], batch['label'])]
    assert len(order) == DIGITS_TRAIN and set(order) == train_keys
    epochs.append(order)
  assert epochs[0] != epochs[1]
  # With a batch size that does not divide N, epochs still hold N consecutive positions.
  ragged = datasets.make_train_batches(config, seed=1, global_batch_size=100)
  stream = []
  for step in range(15):
    batch = ragged.get(step)
    stream += [image_key(x, y) for x, y in zip(batch['image'], batch['label'])]
  assert stream[:DIGITS_TRAIN] == epochs[0]


def test_processes_read_disjoint_halves_of_the_global_batch(data_dir):
  config = data_config('digits', data_dir, random_flip=True)
  single = datasets.make_train_batches(config, seed=5, global_batch_size=64)
  halves = [
      datasets.make_train_batches(config, seed=5, global_batch_size=64, process_index=p,
                                  process_count=2)
      for p in range(2)
  ]
  for step in (0, 22, 23):  # Step 22 spans the epoch boundary (1442 / 64 = 22.5).
    parts = [half.get(step) for half in halves]
    assert parts[0]['image'].shape == (32, 8, 8, 1)
    whole = single.get(step)
    np.testing.assert_array_equal(np.concatenate([p['image'] for p in parts]), whole['image'])
    np.testing.assert_array_equal(np.concatenate([p['label'] for p in parts]), whole['label'])
    keys = [{image_key(x, y) for x, y in zip(p['image'], p['label'])} for p in parts]
    if step != 22:  # Across an epoch boundary an example may occur twice in one batch.
      assert not keys[0] & keys[1]


def test_flips_are_horizontal_at_rate_one_half_and_depend_on_position_only(data_dir):
  flip_config = data_config('digits', data_dir, random_flip=True)
  plain_config = data_config('digits', data_dir)
  plain = datasets.make_train_batches(plain_config, seed=2, global_batch_size=128)
  flipping = datasets.make_train_batches(flip_config, seed=2, global_batch_size=128)
  flipped = []
  for step in range(20):
    original, maybe_flipped = plain.get(step)['image'], flipping.get(step)['image']
    for x, y in zip(original, maybe_flipped):
      mirrored = x[:, ::-1]
      if np.array_equal(x, mirrored):
        continue  # Symmetric: a flip cannot be seen.
      assert np.array_equal(y, x) or np.array_equal(y, mirrored)
      flipped.append(np.array_equal(y, mirrored))
  # 2560 draws of a fair coin: 4 standard deviations is 0.04.
  assert abs(np.mean(flipped) - 0.5) < 0.04
  # The same global position gets the same flip whatever the batch size.
  half_batches = datasets.make_train_batches(flip_config, seed=2, global_batch_size=64)
  joined = np.concatenate([half_batches.get(6)['image'], half_batches.get(7)['image']])
  np.testing.assert_array_equal(joined, flipping.get(3)['image'])


def test_resize_shape_and_antialiased_bilinear_values(data_dir):
  """Halving with antialiased bilinear = separable [1, 3, 3, 1] / 8 filter, stride 2."""
  config = data_config('shapes/16', data_dir, image_size=8)
  batch = next(datasets.make_eval_batches(config, split='test', global_batch_size=16))
  assert batch['image'].shape == (16, 8, 8, 3) and batch['image'].dtype == np.uint8
  records = read_split('shapes/16', data_dir, 'test', 16)
  originals = np.stack([r['image'] for r in records]).astype(np.float64)
  taps = np.array([1, 3, 3, 1]) / 8
  # Output pixel i (interior, 1 <= i <= 6) reads input pixels 2i - 1 .. 2i + 2.
  expected = np.zeros((16, 6, 6, 3))
  for i in range(1, 7):
    for j in range(1, 7):
      window = originals[:, 2 * i - 1:2 * i + 3, 2 * j - 1:2 * j + 3]
      expected[:, i - 1, j - 1] = np.einsum('bhwc,h,w->bc', window, taps, taps)
  np.testing.assert_allclose(batch['image'][:, 1:7, 1:7].astype(np.float64), expected, atol=1.0)
  upsized = datasets.make_train_batches(data_config('digits', data_dir, image_size=20), seed=0,
                                        global_batch_size=4)
  assert upsized.get(0)['image'].shape == (4, 20, 20, 1)


def test_celeb_a_style_pre_crop_keeps_only_the_central_window():
  image = np.zeros((218, 178, 3), np.uint8)
  top, left = (218 - 140) // 2, (178 - 140) // 2  # score_sde's central_crop offsets.
  image[top:top + 140, left:left + 140] = 200
  out = transforms.square_and_resize(image, 64, pre_crop=140)
  assert out.shape == (64, 64, 3)
  assert np.all(out == 200)
  wide = np.zeros((10, 30, 1), np.uint8)
  wide[:, 10:20] = 9
  np.testing.assert_array_equal(transforms.square_and_resize(wide, 10), np.full((10, 10, 1), 9))


def test_eval_batches_cover_split_once_with_padding_mask(data_dir):
  config = data_config('digits', data_dir)
  expected = [image_key(r['image'], r['label']) for r in read_split('digits', data_dir, 'test')]
  batches = list(datasets.make_eval_batches(config, split='test', global_batch_size=128))
  assert [int(b['mask'].sum()) for b in batches] == [128, 128, 99]
  assert all(b['image'].shape == (128, 8, 8, 1) and b['mask'].dtype == bool for b in batches)
  seen = [image_key(x, y)
          for b in batches for x, y, m in zip(b['image'], b['label'], b['mask']) if m]
  assert seen == expected  # Storage order, each example once.
  last = batches[-1]
  assert not last['mask'][99:].any()
  assert not last['image'][99:].any() and not last['label'][99:].any()
  # Two processes: same number of batches each, together the split exactly once.
  per_process = [
      list(datasets.make_eval_batches(config, split='test', global_batch_size=128,
                                      process_index=p, process_count=2))
      for p in range(2)
  ]
  assert len(per_process[0]) == len(per_process[1]) == 3
  rows = [image_key(x, y) for parts in zip(*per_process) for b in parts
          for x, y, m in zip(b['image'], b['label'], b['mask']) if m]
  assert rows == expected
  first_100 = list(datasets.make_eval_batches(config, split='test', global_batch_size=64,
                                              num_examples=100))
  assert [int(b['mask'].sum()) for b in first_100] == [64, 36]


def test_bad_batch_sizes_and_splits_raise(data_dir):
  config = data_config('digits', data_dir)
  with pytest.raises(ValueError, match='global_batch_size=129'):
    datasets.make_train_batches(config, seed=0, global_batch_size=129, process_count=2)
  with pytest.raises(ValueError, match='global_batch_size'):
    datasets.make_eval_batches(config, split='test', global_batch_size=6, process_count=4)
  with pytest.raises(ValueError, match='num_examples'):
    datasets.make_eval_batches(config, split='test', global_batch_size=8,
                               num_examples=DIGITS_TEST + 1)
  with pytest.raises(ValueError, match='available splits'):
    datasets.make_train_batches(data_config('digits', data_dir, train_split='validation'), seed=0,
                                global_batch_size=8)


def test_unknown_dataset_fails_fast_listing_embedded(tmp_path, no_network):
  start = time.monotonic()
  with pytest.raises(ValueError) as error:
    datasets.get_dataset_info(data_config('no_such_dataset_xyz', tmp_path))
  assert time.monotonic() - start < 5
  message = str(error.value)
  assert 'no_such_dataset_xyz' in message and 'digits' in message and 'shapes/16' in message
  assert not no_network


def test_unprepared_dataset_fails_fast_with_instructions(tmp_path, no_network):
  start = time.monotonic()
  with pytest.raises(datasets.DatasetNotPreparedError) as error:
    datasets.make_train_batches(data_config('cifar10', tmp_path), seed=0, global_batch_size=8)
  assert time.monotonic() - start < 5
  message = str(error.value)
  assert 'cifar10' in message and str(tmp_path) in message
  assert 'tfds build cifar10' in message and '--file_format=array_record' in message
  assert not no_network


def test_tfrecord_only_dataset_explains_conversion(tmp_path):
  tfds.builder('digits', data_dir=str(tmp_path)).download_and_prepare(file_format='tfrecord')
  with pytest.raises(ValueError, match='array_record') as error:
    datasets.get_dataset_info(data_config('digits', tmp_path))
  assert 'convert_format' in str(error.value)


def test_preparation_finished_by_another_process_is_used(tmp_path, monkeypatch):
  """Simulates two processes preparing digits into one data_dir at once."""
  prepare = datasets.digits.Digits.download_and_prepare

  def lose_the_race(self, **kwargs):
    prepare(tfds.builder('digits', data_dir=str(tmp_path)), **kwargs)  # The other process.
    raise OSError('rename: directory not empty')  # This process's rename.

  monkeypatch.setattr(datasets.digits.Digits, 'download_and_prepare', lose_the_race)
  info = datasets.get_dataset_info(data_config('digits', tmp_path))
  assert (info.num_train_examples, info.num_eval_examples) == (DIGITS_TRAIN, DIGITS_TEST)

  def fail(self, **kwargs):
    raise OSError('disk full')

  monkeypatch.setattr(datasets.digits.Digits, 'download_and_prepare', fail)
  with pytest.raises(OSError, match='disk full'):
    datasets.get_dataset_info(data_config('digits', tmp_path / 'other'))


def test_huggingface_names_are_rejected_and_datasets_stays_this_package(tmp_path):
  with pytest.raises(ValueError, match='namespace'):
    datasets.get_dataset_info(data_config('huggingface:mnist', tmp_path))
  assert sys.modules['datasets'] is datasets
  assert hasattr(sys.modules['datasets'], 'make_train_batches')


def test_cifar10_through_mock_data(tmp_path, no_network):
  config = data_config('cifar10', tmp_path, random_flip=True)
  with tfds.testing.mock_data(num_examples=256):
    info = datasets.get_dataset_info(config)
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    batches = datasets.make_train_batches(config, seed=0, global_batch_size=128)
    batch = batches.get(0)
    assert batch['image'].shape == (128, 32, 32, 3) and batch['image'].dtype == np.uint8
    assert batch['label'].min() >= 0 and batch['label'].max() <= 9
    np.testing.assert_array_equal(batch['image'], batches.get(0)['image'])
    eval_batch = next(datasets.make_eval_batches(config, split='test', global_batch_size=64))
    assert eval_batch['image'].shape == (64, 32, 32, 3) and eval_batch['mask'].all()
  assert not no_network


# ---------------------------------------------------------------- dequantize


def test_dequantize_none_is_exact_division_by_255():
  images = jnp.arange(256, dtype=jnp.uint8).reshape(1, 16, 16, 1)
  out = jax.jit(lambda x: datasets.dequantize(x, None, 'none'))(images)
  assert out.dtype == jnp.float32
  expected = np.arange(256, dtype=np.float32).reshape(1, 16, 16, 1) / np.float32(255)
  np.testing.assert_array_equal(np.asarray(out), expected)
  assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_dequantize_uniform_noise_range_and_mean():
  images = jnp.tile(jnp.arange(256, dtype=jnp.uint8), 400).reshape(100, 32, 32, 1)
  out = jax.jit(lambda x, key: datasets.dequantize(x, key, 'uniform'))(images, jax.random.key(0))
  noise = np.asarray(out, np.float64) * 256 - np.asarray(images, np.float64)
  assert noise.min() >= 0 and noise.max() < 1 and float(out.max()) < 1.0
  # Mean of U[0, 1) is 1/2, sd 1/sqrt(12); 102,400 draws -> 5 sd is 0.0045.
  assert abs(noise.mean() - 0.5) < 0.0045
  assert abs(noise.var() - 1 / 12) < 0.003
  with pytest.raises(ValueError, match='uniform'):
    datasets.dequantize(images, None, 'gaussian')


def test_dequantize_uniform_stays_in_its_bin_at_the_largest_noise():
  # The noise cap 1 - 2^-16: float32 (x + cap) must stay below x + 1 for all x.
  x = np.arange(256, dtype=np.float32)
  assert np.all(x + np.float32(1 - 2.0**-16) < x + 1)
  assert np.any(x + np.float32(1 - 2.0**-18) == x + 1)  # Without the cap it would not.
  ones = jnp.full((8,), 255, jnp.uint8)
  out = datasets.dequantize(ones, jax.random.key(1), 'uniform')
  assert float(out.max()) < 1.0


def test_hash_permutation_is_a_permutation_and_seed_dependent():
  first = transforms.permutation(transforms.derive_key(0, 2, 0), 1000)
  np.testing.assert_array_equal(np.sort(first), np.arange(1000))
  second = transforms.permutation(transforms.derive_key(0, 2, 1), 1000)
  # Two independent permutations share about 1 fixed point; not hundreds.
  assert (first == second).sum() < 10


def test_shapes_batches_carry_the_caption_factors(data_dir):
  """Train and eval batches of shapes hold colour/position ids equal to the records';
  digits batches have no such keys."""
  records = read_split('shapes/16', data_dir, 'test', 20)
  config = data_config('shapes/16', data_dir)
  batch = next(datasets.make_eval_batches(config, split='test', global_batch_size=32))
  for name in ('label', 'colour', 'position'):
    assert batch[name].dtype == np.int32
    np.testing.assert_array_equal(batch[name][:20], [r[name] for r in records])
  assert set(datasets.make_train_batches(config, seed=0, global_batch_size=4).get(0)) == {
      'image', 'label', 'colour', 'position'}
  digits = datasets.make_train_batches(data_config('digits', data_dir), seed=0,
                                       global_batch_size=4).get(0)
  assert set(digits) == {'image', 'label'}


def test_dataset_info_declares_the_batch_keys(data_dir):
  """What the loop moves to the devices is what the pipeline yields, for each dataset."""
  for name, extra in (('digits', set()), ('shapes/16', {'colour', 'position'})):
    config = data_config(name, data_dir)
    info = datasets.get_dataset_info(config)
    batch = datasets.make_train_batches(config, seed=0, global_batch_size=4).get(0)
    assert set(info.batch_keys) == set(batch) == {'image', 'label'} | extra
    example = info.example_batch(2)
    assert set(example) == set(batch)
    for key in batch:
      assert example[key].dtype == batch[key].dtype
      assert example[key].shape[1:] == batch[key].shape[1:]


def test_cycling_caption_factors_cover_every_caption_once():
  f = shapes.cycling_caption_factors(2 * 216)
  combos = list(zip(f['shape'].tolist(), f['colour'].tolist(), f['position'].tolist()))
  assert len(set(combos[:216])) == 216 and combos[216:] == combos[:216]
  assert max(f['shape']) == len(shapes.SHAPES) - 1
  assert max(f['colour']) == len(shapes.COLOURS) - 1
  assert max(f['position']) == len(shapes.POSITIONS) - 1
