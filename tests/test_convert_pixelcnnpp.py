"""python -m convert --from=pixelcnnpp_tf: openai/pixel-cnn's TensorFlow checkpoint of
PixelCNN++ -> a workdir that main.py evaluates.

Nothing on PyPI builds the authors' network, so the test writes what their train.py
saves (tests/manifests/pixelcnnpp_cifar10.txt's layout: the variables, their
ExponentialMovingAverage shadows, the Adam state) as a real TF checkpoint from random
weights at a small size, converts it, and compares the converted network with a
forward pass written here in TF ops directly on the checkpoint's tensors, after
pixel_cnn_pp/model.py and nn.py (model_spec, gated_resnet, the shifted convolutions, the
weight-normalised layers, discretized_mix_logistic_loss).
"""

from __future__ import annotations

import collections
import hashlib
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags

from configs import bases, pixelcnnpp_cifar
from convert import __main__ as cli
from convert import pixelcnnpp_tf
from convert import workdir as workdir_lib
from tests import manifests
from tests.convert_testing import (
    assert_converting_again_is_refused, assert_fails_before_writing, assert_same_params,
    cli_flags, family_and_abstract_params, restore, write_first_half)
from train import modes
from train.workdir_guard import check_workdir_config

SMALL = dict(nr_resnet=1, nr_filters=16, nr_logistic_mix=4)
IMAGE_SHAPE = (32, 32, 3)       # the config's dataset (CIFAR-10, mocked)
TEST_SHAPE = (2, 8, 8, 3)       # the network is convolutional: compared at 8x8
TOLERANCE = 1e-4                # float32, ~30 layers deep
EMA = "/ExponentialMovingAverage"


# ------------------------------------------------- the authors' variables and saving
def authors_variables(nr_resnet: int, nr_filters: int, nr_logistic_mix: int,
                      channels: int = 3) -> dict[str, tuple[int, ...]]:
  """Every global variable train.py's Saver writes, in tf.global_variables() order:
  model_spec's weight-normalised layers (V, g, b; one name counter per layer kind, in
  the order the layers are built), their ExponentialMovingAverage shadows, then
  nn.adam_updates' unnamed tf.Variables (the step, then per trainable variable its two
  moments)."""
  filters = nr_filters
  counters: collections.Counter = collections.Counter()
  trainable: dict[str, tuple[int, ...]] = {}

  def layer(kind, v_shape, units):
    scope = f"model/{kind}_{counters[kind]}"
    counters[kind] += 1
    trainable.update({f"{scope}/V": v_shape, f"{scope}/g": (units,),
                      f"{scope}/b": (units,)})

  def conv2d(size, cin, cout):
    layer("conv2d", (*size, cin, cout), cout)

  def gated_resnet(size, aux_channels):   # conv, nin of concat_elu(aux), conv
    conv2d(size, 2 * filters, filters)
    if aux_channels:
      layer("dense", (2 * aux_channels, filters), filters)
    conv2d(size, 2 * filters, 2 * filters)

  down, down_right = (2, 3), (2, 2)
  for size in ((2, 3), (1, 3), (2, 1)):   # u; ul from above and from the left
    conv2d(size, channels + 1, filters)
  for level in range(3):                  # up pass
    if level:
      conv2d(down, filters, filters)
      conv2d(down_right, filters, filters)
    for _ in range(nr_resnet):
      gated_resnet(down, 0)
      gated_resnet(down_right, filters)               # aux: u
  for level in range(3):                  # down pass
    if level:
      for size in (down, down_right):
        layer("deconv2d", (*size, filters, filters), filters)
    for _ in range(nr_resnet + (level > 0)):
      gated_resnet(down, filters)                     # aux: the kept u
      gated_resnet(down_right, 2 * filters)           # aux: [u, the kept ul]
  layer("dense", (filters, 10 * nr_logistic_mix), 10 * nr_logistic_mix)
  variables = dict(trainable)
  variables.update({name + EMA: shape for name, shape in trainable.items()})
  variables["Variable"] = ()
  for k, shape in enumerate(trainable.values()):
    variables[f"Variable_{2 * k + 1}"] = shape      # first moment
    variables[f"Variable_{2 * k + 2}"] = shape      # second moment
  return variables


