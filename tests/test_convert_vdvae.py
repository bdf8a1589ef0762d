"""python -m convert --from=vdvae: openai/vdvae's state dicts -> a workdir of the
hierarchical VAE family that main.py evaluates.

Nothing on PyPI builds VDVAE, so the test writes what its train_helpers.save_model
writes (tests/manifests/vdvae_cifar10.txt's layout) with torch.save from random
weights at a small size, converts it, and compares the converted network with forward
passes written here in torch directly on the state dict, after vae.py and
vae_helpers.py: the posterior pass and the ELBO's terms (with the project's noise
draws), and the top-down pass from given latents (the sampling path).
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

torch = pytest.importorskip("torch")
F = torch.nn.functional

from configs import bases, vdvae_cifar  # noqa: E402
from convert import __main__ as cli  # noqa: E402
from convert import vdvae  # noqa: E402
from tests import manifests  # noqa: E402
from tests.convert_testing import (  # noqa: E402
    assert_converting_again_is_refused, assert_fails_before_writing, assert_same_params,
    cli_flags, family_and_abstract_params, restore, save_code_pickle, write_first_half)
from train import modes  # noqa: E402
from train import hvae as hvae_family  # noqa: E402
from train.workdir_guard import check_workdir_config  # noqa: E402

IMAGE_SHAPE = (32, 32, 3)
# hps.py's cifar10 set over its argparse defaults.
PUBLISHED = dict(enc_blocks="32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
                 dec_blocks="1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21",
                 width=384, zdim=16, bottleneck_multiple=0.25, num_mixtures=10)
SMALL = dict(enc_blocks="32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x2",
             dec_blocks="1x1,4m1,4x1,8m4,16m8,32m16,32x1",
             width=16, zdim=4, bottleneck_multiple=0.25, num_mixtures=2)
TOLERANCE = 1e-4


# ------------------------------------------------ the authors' state dict and saving
def parse_layers(spec: str) -> list[tuple[int, int | None]]:
  """vae.py's parse_layer_string: (resolution, down rate or mix-in resolution)."""
  layers = []
  for token in spec.split(","):
    if "x" in token:
      resolution, count = token.split("x")
      layers += [(int(resolution), None)] * int(count)
    elif "m" in token or "d" in token:
      resolution, arg = token.replace("m", "d").split("d")
      layers.append((int(resolution), int(arg)))
    else:
      layers.append((int(token), None))
  return layers


def authors_state_dict(enc_blocks, dec_blocks, width, zdim, bottleneck_multiple,
                       num_mixtures, channels=3) -> dict[str, tuple[int, ...]]:
  """VAE(H).state_dict()'s names and shapes, in its order (a module's own parameters,
  then its submodules in the order vae.py creates them)."""
  middle = int(width * bottleneck_multiple)
  shapes: dict[str, tuple[int, ...]] = {}

  def conv(name, cin, cout, kernel=1):
    shapes[f"{name}.weight"] = (cout, cin, kernel, kernel)
    shapes[f"{name}.bias"] = (cout,)

  def block(name, cin, cout, resolution):   # vae.py's Block: c1 1x1, c2, c3, c4 1x1
    kernel = 3 if resolution > 2 else 1
    conv(f"{name}.c1", cin, middle)
    conv(f"{name}.c2", middle, middle, kernel)
    conv(f"{name}.c3", middle, middle, kernel)
    conv(f"{name}.c4", middle, cout)

  conv("encoder.in_conv", channels, width, 3)
  for i, (resolution, _) in enumerate(parse_layers(enc_blocks)):
    block(f"encoder.enc_blocks.{i}", width, width, resolution)
  shapes["decoder.gain"] = shapes["decoder.bias"] = (1, width, 1, 1)
  layers = parse_layers(dec_blocks)
  for i, (resolution, _) in enumerate(layers):
    name = f"decoder.dec_blocks.{i}"
    block(f"{name}.enc", 2 * width, 2 * zdim, resolution)
    block(f"{name}.prior", width, 2 * zdim + width, resolution)
    conv(f"{name}.z_proj", zdim, width)
    block(f"{name}.resnet", width, width, resolution)
  for j, resolution in enumerate(sorted({r for r, _ in layers})):   # all <= 64
    shapes[f"decoder.bias_xs.{j}"] = (1, width, resolution, resolution)
  conv("decoder.out_net.out_conv", width, 10 * num_mixtures)
  return shapes


