"""python -m convert --from=edm: an EDM network's exported state dict ->
models/ncsnpp.py's SongUNet in configs/edm_cifar.py.

No PyPI package implements EDM's networks, so the reference is written here:
`song_unet_shapes` lists the state dict EDMPrecond(model_type='SongUNet', ...)
registers (NVlabs/edm, training/networks.py; buffers included) and `reference_output`
is SongUNet.forward in torch.nn.functional on those tensors in the authors' layout
(NCHW, OIHW convs, interleaved qkv, the resample_filter buffers applied as EDM's Conv2d
does, GroupNorm min(32, C // 4) groups with epsilon 1e-6). Random weights under those
names (narrow widths; DDPM++ 'vp', NCSN++ 've' and class-conditional variants) are
written with torch.save, converted, and the project's network must give the
reference's output. The published CIFAR-10 layouts (tests/manifests/
edm_cifar10_uncond_vp.txt and _ve.txt) must convert at full size; a .pkl is refused
with the export command.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

torch = pytest.importorskip("torch")
F = torch.nn.functional

from configs import edm_cifar  # noqa: E402
from convert import __main__ as cli  # noqa: E402
from convert import edm  # noqa: E402
from tests import manifests  # noqa: E402
from tests.convert_testing import (  # noqa: E402
    Reading, assert_fails_before_writing, assert_same_params, cli_flags,
    family_and_abstract_params, restore, save_code_pickle, write_first_half)

IMAGE_SHAPE = (32, 32, 3)
# train.py's --arch choices for CIFAR-10 (augment_dim 9 with the default --augment).
ARCHS = {
    "vp": dict(embedding_type="positional", channel_mult_noise=1,
               encoder_type="standard", resample_filter=(1, 1)),
    "ve": dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
               resample_filter=(1, 3, 3, 1)),
}
PUBLISHED = dict(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
                 attn_resolutions=(16,), augment_dim=9)
SMALL = dict(model_channels=16, channel_mult=(1, 2, 2), num_blocks=1,
             attn_resolutions=(16,), augment_dim=9)
# (edm_cifar.py argument, arch, label_dim)
VARIANTS = {"vp": (None, "vp", 0), "ve": ("ncsnpp", "ve", 0),
            "cond_vp": ("cond", "vp", 10)}
TOLERANCE = 1e-4


# ------------------------------------------------- the authors' layout, from their code
def song_unet_shapes(model_channels: int, channel_mult: tuple[int, ...],
                     num_blocks: int, attn_resolutions: tuple[int, ...],
                     augment_dim: int, embedding_type: str, channel_mult_noise: int,
                     encoder_type: str,
                     resample_filter: tuple[int, ...], label_dim: int = 0,
                     img_resolution: int = 32, channels: int = 3,
                     channel_mult_emb: int = 4) -> dict[str, tuple[int, ...]]:
  """EDMPrecond(model_type='SongUNet', decoder_type='standard', ...).state_dict()'s
  names and shapes (buffers too), in its order."""
  shapes: dict[str, tuple[int, ...]] = {}
  emb, noise = model_channels * channel_mult_emb, model_channels * channel_mult_noise
  taps = len(resample_filter)

  def conv(name, cin, cout, kernel, resample=False):
    if kernel:
      shapes[f"model.{name}.weight"] = (cout, cin, kernel, kernel)
      shapes[f"model.{name}.bias"] = (cout,)
    if resample:
      shapes[f"model.{name}.resample_filter"] = (1, 1, taps, taps)

  def linear(name, fin, fout, bias=True):
    shapes[f"model.{name}.weight"] = (fout, fin)
    if bias:
      shapes[f"model.{name}.bias"] = (fout,)

  def norm(name, c):
    shapes[f"model.{name}.weight"] = shapes[f"model.{name}.bias"] = (c,)

  def block(name, cin, cout, up=False, down=False, attention=False):
    norm(f"{name}.norm0", cin)
    conv(f"{name}.conv0", cin, cout, 3, resample=up or down)
    linear(f"{name}.affine", emb, cout)
    norm(f"{name}.norm1", cout)
    conv(f"{name}.conv1", cout, cout, 3)
    if cout != cin or up or down:
      conv(f"{name}.skip", cin, cout, 1, resample=up or down)   # resample_proj=True
    if attention:
      norm(f"{name}.norm2", cout)
      conv(f"{name}.qkv", cout, 3 * cout, 1)
      conv(f"{name}.proj", cout, cout, 1)

  if embedding_type == "fourier":
    shapes["model.map_noise.freqs"] = (noise // 2,)
  if label_dim:
    linear("map_label", label_dim, noise)
  if augment_dim:
    linear("map_augment", augment_dim, noise, bias=False)
  linear("map_layer0", noise, emb)
  linear("map_layer1", emb, emb)
  cout, caux, skips = channels, channels, []
  for level, mult in enumerate(channel_mult):
    res = img_resolution >> level
    if level == 0:
      conv(f"enc.{res}x{res}_conv", cout, model_channels, 3)
      cout = model_channels
    else:
      block(f"enc.{res}x{res}_down", cout, cout, down=True)
      if encoder_type == "residual":
        conv(f"enc.{res}x{res}_aux_residual", caux, cout, 3, resample=True)
        caux = cout
    skips.append(cout)
    for idx in range(num_blocks):
      block(f"enc.{res}x{res}_block{idx}", cout, model_channels * mult,
            attention=res in attn_resolutions)
      cout = model_channels * mult
      skips.append(cout)
  for level, mult in reversed(list(enumerate(channel_mult))):
    res = img_resolution >> level
    if level == len(channel_mult) - 1:
      block(f"dec.{res}x{res}_in0", cout, cout, attention=True)
      block(f"dec.{res}x{res}_in1", cout, cout)
    else:
      block(f"dec.{res}x{res}_up", cout, cout, up=True)
    for idx in range(num_blocks + 1):
      block(f"dec.{res}x{res}_block{idx}", cout + skips.pop(), model_channels * mult,
            attention=idx == num_blocks and res in attn_resolutions)
      cout = model_channels * mult
    if level == 0:
      norm(f"dec.{res}x{res}_aux_norm", cout)
      conv(f"dec.{res}x{res}_aux_conv", cout, channels, 3)
  return shapes


def reference_output(sd: Reading, x: np.ndarray, noise_labels: np.ndarray,
                     class_labels: np.ndarray | None, *, channel_mult: tuple[int, ...],
                     num_blocks: int, attn_resolutions: tuple[int, ...],
                     embedding_type: str, encoder_type: str, **_) -> np.ndarray:
  """SongUNet.forward(x, noise_labels, class_labels) (no augment labels, eval mode)
  on the state dict's tensors: NHWC numpy in and out."""
  skip_scale = math.sqrt(0.5)

  def group_norm(h, name):
    channels = h.shape[1]
    return F.group_norm(h, min(32, channels // 4), sd[f"model.{name}.weight"],
                        sd[f"model.{name}.bias"], eps=1e-6)

  def linear(h, name):
    bias = sd[f"model.{name}.bias"] if f"model.{name}.bias" in sd else None
    return F.linear(h, sd[f"model.{name}.weight"], bias)

  def conv(h, name, up=False, down=False, fused=False):
    """EDM's Conv2d: FIR up/down-sampling with the stored filter, then the conv (or
    the conv, then the FIR downsampling, when fused)."""
    weight = sd[f"model.{name}.weight"]
    pad = weight.shape[-1] // 2
    if up or down:
      f = sd[f"model.{name}.resample_filter"]
      f_pad = (f.shape[-1] - 1) // 2
    if fused:
      h = F.conv2d(h, weight, padding=pad + f_pad)
      h = F.conv2d(h, f.tile([h.shape[1], 1, 1, 1]), groups=h.shape[1], stride=2)
    else:
      if up:
        h = F.conv_transpose2d(h, (4 * f).tile([h.shape[1], 1, 1, 1]),
                               groups=h.shape[1], stride=2, padding=f_pad)
      if down:
        h = F.conv2d(h, f.tile([h.shape[1], 1, 1, 1]), groups=h.shape[1], stride=2,
                     padding=f_pad)
      h = F.conv2d(h, weight, padding=pad)
    return h + sd[f"model.{name}.bias"].reshape(1, -1, 1, 1)

  def block(h, name, emb, up=False, down=False, attention=False):
    out = conv(F.silu(group_norm(h, f"{name}.norm0")), f"{name}.conv0", up, down)
    out = out + linear(emb, f"{name}.affine")[:, :, None, None]
    out = conv(F.silu(group_norm(out, f"{name}.norm1")), f"{name}.conv1")
    if f"model.{name}.skip.weight" in sd:
      h = conv(h, f"{name}.skip", up, down)
    h = (out + h) * skip_scale
    if attention:
      b, c = h.shape[:2]
      qkv = conv(group_norm(h, f"{name}.norm2"), f"{name}.qkv")
      q, k, v = qkv.reshape(b, c, 3, -1).unbind(2)     # one head, channels interleaved
      weights = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(c)).softmax(dim=2)
      a = torch.einsum("nqk,nck->ncq", weights, v).reshape(h.shape)
      h = (conv(a, f"{name}.proj") + h) * skip_scale
    return h

  with torch.no_grad():
    h = torch.from_numpy(x).permute(0, 3, 1, 2)
    labels = torch.from_numpy(noise_labels)
    if embedding_type == "positional":
      half = sd["model.map_layer0.weight"].shape[1] // 2
      freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
    else:
      freqs = 2 * np.pi * sd["model.map_noise.freqs"]
    angles = labels.ger(freqs)
    emb = torch.cat([angles.cos(), angles.sin()], dim=1)
    emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)   # sin first
    if class_labels is not None:
      one_hot = torch.from_numpy(class_labels)
      emb = emb + linear(one_hot * np.sqrt(one_hot.shape[1]), "map_label")
    emb = F.silu(linear(F.silu(linear(emb, "map_layer0")), "map_layer1"))

    resolution = h.shape[-1]
    skips, aux = [], h
    for level, mult in enumerate(channel_mult):
      res = resolution >> level
      if level == 0:
        h = conv(h, f"enc.{res}x{res}_conv")
      else:
        h = block(h, f"enc.{res}x{res}_down", emb, down=True)
        if encoder_type == "residual":
          h = aux = (h + conv(aux, f"enc.{res}x{res}_aux_residual", down=True,
                              fused=True)) / np.sqrt(2)
      skips.append(h)
      for idx in range(num_blocks):
        h = block(h, f"enc.{res}x{res}_block{idx}", emb,
                  attention=res in attn_resolutions)
        skips.append(h)
    for level in reversed(range(len(channel_mult))):
      res = resolution >> level
      if level == len(channel_mult) - 1:
        h = block(h, f"dec.{res}x{res}_in0", emb, attention=True)
        h = block(h, f"dec.{res}x{res}_in1", emb)
      else:
        h = block(h, f"dec.{res}x{res}_up", emb, up=True)
      for idx in range(num_blocks + 1):
        h = block(torch.cat([h, skips.pop()], dim=1), f"dec.{res}x{res}_block{idx}",
                  emb, attention=idx == num_blocks and res in attn_resolutions)
      if level == 0:
        h = conv(F.silu(group_norm(h, f"dec.{res}x{res}_aux_norm")),
                 f"dec.{res}x{res}_aux_conv")
    return h.permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------ helpers