def random_checkpoint_tensors(shapes, seed=0) -> dict[str, np.ndarray]:
  """Random weights with a real signal: g near 1, biases and V of both signs; the EMA
  shadows differ from the raw variables."""
  rng = np.random.default_rng(seed)
  tensors = {}
  for name, shape in shapes.items():
    leaf = name.removesuffix(EMA).rsplit("/", 1)[-1]
    if name == "Variable":
      value = np.asarray(12345.0)
    elif leaf == "g":
      value = rng.uniform(0.6, 1.4, shape)
    elif leaf == "b":
      value = rng.normal(0.0, 0.1, shape)
    else:
      value = rng.normal(0.0, 0.05, shape)
    tensors[name] = np.asarray(value, np.float32)
  return tensors


def write_checkpoint(prefix: str, tensors: dict[str, np.ndarray],
                     version: str = "V1") -> None:
  """What tf.train.Saver() writes for variables of these names: V1 (one file, as
  params_cifar.ckpt was released) through a Saver, V2 through its SaveV2 op."""
  if version == "V2":
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                      shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[name]) for name in names])
    return
  graph = tf.Graph()
  with graph.as_default():
    variables = {name: tf.compat.v1.Variable(value, name="var")
                 for name, value in tensors.items()}
    saver = tf.compat.v1.train.Saver(
        var_list=variables, write_version=getattr(tf.compat.v1.train.SaverDef, version))
    with tf.compat.v1.Session(graph=graph) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      saver.save(session, prefix, write_meta_graph=False, write_state=False)


# ------------------------------------------- the reference: the authors' forward pass
class AuthorsPixelCNNPP:
  """model_spec's forward pass (dropout off) in TF ops on the checkpoint's tensors."""

  def __init__(self, tensors: dict[str, np.ndarray], nr_resnet: int, ema: bool):
    self.tensors, self.nr_resnet = tensors, nr_resnet
    self.suffix = EMA if ema else ""
    self.counters: collections.Counter = collections.Counter()

  def _vars(self, kind):
    scope = f"model/{kind}_{self.counters[kind]}"
    self.counters[kind] += 1
    return [tf.constant(self.tensors[f"{scope}/{leaf}{self.suffix}"])
            for leaf in ("V", "g", "b")]

  def conv2d(self, x, stride):
    v, g, b = self._vars("conv2d")
    w = g[None, None, None, :] * tf.nn.l2_normalize(v, [0, 1, 2])
    return tf.nn.bias_add(tf.nn.conv2d(x, w, [1, stride, stride, 1], "VALID"), b)

  def deconv2d(self, x, size, stride):
    v, g, b = self._vars("deconv2d")
    batch, height, width, _ = x.shape
    filters = v.shape[2]
    w = g[None, None, :, None] * tf.nn.l2_normalize(v, [0, 1, 3])
    target = [batch, height * stride + size[0] - 1, width * stride + size[1] - 1,
              filters]
    return tf.nn.bias_add(
        tf.nn.conv2d_transpose(x, w, target, [1, stride, stride, 1], "VALID"), b)

  def nin(self, x):
    v, g, b = self._vars("dense")
    y = tf.einsum("bhwc,cd->bhwd", x, v)
    return y * (g / tf.sqrt(tf.reduce_sum(tf.square(v), [0]))) + b

  def down_shifted_conv2d(self, x, size=(2, 3), stride=1):
    pad = (size[1] - 1) // 2
    x = tf.pad(x, [[0, 0], [size[0] - 1, 0], [pad, pad], [0, 0]])
    return self.conv2d(x, stride)

  def down_right_shifted_conv2d(self, x, size=(2, 2), stride=1):
    x = tf.pad(x, [[0, 0], [size[0] - 1, 0], [size[1] - 1, 0], [0, 0]])
    return self.conv2d(x, stride)

  def down_shifted_deconv2d(self, x, size=(2, 3)):
    y = self.deconv2d(x, size, 2)
    pad = (size[1] - 1) // 2
    return y[:, :y.shape[1] - size[0] + 1, pad:y.shape[2] - pad]

  def down_right_shifted_deconv2d(self, x, size=(2, 2)):
    y = self.deconv2d(x, size, 2)
    return y[:, :y.shape[1] - size[0] + 1, :y.shape[2] - size[1] + 1]

  @staticmethod
  def concat_elu(x):
    return tf.nn.elu(tf.concat([x, -x], -1))

  def gated_resnet(self, x, aux, conv):
    c1 = conv(self.concat_elu(x))
    if aux is not None:
      c1 += self.nin(self.concat_elu(aux))
    c2 = conv(self.concat_elu(c1))
    a, b = tf.split(c2, 2, -1)
    return x + a * tf.sigmoid(b)

  @staticmethod
  def down_shift(x):
    return tf.concat([tf.zeros_like(x[:, :1]), x[:, :-1]], 1)

  @staticmethod
  def right_shift(x):
    return tf.concat([tf.zeros_like(x[:, :, :1]), x[:, :, :-1]], 2)

  def __call__(self, x: np.ndarray) -> np.ndarray:
    down, down_right = self.down_shifted_conv2d, self.down_right_shifted_conv2d
    x = tf.constant(x)
    x_pad = tf.concat([x, tf.ones_like(x[..., :1])], -1)
    u_list = [self.down_shift(down(x_pad, (2, 3)))]
    ul_list = [self.down_shift(down(x_pad, (1, 3)))
               + self.right_shift(down_right(x_pad, (2, 1)))]
    for level in range(3):
      if level:
        u_list.append(down(u_list[-1], stride=2))
        ul_list.append(down_right(ul_list[-1], stride=2))
      for _ in range(self.nr_resnet):
        u_list.append(self.gated_resnet(u_list[-1], None, down))
        ul_list.append(self.gated_resnet(ul_list[-1], u_list[-1], down_right))
    u, ul = u_list.pop(), ul_list.pop()
    for level in range(3):
      if level:
        u = self.down_shifted_deconv2d(u)
        ul = self.down_right_shifted_deconv2d(ul)
      for _ in range(self.nr_resnet + (level > 0)):
        u = self.gated_resnet(u, u_list.pop(), down)
        ul = self.gated_resnet(ul, tf.concat([u, ul_list.pop()], -1), down_right)
    assert not u_list and not ul_list
    return self.nin(tf.nn.elu(ul)).numpy()