def random_state_dict(shapes, seed) -> dict[str, torch.Tensor]:
  """Random weights with a real signal at every layer (no zero-initialised prior)."""
  generator = torch.Generator().manual_seed(seed)
  state = {}
  for name, shape in shapes.items():
    if name == "decoder.gain":
      value = 0.5 + torch.rand(shape, generator=generator)
    elif name.endswith(".weight"):
      fan_in = shape[1] * shape[2] * shape[3]
      value = torch.randn(shape, generator=generator) / fan_in ** 0.5
    else:
      value = 0.1 * torch.randn(shape, generator=generator)
    state[name] = value
  return state


# ------------------------------------------------------ the reference: vae.py's passes
class AuthorsVAE:
  """VAE.forward's computation, in torch on the state dict (NCHW inside)."""

  def __init__(self, state, enc_blocks, dec_blocks, zdim):
    self.state, self.zdim = state, zdim
    self.enc_layers = parse_layers(enc_blocks)
    self.dec_layers = parse_layers(dec_blocks)
    self.resolutions = sorted({r for r, _ in self.dec_layers})

  def conv(self, name, x, padding=0):
    return F.conv2d(x, self.state[f"{name}.weight"], self.state[f"{name}.bias"],
                    padding=padding)

  def block(self, name, x, resolution, residual, down_rate=None):
    padding = 1 if resolution > 2 else 0
    h = self.conv(f"{name}.c1", F.gelu(x))
    h = self.conv(f"{name}.c2", F.gelu(h), padding)
    h = self.conv(f"{name}.c3", F.gelu(h), padding)
    h = self.conv(f"{name}.c4", F.gelu(h))
    out = x + h if residual else h
    return out if down_rate is None else F.avg_pool2d(out, down_rate, down_rate)

  def encode(self, x_nhwc):
    x = self.conv("encoder.in_conv", x_nhwc.permute(0, 3, 1, 2), 1)
    activations = {x.shape[2]: x}
    for i, (resolution, down_rate) in enumerate(self.enc_layers):
      x = self.block(f"encoder.enc_blocks.{i}", x, resolution, True, down_rate)
      activations[x.shape[2]] = x
    return activations

  def decode(self, batch, activations=None, noise=None, latents=None):
    """Posterior pass (activations, noise: z = q_mean + q_std * noise) or the pass
    from given latents -> (mixture parameters NHWC, per-layer stats NCHW)."""
    xs = {r: self.state[f"decoder.bias_xs.{j}"].repeat(batch, 1, 1, 1)
          for j, r in enumerate(self.resolutions)}
    stats = []
    for i, (resolution, mixin) in enumerate(self.dec_layers):
      name, x = f"decoder.dec_blocks.{i}", xs[resolution]
      if mixin is not None:
        x = x + F.interpolate(xs[mixin][:, :x.shape[1]],
                              scale_factor=resolution // mixin)
      layer = {}
      if activations is not None:
        q = self.block(f"{name}.enc", torch.cat([x, activations[resolution]], 1),
                       resolution, False)
        layer["q_mean"], layer["q_log_std"] = q.chunk(2, dim=1)
      feats = self.block(f"{name}.prior", x, resolution, False)
      layer["p_mean"] = feats[:, :self.zdim]
      layer["p_log_std"] = feats[:, self.zdim:2 * self.zdim]
      x = x + feats[:, 2 * self.zdim:]
      if activations is not None:
        z = layer["q_mean"] + torch.exp(layer["q_log_std"]) * noise[i]
        # vae_helpers.gaussian_analytical_kl
        layer["kl"] = (-0.5 + layer["p_log_std"] - layer["q_log_std"] + 0.5 * (
            layer["q_log_std"].exp() ** 2 + (layer["q_mean"] - layer["p_mean"]) ** 2)
            / layer["p_log_std"].exp() ** 2)
      else:
        z = latents[i]
      x = x + self.conv(f"{name}.z_proj", z)
      xs[resolution] = self.block(f"{name}.resnet", x, resolution, True)
      stats.append(layer)
    x = xs[max(self.resolutions)]
    x = x * self.state["decoder.gain"] + self.state["decoder.bias"]
    return self.conv("decoder.out_net.out_conv", x).permute(0, 2, 3, 1), stats


def authors_distortion(x, l):
  """vae_helpers.discretized_mix_logistic_loss * ndims: -log p(x | z) per example."""
  batch = x.shape[0]
  nr_mix = l.shape[-1] // 10
  logits = l[..., :nr_mix]
  rest = l[..., nr_mix:].reshape(*x.shape, 3 * nr_mix)
  means, coeffs = rest[..., :nr_mix], torch.tanh(rest[..., 2 * nr_mix:])
  log_scales = torch.clamp(rest[..., nr_mix:2 * nr_mix], min=-7.0)
  xc = x[..., None]
  m2 = means[..., 1, :] + coeffs[..., 0, :] * xc[..., 0, :]
  m3 = (means[..., 2, :] + coeffs[..., 1, :] * xc[..., 0, :]
        + coeffs[..., 2, :] * xc[..., 1, :])
  centered = xc - torch.stack([means[..., 0, :], m2, m3], dim=3)
  inv = torch.exp(-log_scales)
  plus, minus = inv * (centered + 1 / 255), inv * (centered - 1 / 255)
  mid = inv * centered
  delta = torch.sigmoid(plus) - torch.sigmoid(minus)
  log_probs = torch.where(
      xc < -0.999, plus - F.softplus(plus),
      torch.where(xc > 0.999, -F.softplus(minus),
                  torch.where(delta > 1e-5, torch.log(torch.clamp(delta, min=1e-12)),
                              mid - log_scales - 2 * F.softplus(mid) - np.log(127.5))))
  log_probs = log_probs.sum(3) + torch.log_softmax(logits, -1)
  return -torch.logsumexp(log_probs, -1).reshape(batch, -1).sum(-1)


# ------------------------------------------------------------------------ fixtures
def project_config(settings=None):
  settings = settings or SMALL
  config = vdvae_cifar.get_config()
  config.model.ch = settings["width"]
  for field in ("enc_blocks", "dec_blocks", "zdim", "bottleneck_multiple",
                "num_mixtures"):
    config.hvae[field] = settings[field]
  config.eval.iwae_samples = 0
  return config


def family_and_abstract(config):
  return family_and_abstract_params(config, IMAGE_SHAPE)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """(EMA and raw state dicts, the EMA file's path, the Converted) for a run whose
  -model.th (behind DistributedDataParallel's 'module.') lies beside -model-ema.th."""
  shapes = authors_state_dict(**SMALL)
  ema, raw = random_state_dict(shapes, 0), random_state_dict(shapes, 1)
  folder = tmp_path_factory.mktemp("vdvae")
  source = str(folder / "cifar10-seed0-iter-900000-model-ema.th")
  torch.save(ema, source)
  torch.save({"module." + n: t for n, t in raw.items()},
             str(folder / "cifar10-seed0-iter-900000-model.th"))
  config = project_config()
  converted = vdvae.convert(source, config, IMAGE_SHAPE, family_and_abstract(config)[1])
  return ema, raw, source, converted


def images(batch=2, seed=0):
  data = np.random.default_rng(seed).integers(0, 256, (batch, *IMAGE_SHAPE))
  data[0, :2] = 0      # the edge levels take the distribution's tails
  data[1, -2:] = 255
  return data.astype(np.uint8)


def to_nchw(a):
  return torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- tests
def test_manifest_is_the_authors_state_dict_at_the_cifar10_hps():
  published = authors_state_dict(**PUBLISHED)
  assert list(manifests.read("vdvae_cifar10").items()) == list(published.items())
  assert len(published) == 1393
  assert sum(int(np.prod(s)) for s in published.values()) == 39_145_700


def test_full_manifest_converts_with_nothing_left_over():
  """Every tensor of the published CIFAR-10 layout maps (eval_shape only)."""
  shapes = manifests.read("vdvae_cifar10")
  tensors = {name: np.broadcast_to(np.zeros((), np.float32), shape)
             for name, shape in shapes.items()}
  config = vdvae_cifar.get_config()
  _, abstract = family_and_abstract(config)
  params = vdvae.convert_tensors(tensors, config, IMAGE_SHAPE, abstract, "ema.th")
  assert len(jax.tree.leaves(abstract)) == len(shapes)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda a: a.shape, abstract)
  ddp = {"module." + name: value for name, value in tensors.items()}   # a -model.th
  vdvae.convert_tensors(ddp, config, IMAGE_SHAPE, abstract, "model.th")