def layout(variant: str, sizes: dict = SMALL) -> dict:
  _, arch, label_dim = VARIANTS[variant]
  return dict(sizes, label_dim=label_dim, **ARCHS[arch])


def project_config(variant: str = "vp", small: bool = True):
  config = edm_cifar.get_config(VARIANTS[variant][0])
  if small:
    m = config.model
    m.ch, m.ch_mult = SMALL["model_channels"], SMALL["channel_mult"]
    m.num_res_blocks = SMALL["num_blocks"]
    m.attn_resolutions = SMALL["attn_resolutions"]
  return config


def family_and_params(config):
  return family_and_abstract_params(config, IMAGE_SHAPE)


def state_dict(shapes, resample_filter, seed=0) -> dict[str, np.ndarray]:
  """Normal(0, 0.05) weights, GroupNorm weights around 1, Fourier frequencies
  N(0, 16^2) as EDM draws them, and the exact resampling filters."""
  tensors = manifests.random_tensors(shapes, seed)
  rng = np.random.default_rng(seed + 1)
  for name, value in tensors.items():
    if name.endswith(".resample_filter"):
      tensors[name] = edm.resample_filter(resample_filter)
    elif name == "model.map_noise.freqs":
      tensors[name] = (16 * rng.standard_normal(value.shape)).astype(np.float32)
    elif name.rsplit(".", 2)[-2].startswith("norm") or name.endswith("aux_norm.weight"):
      if name.endswith(".weight"):
        tensors[name] = value + 1.0
  return tensors