def authors_log_likelihood(x: np.ndarray, out: np.ndarray, nr_mix: int) -> np.ndarray:
  """-discretized_mix_logistic_loss(x, out, sum_all=False): nats per example."""
  batch, height, width, channels = x.shape
  logits = out[..., :nr_mix]
  rest = out[..., nr_mix:].reshape(batch, height, width, channels, 3 * nr_mix)
  means, coeffs = rest[..., :nr_mix], np.tanh(rest[..., 2 * nr_mix:])
  log_scales = np.maximum(rest[..., nr_mix:2 * nr_mix], -7.0)
  xc = x[..., None]
  m2 = means[..., 1, :] + coeffs[..., 0, :] * xc[..., 0, :]
  m3 = (means[..., 2, :] + coeffs[..., 1, :] * xc[..., 0, :]
        + coeffs[..., 2, :] * xc[..., 1, :])
  centered = xc - np.stack([means[..., 0, :], m2, m3], axis=3)
  inv = np.exp(-log_scales)
  plus, minus = inv * (centered + 1 / 255), inv * (centered - 1 / 255)
  mid = inv * centered
  sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
  softplus = lambda z: np.logaddexp(0.0, z)  # noqa: E731
  delta = sigmoid(plus) - sigmoid(minus)
  log_probs = np.where(
      xc < -0.999, plus - softplus(plus),
      np.where(xc > 0.999, -softplus(minus),
               np.where(delta > 1e-5, np.log(np.maximum(delta, 1e-12)),
                        mid - log_scales - 2 * softplus(mid) - np.log(127.5))))

  def log_sum_exp(z, keepdims=False):
    peak = z.max(-1, keepdims=True)
    total = peak + np.log(np.exp(z - peak).sum(-1, keepdims=True))
    return total if keepdims else total[..., 0]

  log_probs = log_probs.sum(3) + logits - log_sum_exp(logits, keepdims=True)
  return log_sum_exp(log_probs).sum((1, 2))


# ------------------------------------------------------------------------ fixtures
def project_config(**overrides):
  config = pixelcnnpp_cifar.get_config()
  for field, value in {**SMALL, **overrides}.items():
    config.model[field] = value
  return config


def family_and_abstract(config, image_shape=IMAGE_SHAPE):
  return family_and_abstract_params(config, image_shape)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """(the checkpoint's tensors, its V1 prefix, the converted Converted)."""
  tensors = random_checkpoint_tensors(authors_variables(**SMALL))
  prefix = str(tmp_path_factory.mktemp("pxpp") / "params_cifar.ckpt")
  write_checkpoint(prefix, tensors, "V1")
  config = project_config()
  _, abstract = family_and_abstract(config)
  converted = pixelcnnpp_tf.convert(prefix, config, IMAGE_SHAPE, abstract)
  return tensors, prefix, converted


