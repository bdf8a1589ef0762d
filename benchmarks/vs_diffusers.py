"""Side by side: this codebase's DDPM U-Net against the same network in diffusers.

Builds the U-Net of `--config` (default configs/ddpm_cifar.py, Ho et al. 2020's CIFAR-10
network, 35,746,307 parameters) here and as a diffusers `UNet2DModel` with the same
channels, blocks, attention resolutions and parameter count (no weights needed), then
times, alternately in one process (A, B, A, B, ...):

  train step:    L_simple (eps MSE, uniform t, the config's betas), Adam with the
                 config's learning rate, warm-up and gradient clipping, dropout, EMA;
  sampling step: one network evaluation (eps at one t) on a batch;
  DDIM:          `--ddim_steps` (50) deterministic DDIM steps (eta 0, clipped x0) on a
                 batch: the project's compiled sampler vs diffusers.DDIMScheduler,

and prints the median images/s of each side, the ratio project / diffusers and the
project's time to first step (compile). Both sides see the same uint8 batch, the same
precision (fp32, or --dtype=bfloat16: config.model.dtype here, torch.autocast there).

  python benchmarks/vs_diffusers.py                       # CPU: batch 8, a few minutes
  python benchmarks/vs_diffusers.py --batch=128 --rounds=5 --json_out=/tmp/vs.json  # GPU
  python benchmarks/vs_diffusers.py --batch=2 --rounds=2 --ddim_steps=5 \\
      --config.model.ch=32 --config.model.ch_mult='(1,2)'  # seconds-long smoke test

Any --config.* override applies to both networks (`diffusers_unet_kwargs` translates
config.model). Flags --steps, --sample_batches, --matmul_size and --memory_* belong to
benchmarks/throughput.py, whose --config and --json_out flags this script shares; they
are unused here.
"""

import json
import os
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from models import layers  # noqa: E402
from train import families, sharding  # noqa: E402
from train.state import num_params  # noqa: E402

DTYPES = ("float32", "bfloat16")


# ------------------------------------------------------------- the diffusers network
def diffusers_unet_kwargs(model: ml_collections.ConfigDict, image_size: int,
                          channels: int) -> dict[str, Any]:
  """UNet2DModel arguments for the models.unet.UNet that config.model describes.

  The correspondence (models/unet.py vs diffusers.UNet2DModel):
    level i at image_size / 2**i: DownBlock2D, or AttnDownBlock2D when that size is in
      attn_resolutions; the up path mirrors it (num_res_blocks + 1 blocks per level);
    conv downsampling with TF 'SAME' padding (0, 1): downsample_padding=0;
    time embedding of Ho et al. (sines then cosines, max_period**(-i / (half - 1))):
      flip_sin_to_cos=False, freq_shift=1, then Linear(ch, 4ch), Linear(4ch, 4ch);
    one attention head of all channels: attention_head_dim=None; GroupNorm eps 1e-6.
  GroupNorm groups: the project takes num_norm_groups(channels) per layer (32 on every
  layer of the paper's >= 128-channel network); diffusers takes one number, here the
  project's count at the narrowest width, a divisor of every width. The group count
  changes no parameter count.
  Raises ValueError for settings diffusers' UNet2DModel cannot express.
  """
  ch, ch_mult = int(model.ch), tuple(int(m) for m in model.ch_mult)
  if model.get("conditional", False):
    raise ValueError("Only unconditional U-Nets are compared: set "
                     "config.model.conditional=False.")
  if not model.get("resamp_with_conv", True):
    raise ValueError("UNet2DModel's DownBlock2D always downsamples with a conv: set "
                     "config.model.resamp_with_conv=True.")
  if image_size % 2**(len(ch_mult) - 1):
    raise ValueError(f"Image size {image_size} is not divisible by 2**(len(ch_mult) - 1) "
                     f"with ch_mult={ch_mult}.")
  sizes = [image_size // 2**i for i in range(len(ch_mult))]
  attn_sizes = set(int(r) for r in model.attn_resolutions)
  with_attention = [s in attn_sizes for s in sizes]
  num_heads = int(model.get("num_heads", 1))
  attention_head_dim = None          # None: one head of all channels
  if num_heads != 1:
    # UNet2DModel takes one head width for every block: equal widths only.
    widths = {ch * m for m, a in zip(ch_mult, with_attention) if a} | {ch * ch_mult[-1]}
    if len(widths) != 1 or next(iter(widths)) % num_heads:
      raise ValueError(f"config.model.num_heads={num_heads} needs attention at one width "
                       f"only (got widths {sorted(widths)}); diffusers fixes the head "
                       "width, not the head count. Use num_heads=1.")
    attention_head_dim = next(iter(widths)) // num_heads
  return dict(
      sample_size=image_size, in_channels=channels, out_channels=channels,
      block_out_channels=tuple(ch * m for m in ch_mult),
      layers_per_block=int(model.num_res_blocks),
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D"
                             for a in with_attention),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D"
                           for a in reversed(with_attention)),
      attention_head_dim=attention_head_dim, downsample_padding=0,
      flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
      norm_num_groups=layers.num_norm_groups(ch, int(model.num_groups)),
      dropout=float(model.dropout),
      resnet_time_scale_shift=("scale_shift" if model.get("scale_shift_norm", False)
                               else "default"))