def save(tensors, path) -> str:
  torch.save({name: torch.from_numpy(np.ascontiguousarray(value))
              for name, value in tensors.items()}, path)
  return str(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """variant -> (tensors, the .pt file)."""
  folder = tmp_path_factory.mktemp("edm")
  out = {}
  for i, variant in enumerate(VARIANTS):
    spec = layout(variant)
    tensors = state_dict(song_unet_shapes(**spec), spec["resample_filter"], seed=i)
    out[variant] = tensors, save(tensors, folder / f"{variant}.pt")
  return out


# -------------------------------------------------------------------------- tests
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.integration
def test_output_equals_the_reference_forward_pass(sources, variant):
  tensors, path = sources[variant]
  config = project_config(variant)
  family, abstract = family_and_params(config)
  converted = edm.convert(path, config, IMAGE_SHAPE, abstract)
  assert converted.num_tensors == len(tensors)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, *IMAGE_SHAPE)).astype(np.float32)
  noise_labels = np.log(np.array([0.01, 40.0], np.float32)) / 4   # c_noise
  y = np.array([3, 7]) if config.model.conditional else None
  sd = Reading({name: torch.from_numpy(value) for name, value in tensors.items()})
  theirs = reference_output(
      sd, x, noise_labels, None if y is None else np.eye(10, dtype=np.float32)[y],
      **layout(variant))
  # EDM skips map_augment without augment labels; the project feeds zeros to it.
  assert set(tensors) - sd.read == {"model.map_augment.weight"}
  np.testing.assert_array_equal(converted.params["map_augment"]["kernel"],
                                tensors["model.map_augment.weight"].T)
  assert np.abs(theirs).max() > 0.1
  ours = np.asarray(family.network.apply({"params": converted.params}, x, noise_labels,
                                         y, train=False))
  difference = float(np.abs(ours - theirs).max())
  assert difference < TOLERANCE, f"max |project - reference| = {difference:.3g}"
  print(f"{variant}: max |project - reference| = {difference:.3g}")


