"""Sample grids, PNG provenance and the samples.npz layout."""

import json

import numpy as np
import pytest
from PIL import Image

from sampling import image_io


def test_grid_places_each_image_at_its_row_and_column():
  images = np.stack([np.full((3, 2, 1), i, np.uint8) for i in range(5)])
  grid = image_io.make_grid(images, num_cols=3, padding=1, pad_value=255)
  assert grid.shape == (2 * 4 + 1, 3 * 3 + 1, 1)
  for i in range(5):
    r, c = divmod(i, 3)
    top, left = 1 + 4 * r, 1 + 3 * c
    np.testing.assert_array_equal(grid[top:top + 3, left:left + 2], i)
  # The sixth cell and the borders are padding.
  assert np.all(grid[5:8, 7:9] == 255) and np.all(grid[0] == 255)


def test_grid_rejects_float_images():
  with pytest.raises(ValueError, match="uint8 NHWC"):
    image_io.make_grid(np.zeros((2, 4, 4, 3), np.float32))


def test_upscale_is_nearest_neighbour():
  image = np.arange(4, dtype=np.uint8).reshape(2, 2, 1)
  big = image_io.upscale(image, min_side=6)
  assert big.shape == (6, 6, 1)
  np.testing.assert_array_equal(big[::3, ::3], image)
  np.testing.assert_array_equal(big[2, 2], image[0, 0])


def test_png_carries_provenance(tmp_path):
  path = tmp_path / "x.png"
  provenance = dict(config_name="c", checkpoint_step=7, seed=1, sampler="ddim")
  image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
  image_io.save_png(str(path), image, provenance)
  assert image_io.read_png_provenance(str(path)) == provenance
  np.testing.assert_array_equal(np.asarray(Image.open(path)), image)


def test_save_samples_layout(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 1), dtype=np.uint8)
  paths = image_io.save_samples(str(tmp_path / "s"), images, dict(config_name="c"))
  with np.load(paths["npz"]) as f:
    np.testing.assert_array_equal(f["arr_0"], images)
    assert f["arr_0"].dtype == np.uint8
    assert json.loads(str(f["provenance"]))["num_samples"] == 7
  assert json.load(open(paths["provenance"]))["shape"] == [4, 4, 1]
  assert image_io.read_png_provenance(paths["grid"])["config_name"] == "c"
