"""benchmarks/vs_diffusers.py and benchmarks/scaling.py: same network, same loss, same
step on both sides; the scaling table."""
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from benchmarks import vs_diffusers as vs  # noqa: E402
from configs import ddpm_cifar  # noqa: E402
from sampling import ddpm as ddpm_sampling  # noqa: E402
from train import ddpm  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_config():
  config = ddpm_cifar.get_config()
  config.model.ch = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (16,)
  return config


def _torch_shapes(model):
  return [tuple(p.shape) for p in model.parameters()]


@pytest.mark.parametrize("image_size,attn", [(32, (16,)), (16, (16,)), (16, (8, 16))])
def test_small_networks_have_equal_parameters(image_size, attn):
  config = _small_config()
  config.model.attn_resolutions = attn
  ours = vs.project_param_shapes(config, (image_size, image_size, 3))
  theirs = _torch_shapes(vs.build_diffusers_unet(config.model, image_size, 3))
  assert sum(int(np.prod(s)) for s in ours) == sum(int(np.prod(s)) for s in theirs)
  assert vs.canonical_shapes(ours) == vs.canonical_shapes(theirs)


def test_attention_placement_changes_the_count():
  """The comparison can fail: attention at 16 here, at 32 there, differ."""
  config = _small_config()
  ours = vs.project_param_shapes(config, (32, 32, 3))
  config.model.attn_resolutions = (32,)
  theirs = _torch_shapes(vs.build_diffusers_unet(config.model, 32, 3))
  assert vs.canonical_shapes(ours) != vs.canonical_shapes(theirs)


def test_paper_network_matches_published_diffusers_layout():
  """The DDPM CIFAR-10 network: 35,746,307 parameters on both sides, and the block
  layout of the published google/ddpm-cifar10-32 UNet2DModel config."""
  config = ddpm_cifar.get_config()
  kwargs = vs.diffusers_unet_kwargs(config.model, 32, 3)
  assert kwargs["block_out_channels"] == (128, 256, 256, 256)
  assert kwargs["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                        "DownBlock2D")
  assert kwargs["up_block_types"] == ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D",
                                      "UpBlock2D")
  assert (kwargs["layers_per_block"], kwargs["downsample_padding"], kwargs["freq_shift"],
          kwargs["flip_sin_to_cos"], kwargs["norm_num_groups"]) == (2, 0, 1, False, 32)
  ours = vs.project_param_shapes(config, (32, 32, 3))
  theirs = _torch_shapes(vs.build_diffusers_unet(config.model, 32, 3))
  assert sum(int(np.prod(s)) for s in ours) == 35_746_307
  assert sum(int(np.prod(s)) for s in theirs) == 35_746_307
  assert vs.canonical_shapes(ours) == vs.canonical_shapes(theirs)


@pytest.mark.parametrize("field,value,match", [
    ("conditional", True, "unconditional"),
    ("resamp_with_conv", False, "resamp_with_conv"),
    ("num_heads", 4, "num_heads"),
])
def test_settings_diffusers_cannot_express_raise(field, value, match):
  config = ddpm_cifar.get_config()
  config.model.attn_resolutions = (16, 8)   # attention at two widths: 256 and 512
  config.model.ch_mult = (1, 2, 4)
  config.model[field] = value
  with pytest.raises(ValueError, match=match):
    vs.diffusers_unet_kwargs(config.model, 32, 3)


class _AffineEps(nn.Module):
  """eps = 0.5 x_t + 1e-3 t: a parameter-free stand-in for the U-Net."""

  @nn.compact
  def __call__(self, x, t, y=None, *, train):
    return 0.5 * x + 1e-3 * t.astype(jnp.float32)[:, None, None, None]