def test_qkv_order_matters(sources):
  """Reading the interleaved qkv as [q | k | v] blocks gives another network: the
  reference comparison above would catch a converter that did."""
  tensors, path = sources["vp"]
  config = project_config("vp")
  family, abstract = family_and_params(config)
  converted = edm.convert(path, config, IMAGE_SHAPE, abstract)
  flat = dict(jax.tree_util.tree_flatten_with_path(converted.params)[0])
  key = next(k for k in flat if "qkv" in jax.tree_util.keystr(k) and
             "kernel" in jax.tree_util.keystr(k))
  kernel = np.asarray(flat[key])
  name = "model." + jax.tree_util.keystr(key).split("'")[1].replace("_", ".", 1) + \
      ".qkv.weight"
  weight = tensors[name]
  c = weight.shape[1]
  np.testing.assert_array_equal(kernel[0, 0, :, :c], weight[0::3, :, 0, 0].T)   # q
  np.testing.assert_array_equal(kernel[0, 0, :, c:2 * c], weight[1::3, :, 0, 0].T)  # k
  assert not np.array_equal(kernel[0, 0], weight[:, :, 0, 0].T)


@pytest.mark.parametrize("arch", ["vp", "ve"])
def test_manifest_is_song_unet_at_the_published_settings(arch):
  shapes = manifests.read(f"edm_cifar10_uncond_{arch}")
  assert list(shapes.items()) == list(
      song_unet_shapes(**dict(PUBLISHED, **ARCHS[arch])).items())
  config = project_config(arch, small=False)
  _, abstract = family_and_params(config)
  count = sum(math.prod(s) for n, s in shapes.items()
              if not n.endswith(".resample_filter"))
  # models/ncsnpp.py's PARAM_COUNTS_CIFAR10 (its NCSN++ count has the 128 Fourier
  # frequencies as a parameter, EDM as a buffer: here both are counted).
  assert count == {"vp": 55_733_891, "ve": 56_397_955}[arch]
  assert count == sum(x.size for x in jax.tree.leaves(abstract))


@pytest.mark.parametrize("arch", ["vp", "ve"])
def test_full_manifest_converts_with_no_tensor_left_over(arch):
  """configs/edm_cifar.py holds every tensor of the published layout (shapes only:
  zero-strided arrays, no forward pass)."""
  shapes = manifests.read(f"edm_cifar10_uncond_{arch}")
  config = project_config(arch, small=False)
  _, abstract = family_and_params(config)
  name = f"edm-cifar10-32x32-uncond-{arch}.pt"
  edm.check_config(config, abstract, name)
  tensors = {n: (edm.resample_filter(ARCHS[arch]["resample_filter"])
                 if n.endswith(".resample_filter")
                 else np.broadcast_to(np.float32(0.0), s)) for n, s in shapes.items()}
  params = edm.convert_tensors(tensors, config.model, IMAGE_SHAPE, abstract, name)
  assert jax.tree.structure(params) == jax.tree.structure(abstract)
  for ours, want in zip(jax.tree.leaves(params), jax.tree.leaves(abstract)):
    assert ours.shape == want.shape