# --------------------------------------------------------------------------- tests
def test_manifest_is_the_authors_variables_at_the_published_flags():
  """tests/manifests/pixelcnnpp_cifar10.txt, name by name, shape by shape and in
  order, is what this file's enumeration of train.py's variables gives."""
  published = authors_variables(**pixelcnnpp_tf.PUBLISHED)
  assert list(manifests.read("pixelcnnpp_cifar10").items()) == list(published.items())
  assert len(published) == 2269
  num_params = sum(int(np.prod(s)) for n, s in published.items()
                   if n.startswith("model/") and not n.endswith(EMA))
  assert num_params == 53_659_080    # the 53.66M of configs/pixelcnnpp_cifar.py


def test_full_manifest_converts_with_nothing_left_over():
  """Every tensor of the published layout maps (eval_shape only at the full size)."""
  shapes = manifests.read("pixelcnnpp_cifar10")
  tensors = {name: np.broadcast_to(np.zeros((), np.float32), shape)
             for name, shape in shapes.items()}
  config = pixelcnnpp_cifar.get_config()
  _, abstract = family_and_abstract(config)
  params, ema_params, details = pixelcnnpp_tf.convert_tensors(
      tensors, config, IMAGE_SHAPE, abstract, "params_cifar.ckpt")
  flat = jax.tree.leaves(abstract)
  assert len(flat) == details["num_params_tensors"] == details["num_ema_tensors"] == 567
  assert details["num_optimizer_tensors_not_converted"] == 1135
  assert details["architecture"] == dict(pixelcnnpp_tf.PUBLISHED, channels=3)
  for tree in (params, ema_params):
    assert jax.tree.map(np.shape, tree) == jax.tree.map(lambda a: a.shape, abstract)