@pytest.mark.integration
def test_converted_network_equals_the_authors_passes(small, fast_compile):
  ema, raw, source, converted = small
  assert converted.num_tensors == 2 * len(ema)
  assert converted.details["raw_source"].endswith("-model.th")
  for path, digest in converted.files.items():
    with open(path, "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == digest
  assert len(converted.files) == 2
  family, _ = family_and_abstract(project_config())
  data = images()
  x_in, target = (np.asarray(a) for a in family.prepare(data))
  rng = jax.random.PRNGKey(3)
  posterior_pass = jax.jit(lambda p, x: family._apply(p, x, rng=rng))
  latents_pass = jax.jit(lambda p, z: family._apply(
      p, z, 1.0, method=family.network.decode_latents, rng=jax.random.PRNGKey(0)))
  report = []
  for label, state, params in (("raw", raw, converted.params),
                               ("ema", ema, converted.ema_params)):
    reference = AuthorsVAE(state, SMALL["enc_blocks"], SMALL["dec_blocks"],
                           SMALL["zdim"])
    # The posterior pass with the project's noise draws.
    mixture, stats = posterior_pass(params, x_in)
    noise = [to_nchw((s["z"] - s["q_mean"]) / np.exp(s["q_log_std"])) for s in stats]
    with torch.no_grad():
      activations = reference.encode(torch.from_numpy(x_in))
      theirs, their_stats = reference.decode(2, activations, noise=noise)
    differences = {"posterior pass": np.abs(np.asarray(mixture) - theirs.numpy()).max()}
    for key in ("q_mean", "q_log_std", "p_mean", "p_log_std"):
      differences[key] = max(np.abs(to_nchw(s[key]).numpy() - t[key].numpy()).max()
                             for s, t in zip(stats, their_stats))
    assert np.abs(theirs.numpy()).max() > 0.5        # a real signal
    # The ELBO's terms of that draw, as the family's objective computes them.
    recon = -np.asarray(family.log_likelihood(target, mixture))
    kls = np.asarray(hvae_family.layer_kls(stats))
    their_recon = authors_distortion(torch.from_numpy(target), theirs).numpy()
    their_kl = torch.stack([t["kl"].sum((1, 2, 3)) for t in their_stats]).numpy()
    differences["-log p(x|z) (relative)"] = np.abs(recon - their_recon).max() / np.abs(
        their_recon).max()
    differences["KL (relative)"] = np.abs(kls - their_kl).max() / np.abs(their_kl).max()
    # The sampling path: the top-down pass from given latents.
    latents = [np.random.default_rng(i).normal(size=(2, r, r, SMALL["zdim"])).astype(
        np.float32) for i, (r, _) in enumerate(parse_layers(SMALL["dec_blocks"]))]
    prior_mixture, _ = latents_pass(params, latents)
    with torch.no_grad():
      theirs_prior, _ = reference.decode(2, latents=[to_nchw(z) for z in latents])
    differences["latents pass"] = np.abs(np.asarray(prior_mixture)
                                         - theirs_prior.numpy()).max()
    bad = {k: float(v) for k, v in differences.items() if not v < TOLERANCE}
    assert not bad, f"{label}: max |project - authors| {bad}"
    report.append(f"{label}: " + ", ".join(f"{k} {float(v):.2g}"
                                           for k, v in differences.items()))
  print("\n".join(report))


def test_ema_file_alone_gives_ema_params_for_both(small, tmp_path):
  ema, _, _, converted = small
  source = str(tmp_path / "cifar10-seed1-iter-1050000-model-ema.th")
  torch.save(ema, source)
  config = project_config()
  alone = vdvae.convert(source, config, IMAGE_SHAPE, family_and_abstract(config)[1])
  assert alone.details["raw_source"] is None and len(alone.files) == 1
  assert_same_params(alone.params, converted.ema_params)
  assert_same_params(alone.ema_params, converted.ema_params)


def _flags(source, workdir, *overrides) -> flags.FlagValues:
  return cli_flags("vdvae", source, "vdvae_cifar.py", workdir,
                   f"--config.model.ch={SMALL['width']}",
                   *(f"--config.hvae.{field}={SMALL[field]}" for field in
                     ("enc_blocks", "dec_blocks", "zdim", "num_mixtures")), *overrides)


@pytest.mark.integration
def test_cli_writes_a_workdir_that_main_evaluates(small, tmp_path, fast_compile):
  _, _, source, converted = small
  workdir = str(tmp_path / "workdir")
  flag_values = _flags(source, workdir, "--config.eval.sample_metrics=none",
                       "--config.eval.batch_size=8", "--config.eval.iwae_samples=0")
  config = flag_values.config
  with tfds.testing.mock_data(num_examples=8):
    metadata = cli.run(flag_values)
    record = metadata["converted_from"]
    assert record["format"] == "vdvae"
    assert record["num_tensors"] == converted.num_tensors
    assert len(record["files"]) == 2
    check_workdir_config(config, workdir, bases.base_config("hvae"))
    state = restore(config, workdir)
    assert_same_params(state.params, converted.params)
    assert_same_params(state.ema_params, converted.ema_params)
    report = modes.evaluate(config, workdir)
    assert report["params"] == "ema" and np.isfinite(report["bpd_elbo"]), report
    assert_converting_again_is_refused(_flags(source, workdir))


def _malformed(tmp_path, state, case) -> str:
  source = str(tmp_path / "broken-model-ema.th")
  state = dict(state)
  if case == "truncated":
    torch.save(state, source)
    return write_first_half(source)
  if case == "code":
    return save_code_pickle(source, "encoder.in_conv.weight", tmp_path)
  if case == "missing":
    del state["decoder.dec_blocks.2.z_proj.bias"]
  elif case == "extra":
    state["decoder.extra.weight"] = torch.zeros(3)
  elif case == "shape":
    state["encoder.enc_blocks.0.c2.weight"] = torch.zeros(4, 4, 1, 1)
  elif case == "width":
    state = random_state_dict(authors_state_dict(**dict(SMALL, width=32)), 0)
  torch.save(state, source)
  return source


@pytest.mark.parametrize("case,match", [
    ("missing", r"tensor 'decoder.dec_blocks.2.z_proj.bias' \(the project's "
                r"dec_block_2/z_proj/bias\) is missing"),
    ("extra", r"tensor 'decoder.extra.weight' has no place in the project's network"),
    ("shape", r"tensor 'encoder.enc_blocks.0.c2.weight' has shape \(4, 4, 1, 1\), but "
              r"the project's encoder/block_0/c2/kernel needs \(4, 4, 3, 3\)"),
    ("width", r"the state dict has 32 where config.model.ch gives 16"),
    ("truncated", r"is not a readable PyTorch checkpoint"),
    ("code", r"(?i)holds more than tensors and is refused .*unsupported global"),
])
def test_malformed_state_dicts_fail_before_writing(small, tmp_path, case, match):
  ema = small[0]
  source = _malformed(tmp_path, ema, case)
  assert_fails_before_writing(tmp_path, project_config(), source, "vdvae", match)


def test_configs_the_weights_do_not_fit_fail(small):
  ema, _, source, _ = small
  config = project_config()
  _, abstract = family_and_abstract(config)
  config.hvae.input_mean = 127.5
  with pytest.raises(ValueError, match="VDVAE standardises cifar10 with 120.63838"):
    vdvae.convert(source, config, IMAGE_SHAPE, abstract)
  other = project_config(dict(SMALL, dec_blocks="1x1,4m1,4x1,8m4,16m8,32m16"))
  with pytest.raises(ValueError, match=r"dec_blocks \(number of blocks\)"):
    vdvae.convert(source, other, IMAGE_SHAPE, family_and_abstract(other)[1])