@pytest.mark.integration
def test_command_line_writes_the_workdir(sources, tmp_path):
  tensors, path = sources["ve"]
  workdir = str(tmp_path / "workdir")
  flag_values = cli_flags("edm", path, "edm_cifar.py:ncsnpp", workdir,
                          "--config.model.ch=16", "--config.model.ch_mult=(1, 2, 2)",
                          "--config.model.num_res_blocks=1",
                          "--config.model.attn_resolutions=(16,)")
  with tfds.testing.mock_data(num_examples=8):
    record = cli.run(flag_values)["converted_from"]
    assert record["format"] == "edm" and record["num_tensors"] == len(tensors)
    restored = restore(flag_values.config, workdir)
  _, abstract = family_and_params(flag_values.config)
  converted = edm.convert(path, flag_values.config, IMAGE_SHAPE, abstract)
  assert_same_params(restored.params, converted.params)
  assert_same_params(restored.ema_params, converted.params)


def _malformed(tmp_path, tensors, case) -> str:
  path = tmp_path / "edm.pt"
  tensors = dict(tensors)
  if case == "pkl":
    path = tmp_path / "edm-cifar10-32x32-uncond-vp.pkl"
    path.write_bytes(b"not read")
    return str(path)
  if case == "truncated":
    return write_first_half(save(tensors, path))
  if case == "code":
    return save_code_pickle(path, "ema", tmp_path)
  if case == "missing":
    del tensors["model.dec.32x32_aux_conv.bias"]
  elif case == "shape":
    tensors["model.map_layer0.weight"] = tensors["model.map_layer0.weight"][:, :-1]
  elif case == "filter":
    name = "model.enc.16x16_down.conv0.resample_filter"
    tensors[name] = edm.resample_filter((1, 3, 3, 1))
  elif case == "fourier":
    tensors["model.map_noise.freqs"] = np.zeros((8,), np.float32)
  elif case == "cond":
    tensors["model.map_label.weight"] = np.zeros((16, 10), np.float32)
  return save(tensors, path)


@pytest.mark.parametrize("case,match", [
    ("pkl", r"is a pickle of EDM's network classes.*python -c \"import pickle, torch; "
            r"net = pickle.load\(open\('.*edm-cifar10-32x32-uncond-vp.pkl', 'rb'\)\)"
            r"\['ema'\]; torch.save\(net.state_dict\(\), "
            r"'.*edm-cifar10-32x32-uncond-vp.pt'\)\""),
    ("code", r"(?i)holds more than tensors and is refused .*unsupported global.*"
             r"If it is EDM's network pickle: .*python -c"),
    ("truncated", r"is not a readable PyTorch checkpoint"),
    ("missing", r"tensor 'model.dec.32x32_aux_conv.bias' \(the project's "
                r"dec_32x32_aux_conv/bias\) is missing"),
    ("shape", r"tensor 'model.map_layer0.weight' has shape \(64, 15\), but the "
              r"project's map_layer0/kernel needs \(64, 16\)"),
    ("filter", r"model.enc.16x16_down.conv0.resample_filter is not "
               r"config.model.fir_kernel=\(1, 1\)'s filter"),
    ("fourier", r"has Fourier noise features .* config.model.embedding_type="
                r"'positional'"),
    ("cond", r"tensor 'model.map_label.weight' has no place in the project's network"),
])
def test_malformed_files_fail_before_writing(sources, tmp_path, case, match):
  tensors, _ = sources["vp"]
  source = _malformed(tmp_path, tensors, case)
  assert_fails_before_writing(tmp_path, project_config("vp"), source, "edm", match)


@pytest.mark.parametrize("field,value,match", [
    ("model.name", "ncsnpp", "config.model.name='ncsnpp'"),
    ("sde.type", "vesde", "config.sde.type='vesde'"),
    ("model.num_groups", 8, r"groups with config.model.num_groups=8, but EDM's has "
                            r"min\(32, C // 4\)"),
])
def test_configs_that_cannot_hold_the_file_fail(sources, field, value, match):
  _, path = sources["vp"]
  config = project_config("vp")
  section, name = field.split(".")
  config[section][name] = value
  _, abstract = family_and_params(config)
  with pytest.raises(ValueError, match=match):
    edm.convert(path, config, IMAGE_SHAPE, abstract)