def build_diffusers_unet(model: ml_collections.ConfigDict, image_size: int,
                         channels: int):
  """The diffusers UNet2DModel of `diffusers_unet_kwargs`, randomly initialised."""
  from diffusers import UNet2DModel
  return UNet2DModel(**diffusers_unet_kwargs(model, image_size, channels))


def canonical_shapes(shapes) -> list[tuple[int, ...]]:
  """Sorted multiset of parameter shapes, each with its axes sorted, size-1 axes dropped.

  Flax stores conv kernels HWIO and dense kernels (in, out), torch OIHW and (out, in);
  a 1x1 shortcut is a Dense (in, out) here and a Conv2d (out, in, 1, 1) in diffusers.
  Sorting the axes and dropping the 1s makes equal tensors compare equal.
  """
  return sorted(tuple(sorted(int(d) for d in s if d != 1)) for s in shapes)


def project_param_shapes(config: ml_collections.ConfigDict,
                         image_shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
  """Shapes of the family's network parameters, traced without compiling."""
  family = families.get_family(config, image_shape, 0)
  example = dict(image=np.zeros((1, *image_shape), np.uint8),
                 label=np.zeros((1,), np.int32))
  state = jax.eval_shape(family.init, jax.random.PRNGKey(0), example)
  return [tuple(x.shape) for x in jax.tree.leaves(state.params)]


# --------------------------------------------------------- the diffusers train step
def torch_eps_mse(eps_fn: Callable, x0, t, noise, alphas_cumprod):
  """L_simple (Ho et al. eq. 14) in torch: mean ||eps - eps_fn(x_t, t)||^2.

  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4); NCHW tensors, t int64 [B].
  The network output is taken in float32, as the project does under bfloat16.
  """
  abar = alphas_cumprod[t].to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
  x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
  eps = eps_fn(x_t, t).float()
  return ((eps - noise) ** 2).mean()


class DiffusersTrainer:
  """The project's DDPM train step (train/ddpm.py) with a diffusers U-Net.

  Per step: x0 = uint8 / 127.5 - 1; t ~ U{0..T-1}; eps ~ N(0, I); L_simple;
  gradient clipping at config.optim.grad_clip_norm; Adam (beta1, beta2, eps) at the
  config's linearly warmed-up learning rate; EMA of the weights with ema_decay.
  """

  def __init__(self, model, config: ml_collections.ConfigDict, device,
               bf16: bool):
    import torch
    from diffusers import DDIMScheduler
    o, d = config.optim, config.diffusion
    if o.optimizer != "adam" or o.lr_schedule != "constant":
      raise ValueError("The diffusers side implements optim.optimizer='adam' with "
                       "lr_schedule='constant' after the warm-up only.")
    if d.beta_schedule != "linear" or d.get("loss", "simple") != "simple":
      raise ValueError("The diffusers side implements beta_schedule='linear' and "
                       "loss='simple' only (the DDPM CIFAR-10 setting).")
    if d.var_type not in ("fixedlarge", "fixedsmall"):
      raise ValueError("The diffusers side predicts eps only: use a fixed var_type.")
    self.torch, self.device, self.bf16 = torch, device, bf16
    self.model = model.to(device).train()
    # The same schedule from diffusers' own code: the loss and DDIM share it.
    self.scheduler = DDIMScheduler(
        num_train_timesteps=d.num_timesteps, beta_start=d.beta_start,
        beta_end=d.beta_end, beta_schedule="linear", clip_sample=True,
        set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    self.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
    self.num_timesteps = d.num_timesteps
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    self.ema = [p.detach().clone() for p in self.params]
    self.ema_decay, self.clip = float(o.ema_decay), float(o.grad_clip_norm)
    self.optimizer = torch.optim.Adam(self.params, lr=o.learning_rate,
                                      betas=(o.beta1, o.beta2), eps=o.eps)
    warmup = int(o.warmup_steps)
    # optax.linear_schedule(0, lr, warmup): lr * step / warmup, then lr.
    self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        self.optimizer, lambda step: min(1.0, step / warmup) if warmup > 0 else 1.0)

  def autocast(self):
    return self.torch.autocast(device_type=self.device.type, dtype=self.torch.bfloat16,
                               enabled=self.bf16)

  def eps(self, x_t, t):
    return self.model(x_t, t).sample

  def train_step(self, images_uint8_nchw) -> float:
    torch = self.torch
    x0 = images_uint8_nchw.float() / 127.5 - 1.0
    t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=self.device)
    noise = torch.randn_like(x0)
    with self.autocast():
      loss = torch_eps_mse(self.eps, x0, t, noise, self.alphas_cumprod)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if self.clip > 0:
      torch.nn.utils.clip_grad_norm_(self.params, self.clip)
    self.optimizer.step()
    self.lr_schedule.step()
    with torch.no_grad():   # ema <- decay ema + (1 - decay) params
      torch._foreach_lerp_(self.ema, [p.detach() for p in self.params],
                           1.0 - self.ema_decay)
    return loss

  def sampling_step(self, x, t):
    with self.torch.inference_mode(), self.autocast():
      return self.eps(x, t)

  def ddim_sample(self, shape, num_steps: int, generator=None):
    """uint8 NCHW samples: DDIM eta 0 with clipped x0 and eps recomputed from it,
    as the project's sampling.ddpm.ddim_sample(clip_denoised=True)."""
    torch = self.torch
    self.scheduler.set_timesteps(num_steps, device=self.device)
    x = torch.randn(shape, generator=generator, device=self.device)
    with torch.inference_mode():
      for t in self.scheduler.timesteps:
        with self.autocast():
          eps = self.eps(x, t.expand(shape[0])).float()
        x = self.scheduler.step(eps, t, x, eta=0.0,
                                use_clipped_model_output=True).prev_sample
      return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------- timing