@pytest.mark.parametrize("version", ["V1", "V2"])
@pytest.mark.integration
def test_converted_network_equals_the_authors_forward_pass(small, tmp_path, version):
  tensors, prefix, converted = small
  if version == "V2":
    prefix = str(tmp_path / "params_cifar.ckpt")
    write_checkpoint(prefix, tensors, "V2")
    config = project_config()
    converted_v2 = pixelcnnpp_tf.convert(prefix, config, IMAGE_SHAPE,
                                         family_and_abstract(config)[1])
    assert converted_v2.details["checkpoint_version"] == "V2"
    assert len(converted_v2.files) == 2       # .index and .data-00000-of-00001
    assert_same_params(converted_v2.params, converted.params)
    assert_same_params(converted_v2.ema_params, converted.ema_params)
    return
  assert converted.details["checkpoint_version"] == "V1"
  assert converted.num_tensors == 2 * len(variable_names(tensors))
  with open(prefix, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  assert converted.files == {os.path.abspath(prefix): digest}
  family, _ = family_and_abstract(project_config(), TEST_SHAPE[1:])
  data = np.random.default_rng(1).integers(0, 256, TEST_SHAPE).astype(np.int32)
  data[0, :2] = 0        # the edge levels take the distribution's tails
  data[1, -2:] = 255
  x = data.astype(np.float32) / 127.5 - 1.0
  report = []
  for ema, params in ((False, converted.params), (True, converted.ema_params)):
    theirs = AuthorsPixelCNNPP(tensors, SMALL["nr_resnet"], ema=ema)(x)
    ours = np.asarray(family.model.apply({"params": params}, x, train=False))
    assert np.abs(theirs).max() > 0.5    # a real signal
    difference = float(np.abs(ours - theirs).max())
    assert difference < TOLERANCE, (
        f"{'EMA' if ema else 'raw'}: max |project - authors| = {difference:.3g}")
    # The mixture likelihood reads the outputs in the authors' layout.
    log_lik = np.asarray(family.log_likelihood(params, data))
    reference = authors_log_likelihood(x.astype(np.float64), theirs.astype(np.float64),
                                       SMALL["nr_logistic_mix"])
    relative = float(np.abs(log_lik - reference).max() / np.abs(reference).max())
    assert relative < 1e-5, f"log-likelihood: max relative difference {relative:.3g}"
    report.append(f"{'ema' if ema else 'raw'} {difference:.2g}")
  print("max |project - authors| logits:", ", ".join(report))


def variable_names(tensors):
  return [n for n in tensors if n.startswith("model/") and not n.endswith(EMA)]


def _flags(source, workdir, *overrides) -> flags.FlagValues:
  return cli_flags("pixelcnnpp_tf", source, "pixelcnnpp_cifar.py", workdir,
                   "--config.model.ch=16", "--config.model.nr_resnet=1",
                   "--config.model.nr_logistic_mix=4", *overrides)


@pytest.mark.integration
def test_cli_writes_a_workdir_that_main_evaluates(small, tmp_path, fast_compile):
  """The command line; params are the raw variables, ema_params their averages;
  --mode=eval's test-set bits/dim read the workdir (with the EMA, as the authors)."""
  _, prefix, converted = small
  workdir = str(tmp_path / "workdir")
  flag_values = _flags(prefix, workdir, "--config.eval.sample_metrics=none",
                       "--config.eval.batch_size=8")
  config = flag_values.config
  with tfds.testing.mock_data(num_examples=8):
    metadata = cli.run(flag_values)
    record = metadata["converted_from"]
    assert record["format"] == "pixelcnnpp_tf"
    assert record["num_tensors"] == converted.num_tensors
    assert record["num_optimizer_tensors_not_converted"] == 1 + converted.num_tensors
    check_workdir_config(config, workdir, bases.base_config("autoregressive"))
    state = restore(config, workdir)
    assert_same_params(state.params, converted.params)
    assert_same_params(state.ema_params, converted.ema_params)
    report = modes.evaluate(config, workdir)
    assert report["params"] == "ema" and np.isfinite(report["bpd"]), report
    assert_converting_again_is_refused(_flags(prefix, workdir))


def _malformed(tmp_path, tensors, prefix, case) -> str:
  """A copy of the checkpoint broken in one way; returns its prefix."""
  source = str(tmp_path / "broken.ckpt")
  tensors = dict(tensors)
  if case == "truncated":
    return write_first_half(prefix, source)
  if case == "truncated_v2":
    write_checkpoint(source, tensors, "V2")
    data_file = source + ".data-00000-of-00001"
    os.truncate(data_file, os.path.getsize(data_file) // 2)
    return source
  if case == "missing":
    del tensors["model/dense_3/b"]
  elif case == "missing_ema":
    del tensors["model/deconv2d_1/V" + EMA]
  elif case == "extra":
    tensors["model/dense_99/V"] = np.zeros((3, 3), np.float32)
  elif case == "shape":
    tensors["model/conv2d_5/V"] = tensors["model/conv2d_5/V"][:, :, :8]
  elif case == "integer":
    tensors["model/conv2d_5/b"] = np.zeros((16,), np.int32)
  elif case == "adam":
    tensors["Variable_3"] = np.zeros((5,), np.float32)
  elif case == "nr_resnet":
    tensors = random_checkpoint_tensors(authors_variables(2, 16, 4))
  write_checkpoint(source, tensors, "V2")    # V2: quicker to write than V1
  return source


@pytest.mark.parametrize("case,match", [
    ("missing", r"tensor 'model/dense_3/b' \(the project's "
                r"pass2_level2_u0/nin_aux/bias\) is missing"),
    ("missing_ema", r"tensor 'model/deconv2d_1/V/ExponentialMovingAverage' \(the "
                    r"project's pass2_level1_ul_upsample/conv/v\) is missing"),
    ("extra", r"tensor 'model/dense_99/V' has no place in the project's network"),
    ("shape", r"tensor 'model/conv2d_5/V' has shape \(2, 2, 8, 16\), but the project's "
              r"pass1_level0_ul0/conv_in/conv/v needs \(2, 2, 32, 16\)"),
    ("integer", r"tensor 'model/conv2d_5/b' is int32, not floating point"),
    ("adam", r"Adam state 'Variable_3' has shape \(5,\), but belongs to "
             r"'model/conv2d_0/g' of shape \(16,\)"),
    ("nr_resnet", r"the checkpoint has nr_resnet=2; set config.model.nr_resnet=2"),
    ("truncated", r"is not a readable TensorFlow V1 checkpoint"),
    ("truncated_v2", r"is not a readable TensorFlow V2 checkpoint"),
])
def test_malformed_checkpoints_fail_before_writing(small, tmp_path, case, match):
  tensors, prefix, _ = small
  source = _malformed(tmp_path, tensors, prefix, case)
  assert_fails_before_writing(tmp_path, project_config(), source, "pixelcnnpp_tf",
                              match)


def test_a_missing_checkpoint_and_other_networks_are_refused(small, tmp_path):
  with pytest.raises(ValueError, match="is not a TensorFlow checkpoint"):
    workdir_lib.convert_to_workdir(project_config(), str(tmp_path / "w"),
                                   str(tmp_path / "nothing.ckpt"),
                                   source_format="pixelcnnpp_tf")
  config = project_config()
  config.model.update(name="pixelcnn", likelihood=None, dropout=0.0)
  with tfds.testing.mock_data(num_examples=8):
    with pytest.raises(ValueError, match="set config.model.name='pixelcnnpp'"):
      workdir_lib.convert_to_workdir(config, str(tmp_path / "w"), small[1],
                                     source_format="pixelcnnpp_tf")
  assert not (tmp_path / "w").exists()