def test_both_losses_equal_a_numpy_l_simple():
  rng = np.random.default_rng(0)
  b, h, c = 4, 8, 3
  x0 = rng.uniform(-1, 1, (b, h, h, c)).astype(np.float32)
  noise = rng.standard_normal((b, h, h, c)).astype(np.float32)
  t = np.array([0, 17, 500, 999], np.int32)
  # numpy, float64: linear betas 1e-4..0.02, T = 1000 (Ho et al. sec. 4), eq. 4, eq. 14.
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t][:, None, None, None]
  x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
  expected = np.mean((0.5 * x_t + 1e-3 * t[:, None, None, None] - noise) ** 2)

  config = ddpm_cifar.get_config()
  family = ddpm.DDPM(config, (h, h, c), 0)
  family.model = _AffineEps()
  ours = family.loss_terms({}, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
  np.testing.assert_allclose(float(jnp.mean(ours["loss"])), expected, rtol=1e-5)

  trainer = vs.DiffusersTrainer(torch.nn.Linear(1, 1), config, torch.device("cpu"),
                                bf16=False)
  nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
  theirs = vs.torch_eps_mse(lambda x, tt: 0.5 * x + 1e-3 * tt[:, None, None, None],
                            nchw(x0), torch.from_numpy(t).long(), nchw(noise),
                            trainer.alphas_cumprod)
  np.testing.assert_allclose(float(theirs), expected, rtol=1e-5)


class _ChannelScale(torch.nn.Module):
  """eps = w_c x_t per channel, output wrapped as UNet2DModel's (.sample)."""

  def __init__(self, w):
    super().__init__()
    self.w = torch.nn.Parameter(torch.tensor(w, dtype=torch.float32))

  def forward(self, x, t):
    del t
    return types.SimpleNamespace(sample=self.w[None, :, None, None] * x)


def test_diffusers_train_step_is_clip_adam_ema_by_hand():
  """One step against numpy: grad of L_simple, clip at norm 1, Adam step 1, EMA."""
  config = ddpm_cifar.get_config()
  config.optim.warmup_steps = 0      # lr 2e-4 from the first step
  config.optim.ema_decay = 0.9
  # Adam's first step is lr * g / (|g| + eps): a large eps keeps the scale of g, and
  # so the clipping, visible in the update.
  config.optim.eps = 0.5
  w0 = np.array([3.0, -2.0, 5.0])
  trainer = vs.DiffusersTrainer(_ChannelScale(w0), config, torch.device("cpu"),
                                bf16=False)
  images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(3))
  torch.manual_seed(7)
  trainer.train_step(images)
  torch.manual_seed(7)   # replay the step's draws: t, then eps
  t = torch.randint(0, 1000, (2,)).numpy()
  noise = torch.randn(2, 3, 4, 4).numpy().astype(np.float64)
  x0 = images.numpy() / 127.5 - 1.0
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t][:, None, None, None]
  x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
  residual = w0[None, :, None, None] * x_t - noise
  grad = 2.0 * np.sum(residual * x_t, axis=(0, 2, 3)) / residual.size
  assert np.linalg.norm(grad) > 2.0   # the clip acts
  grad = grad / np.linalg.norm(grad)
  # Adam's first step: m_hat = g, v_hat = g^2.
  w1 = w0 - 2e-4 * grad / (np.abs(grad) + 0.5)
  np.testing.assert_allclose(trainer.model.w.detach().numpy(), w1, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(trainer.ema[0].numpy(), 0.9 * w0 + 0.1 * w1, rtol=1e-5)


def test_diffusers_warmup_matches_the_project_schedule():
  from train import optim as optim_lib
  config = ddpm_cifar.get_config()
  config.optim.warmup_steps = 3
  trainer = vs.DiffusersTrainer(_ChannelScale([1.0, 1.0, 1.0]), config,
                                torch.device("cpu"), bf16=False)
  schedule = optim_lib.learning_rate_schedule(config.optim)
  images = torch.zeros((1, 3, 4, 4), dtype=torch.uint8)
  for step in range(5):
    np.testing.assert_allclose(trainer.optimizer.param_groups[0]["lr"],
                               float(schedule(step)), rtol=1e-6)
    trainer.train_step(images)


def test_ddim_visits_the_project_timesteps_and_schedule():
  config = ddpm_cifar.get_config()
  trainer = vs.DiffusersTrainer(torch.nn.Linear(1, 1), config, torch.device("cpu"),
                                bf16=False)
  trainer.scheduler.set_timesteps(50)
  ours = ddpm_sampling.ddim_timesteps(1000, 50, "uniform")[::-1]
  np.testing.assert_array_equal(trainer.scheduler.timesteps.numpy(), ours)
  family = ddpm.DDPM(config, (32, 32, 3), 0)
  np.testing.assert_allclose(trainer.alphas_cumprod.numpy(),
                             np.asarray(family.diffusion.alphas_cumprod), rtol=1e-5)
  # The last step lands on x_0 (abar_prev = 1), as the project's sampler does.
  assert float(trainer.scheduler.final_alpha_cumprod) == 1.0


def _run_scaling(devices: str, extra: list[str]) -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.join(REPO, "benchmarks", "scaling.py"),
         f"--devices={devices}", *extra]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                       cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.slow
def test_scaling_table_on_one_and_two_devices():
  stdout = _run_scaling("1,2", [
      "--config=configs/ddpm_digits.py", "--per_device_batch=2", "--steps=3",
      "--config.model.ch=8", "--config.model.ch_mult=(1,)",
      "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=()"])
  rows = [line.split() for line in stdout.splitlines()
          if line.strip() and line.split()[0].isdigit()]
  assert [int(r[0]) for r in rows] == [1, 2]
  assert [int(r[1]) for r in rows] == [2, 4]           # global batch = N x 2
  for r in rows:
    images_per_sec, per_device = float(r[2]), float(r[3])
    assert images_per_sec > 0
    np.testing.assert_allclose(per_device, images_per_sec / int(r[0]), rtol=0.02)
  assert rows[0][5] == "+0%"                            # N=1 is the reference


@pytest.mark.integration
def test_scaling_rejects_bad_device_counts():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "scaling.py"),
                        "--devices=1,0"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=REPO)
  assert out.returncode != 0
  assert "--devices" in out.stderr