def _median_rate(samples: list[float]) -> float:
  return statistics.median(samples) if samples else float("nan")


def _timed(fn: Callable[[], Any], sync: Callable[[Any], Any], calls: int) -> float:
  """Seconds per call of `calls` back-to-back calls, synchronised at the end."""
  start = time.perf_counter()
  out = None
  for _ in range(calls):
    out = fn()
  sync(out)
  return (time.perf_counter() - start) / calls


def _project_config(config: ml_collections.ConfigDict, batch: int, dtype: str,
                    ddim_steps: int) -> ml_collections.ConfigDict:
  """The config with the benchmark's batch, dtype and a DDIM sampler of ddim_steps."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.training.batch_size = batch
  config.model.dtype = dtype
  config.sampling.method = "ddim"
  config.sampling.ddim_steps = ddim_steps
  config.sampling.ddim_eta = 0.0
  config.sampling.ddim_spacing = "uniform"
  config.sampling.num_steps = None
  config.sampling.clip_denoised = True
  return config


def main(argv):
  del argv
  import torch
  from absl import flags
  from benchmarks import throughput
  FLAGS = flags.FLAGS
  torch.set_num_threads(FLAGS.torch_threads or os.cpu_count())
  if FLAGS.dtype not in DTYPES:
    raise ValueError(f"--dtype={FLAGS.dtype!r}; choose {DTYPES}.")
  on_cpu = jax.default_backend() == "cpu"
  base = FLAGS.config
  batch = FLAGS.batch or (8 if on_cpu else base.training.batch_size)
  sample_batch = FLAGS.sample_batch or batch
  steps_per_round = FLAGS.steps_per_round or (2 if on_cpu else 10)
  if FLAGS.rounds < 1 or steps_per_round < 1:
    raise ValueError("--rounds and --steps_per_round must be >= 1.")
  config = _project_config(base, batch, FLAGS.dtype, FLAGS.ddim_steps)
  for name, value in (("batch", batch), ("sample_batch", sample_batch)):
    if value < 1 or value % jax.device_count():
      raise ValueError(f"--{name}={value} must be a positive multiple of the "
                       f"{jax.device_count()} devices.")
  h, w, channels = throughput.image_shape_of(config)
  if h != w:
    raise ValueError(f"Square images only, got {h}x{w}.")
  if on_cpu:
    device = torch.device("cpu")
  elif torch.cuda.is_available():
    device = torch.device("cuda")
    # JAX's default float32 precision on GPUs takes TF32 for matmuls and convs.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  else:
    raise ValueError(f"JAX runs on {jax.default_backend()} but this torch has no CUDA: "
                     "install a CUDA build of torch, or run both on CPU with "
                     "JAX_PLATFORMS=cpu.")
  sync_torch = (lambda _: torch.cuda.synchronize()) if device.type == "cuda" else (
      lambda _: None)

  torch.manual_seed(0)
  unet = build_diffusers_unet(config.model, h, channels)
  trainer = DiffusersTrainer(unet, config, device, FLAGS.dtype == "bfloat16")

  # ---- the project: family, state, the compiled donated train step (throughput.py).
  built = throughput.build_train_step(config, batch)
  family, state, jax_batch, images = built.family, built.state, built.batch, built.images
  compiled, compile_seconds = built.compiled, built.compile_seconds
  flops = throughput.train_step_flops(built.lowered)
  batch_sh = sharding.batch_sharding(sharding.make_mesh())
  t0 = time.perf_counter()
  state, metrics = compiled(state, jax_batch)
  jax.block_until_ready(metrics)
  first_step_seconds = time.perf_counter() - t0

  # ---- diffusers: the same step on the same data (built above, before compiling).
  torch_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
  t0 = time.perf_counter()
  sync_torch(trainer.train_step(torch_images))
  torch_first_step_seconds = time.perf_counter() - t0

  project_shapes = [tuple(x.shape) for x in jax.tree.leaves(state.params)]
  torch_shapes = [tuple(p.shape) for p in unet.parameters()]
  project_count, torch_count = num_params(state.params), sum(p.numel()
                                                            for p in unet.parameters())
  shapes_match = canonical_shapes(project_shapes) == canonical_shapes(torch_shapes)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} "
        f"({jax.default_backend()}) | torch {torch.__version__} on {device}, "
        f"{torch.get_num_threads()} threads; config {config.name}; image "
        f"{h}x{w}x{channels}; {FLAGS.dtype}; train batch {batch}")
  print(f"parameters: project {project_count:,} | diffusers {torch_count:,} | "
        f"tensors {len(project_shapes)} vs {len(torch_shapes)}, shapes "
        f"{'match' if shapes_match else 'DIFFER'}")
  print(f"project time to first step: compile {compile_seconds:.1f} s + first step "
        f"{first_step_seconds:.2f} s; diffusers first step {torch_first_step_seconds:.2f} s")

  # ---- train: alternate A, B, A, B ...
  results: dict[str, Any] = {}
  train_rates = {"project": [], "diffusers": []}
  for _ in range(FLAGS.rounds):
    def project_step():
      nonlocal state
      state, m = compiled(state, jax_batch)
      return m
    seconds = _timed(project_step, jax.block_until_ready, steps_per_round)
    train_rates["project"].append(batch / seconds)
    seconds = _timed(lambda: trainer.train_step(torch_images), sync_torch,
                     steps_per_round)
    train_rates["diffusers"].append(batch / seconds)
  results["train"] = _report("train step", train_rates, batch, flops)

  if not FLAGS.skip_sampling:
    params = state.ema_params
    rng = np.random.default_rng(1)
    x = jax.device_put(rng.standard_normal((sample_batch, h, w, channels),
                                           dtype=np.float32), batch_sh)
    t = jax.device_put(np.full((sample_batch,), config.diffusion.num_timesteps // 2,
                               np.int32), batch_sh)
    eps_step = jax.jit(lambda p, x, t: family.eps_fn(p)(x, t))
    jax.block_until_ready(eps_step(params, x, t))
    torch_x = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous().to(device)
    torch_t = torch.from_numpy(np.array(t)).long().to(device)
    trainer.model.eval()   # dropout off, as train=False in the project's eps_fn
    sync_torch(trainer.sampling_step(torch_x, torch_t))
    rates = {"project": [], "diffusers": []}
    for _ in range(FLAGS.rounds):
      rates["project"].append(sample_batch / _timed(
          lambda: eps_step(params, x, t), jax.block_until_ready, steps_per_round))
      rates["diffusers"].append(sample_batch / _timed(
          lambda: trainer.sampling_step(torch_x, torch_t), sync_torch, steps_per_round))
    results["sampling_step"] = _report("sampling step (1 network evaluation)", rates,
                                       sample_batch)

    nfe = family.sampler_settings()["nfe"]
    sample = jax.jit(family.sample, static_argnums=2, out_shardings=batch_sh)
    t0 = time.perf_counter()
    jax.block_until_ready(sample(params, jax.random.PRNGKey(1), sample_batch))
    ddim_first_seconds = time.perf_counter() - t0
    generator = torch.Generator(device=device).manual_seed(1)
    torch_shape = (sample_batch, channels, h, w)
    sync_torch(trainer.ddim_sample(torch_shape, FLAGS.ddim_steps, generator))
    rates = {"project": [], "diffusers": []}
    for r in range(FLAGS.ddim_rounds or FLAGS.rounds):
      key = jax.random.PRNGKey(2 + r)
      rates["project"].append(sample_batch / _timed(
          lambda: sample(params, key, sample_batch), jax.block_until_ready, 1))
      rates["diffusers"].append(sample_batch / _timed(
          lambda: trainer.ddim_sample(torch_shape, FLAGS.ddim_steps, generator),
          sync_torch, 1))
    results["ddim"] = _report(f"DDIM {FLAGS.ddim_steps} steps ({nfe} NFE)", rates,
                              sample_batch)
    results["ddim"]["project_compile_and_first_call_seconds"] = ddim_first_seconds
    print(f"project DDIM sampler: compile + first call {ddim_first_seconds:.1f} s")

  if FLAGS.json_out:
    results.update(
        device=jax.devices()[0].device_kind, backend=jax.default_backend(),
        torch_device=str(device), torch_threads=torch.get_num_threads(),
        config=config.name, dtype=FLAGS.dtype, batch=batch, sample_batch=sample_batch,
        rounds=FLAGS.rounds, steps_per_round=steps_per_round,
        ddim_steps=FLAGS.ddim_steps, image_shape=[h, w, channels],
        params=dict(project=project_count, diffusers=torch_count,
                    shapes_match=shapes_match),
        project_compile_seconds=compile_seconds,
        project_first_step_seconds=first_step_seconds,
        diffusers_first_step_seconds=torch_first_step_seconds)
    with open(FLAGS.json_out, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {FLAGS.json_out}")


def _report(what: str, rates: dict[str, list[float]], batch: int,
            flops: float = 0.0) -> dict[str, Any]:
  """Prints one line per measurement; returns its JSON record."""
  project, diffusers = _median_rate(rates["project"]), _median_rate(rates["diffusers"])
  line = (f"{what}, batch {batch}: project {project:.2f} images/s | diffusers "
          f"{diffusers:.2f} images/s | ratio project/diffusers {project / diffusers:.2f}x "
          f"(median of {len(rates['project'])} alternating rounds)")
  if flops:
    line += (f"; {flops / 1e9:.1f} GFLOP/step (XLA cost analysis): project "
             f"{flops * project / batch / 1e9:.1f}, diffusers "
             f"{flops * diffusers / batch / 1e9:.1f} GFLOP/s")
  print(line)
  return dict(project_images_per_sec=project, diffusers_images_per_sec=diffusers,
              ratio=project / diffusers, project_rounds=rates["project"],
              diffusers_rounds=rates["diffusers"], batch=batch)


def _define_flags() -> None:
  """Flags of the command line only, so that importing this module defines none."""
  from absl import flags
  from benchmarks import throughput  # noqa: F401  (defines --config and --json_out)
  flags.DEFINE_integer("batch", 0, "Train batch (0: 8 on CPU, the config's on GPU).")
  flags.DEFINE_integer("sample_batch", 0, "Sampling batch (0: --batch).")
  flags.DEFINE_integer("rounds", 3, "Alternating rounds (A, B) per measurement.")
  flags.DEFINE_integer("steps_per_round", 0, "Calls timed per side and round "
                       "(0: 2 on CPU, 10 on GPU); DDIM runs one sampling per round.")
  flags.DEFINE_integer("ddim_rounds", 0, "Rounds for DDIM (0: --rounds).")
  flags.DEFINE_integer("ddim_steps", 50, "DDIM steps (network evaluations).")
  flags.DEFINE_bool("skip_sampling", False, "Time the train step only.")
  flags.DEFINE_string("dtype", "float32", "float32 | bfloat16, both sides.")
  flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: os.cpu_count()). "
                       "On a CPU shared with other jobs, torch's OpenMP threads can "
                       "stall each other: compare with 1.")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
