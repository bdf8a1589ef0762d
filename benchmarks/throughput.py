"""Throughput of a config's train step and sampler on this machine's devices.

Prints train images/s, sampling images/s (and network evaluations/s), the train
step's achieved FLOP/s (XLA's cost analysis / measured time) and that as a fraction
of the FLOP/s a large matmul achieves on the same devices.

  python benchmarks/throughput.py --config=configs/ddpm_cifar.py
  python benchmarks/throughput.py --config=configs/ddpm_digits.py --steps=20
  python benchmarks/throughput.py --config=configs/ddpm_cifar.py \\
      --config.training.batch_size=256 --config.model.dtype=bfloat16
  python benchmarks/throughput.py --config=configs/ddpm_cifar.py --steps=0 \\
      --memory_batches=8,32 --memory_budget_gib=16    # memory per training image

Runs on random uint8 batches, so it needs no dataset.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from datasets import shapes as shapes_data  # noqa: E402
from train import families, sharding  # noqa: E402
from train.state import jit_run_once, num_params  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "ddpm_cifar.py")
config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file.", lock_config=True)
flags.DEFINE_integer("steps", 50, "Timed train steps (after one compile step); 0: "
                     "only the memory report.")
flags.DEFINE_integer("sample_batches", 1, "Timed sampling calls (0: skip sampling).")
flags.DEFINE_integer("matmul_size", 8192, "Side of the square reference matmul (0: "
                     "no matmul, no FLOP/s ratio).")
flags.DEFINE_list("memory_batches", [], "Two or more global batch sizes: compile the "
                  "train step at each and report memory per image (the slope) and the "
                  "fixed part (params, optimizer state, EMA).")
flags.DEFINE_float("memory_budget_gib", 16.0, "Budget for the largest-batch estimate.")
flags.DEFINE_string("json_out", None, "Also write the figures to this JSON file.")
FLAGS = flags.FLAGS
# Native image shapes, so that the benchmark needs no prepared dataset.
NATIVE_SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1),
                 "cifar10": (32, 32, 3), "svhn_cropped": (32, 32, 3),
                 "imagenet_resized/32": (32, 32, 3), "imagenet_resized/64": (64, 64, 3),
                 "shapes": (32, 32, 3), "shapes/16": (16, 16, 3), "shapes/64": (64, 64, 3)}


def _time(fn, repeats: int) -> float:
  """Seconds per call after a warm-up call; blocks on the outputs."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def matmul_flops_per_sec(n: int) -> float:
  """Achieved FLOP/s of an n x n matmul in the dtype the platform is fastest in."""
  dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  mesh = sharding.make_mesh()
  a = jax.device_put(jnp.ones((n * jax.device_count(), n), dtype),
                     sharding.batch_sharding(mesh))
  b = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  seconds = _time(lambda: f(a, b), 5)
  return 2.0 * n * n * n * jax.device_count() / seconds


def train_step_flops(lowered) -> float:
  """FLOPs of one step from the HLO before backend optimisation.

  The compiled module's own cost analysis misses convolutions that GPU backends turn
  into library calls (cuDNN), so the count is taken from the lowered module, where
  every convolution and dot is still an HLO op; the figure is the same on any device.
  """
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def train_step_memory(family, config, image_shape, batch_size: int) -> dict[str, int]:
  """Bytes XLA assigns to one compiled, donated train step at `batch_size`.

  From the compiled module's buffer assignment (no step is run): arguments (state and
  batch), outputs, temporaries, and the peak: arguments + outputs + temporaries - the
  donated aliases, or the backend's own peak figure when that is larger (the CPU
  backend's figure leaves the temporaries out).
  """
  mesh = sharding.make_mesh()
  rep, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  labels = random_labels(config, 1, np.random.default_rng(0))
  example = dict(image=np.zeros((1, *image_shape), np.uint8), **labels)
  state = jax.eval_shape(family.init, jax.random.PRNGKey(0), example)
  batch = dict(image=jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.uint8),
               **{k: jax.ShapeDtypeStruct((batch_size,), jnp.int32) for k in labels})
  step = jax.jit(family.train_step, in_shardings=(rep, batch_sh),
                 out_shardings=(rep, rep), donate_argnums=0)
  stats = step.lower(state, batch).compile().memory_analysis()
  out = dict(argument=stats.argument_size_in_bytes, output=stats.output_size_in_bytes,
             alias=stats.alias_size_in_bytes, temp=stats.temp_size_in_bytes)
  peak = getattr(stats, "peak_memory_in_bytes", 0)
  out["peak"] = max(peak, out["argument"] + out["output"] + out["temp"] - out["alias"])
  return out


def memory_report(family, config, image_shape, batch_sizes,
                  budget_bytes: float) -> dict[str, Any]:
  """Prints peak memory per batch size, per image (a least-squares slope), the fixed
  part, and the largest global batch (a multiple of the device count) in the budget;
  returns them."""
  sizes = sorted({int(b) for b in batch_sizes})
  if len(sizes) < 2:
    raise ValueError(f"--memory_batches needs two or more sizes, got {batch_sizes}.")
  peaks = []
  for b in sizes:
    sharding.check_batch_size(b)
    m = train_step_memory(family, config, image_shape, b)
    peaks.append(m["peak"])
    print(f"memory at batch {b}: peak {m['peak'] / 2**20:.1f} MiB (arguments "
          f"{m['argument'] / 2**20:.1f}, temporaries {m['temp'] / 2**20:.1f}, outputs "
          f"{m['output'] / 2**20:.1f}, donated {m['alias'] / 2**20:.1f} MiB)")
  per_image, fixed = np.polyfit(np.asarray(sizes, float), np.asarray(peaks, float), 1)
  devices = jax.device_count()
  largest = int((budget_bytes - fixed) // per_image) // devices * devices
  print(f"memory: {per_image / 2**20:.2f} MiB per training image + {fixed / 2**20:.1f} "
        f"MiB fixed; largest global batch in {budget_bytes / 2**30:.0f} GiB: "
        f"{max(largest, 0)}")
  return dict(batch_sizes=sizes, peak_bytes=[int(p) for p in peaks],
              mib_per_image=per_image / 2**20, fixed_mib=fixed / 2**20,
              budget_gib=budget_bytes / 2**30, largest_batch=max(largest, 0))


def image_shape_of(config) -> tuple[int, int, int]:
  """The config's image shape without preparing its dataset."""
  h, w, channels = NATIVE_SHAPES.get(config.data.dataset.split(":")[0], (32, 32, 3))
  if config.data.image_size:
    h = w = config.data.image_size
  return h, w, channels


def random_labels(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random int32 labels, and the shapes caption factors when the model reads captions."""
  if not config.get("text", {}).get("enabled", False):
    return dict(label=rng.integers(0, 10, (batch_size,), dtype=np.int32))
  sizes = dict(label=len(shapes_data.SHAPES), colour=len(shapes_data.COLOURS),
               position=len(shapes_data.POSITIONS))
  return {k: rng.integers(0, n, (batch_size,), dtype=np.int32) for k, n in sizes.items()}


@dataclasses.dataclass
class TrainStep:
  """A family's donated, sharded train step, compiled for one random uint8 batch."""
  family: Any
  image_shape: tuple[int, int, int]
  state: Any
  batch: dict[str, jax.Array]
  images: np.ndarray             # the batch's images, on the host
  compiled: Any                  # compiled(state, batch) -> (state, metrics)
  lowered: Any
  compile_seconds: float


def build_train_step(config, batch_size: int | None = None) -> TrainStep:
  """Family, initial state, a random batch and the compiled train step of `config`."""
  image_shape = image_shape_of(config)
  b = batch_size or config.training.batch_size
  sharding.check_batch_size(b)
  family = families.get_family(config, image_shape, 10 if config.model.conditional else 0)
  mesh = sharding.make_mesh()
  rep, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (b, *image_shape), dtype=np.uint8)
  batch = sharding.to_global(dict(image=images, **random_labels(config, b, rng)), batch_sh)
  state = jit_run_once(family.init, out_shardings=rep)(
      jax.random.PRNGKey(0), {k: np.asarray(v[:1]) for k, v in batch.items()})
  step = jax.jit(family.train_step, in_shardings=(rep, batch_sh),
                 out_shardings=(rep, rep), donate_argnums=0)
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  compiled = lowered.compile()
  return TrainStep(family, image_shape, state, batch, images, compiled, lowered,
                   time.perf_counter() - t0)


def main(argv):
  del argv
  figures = run(FLAGS.config)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(figures, f, indent=1)


def run(config) -> dict[str, Any]:
  """Prints the figures the flags ask for and returns them."""
  figures: dict[str, Any] = dict(
      config=config.name, device=jax.devices()[0].device_kind,
      device_count=jax.device_count(), backend=jax.default_backend(),
      jax_version=jax.__version__, dtype=str(config.model.get("dtype", "float32")),
      remat=bool(config.model.get("remat", False)))
  if FLAGS.memory_batches:
    family = families.get_family(config, image_shape_of(config),
                                 10 if config.model.conditional else 0)
    figures["memory"] = memory_report(family, config, image_shape_of(config),
                                      FLAGS.memory_batches,
                                      FLAGS.memory_budget_gib * 2**30)
  if FLAGS.steps <= 0 and not FLAGS.sample_batches:    # memory only
    return figures
  built = build_train_step(config)
  family, state, batch, step = built.family, built.state, built.batch, built.compiled
  b = config.training.batch_size
  h, w, channels = built.image_shape
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} "
        f"({jax.default_backend()}); config {config.name}; global batch {b}; "
        f"image {h}x{w}x{channels}; {num_params(state.params):,} params; train step "
        f"compile {built.compile_seconds:.1f} s")
  figures.update(params=num_params(state.params), train_batch=b,
                 compile_seconds=built.compile_seconds)
  if FLAGS.steps > 0:
    flops = train_step_flops(built.lowered)
    state, metrics = step(state, batch)   # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / FLAGS.steps
    print(f"train: {1 / seconds:.4g} steps/s, {b / seconds:.4g} images/s")
    figures.update(train_images_per_s=b / seconds, train_step_flops=flops)
    if flops and FLAGS.matmul_size > 0:
      achieved = flops / seconds
      peak = matmul_flops_per_sec(FLAGS.matmul_size)
      print(f"train step: {flops / 1e9:.2f} GFLOP (XLA cost analysis), "
            f"{achieved / 1e12:.3f} TFLOP/s achieved; {FLAGS.matmul_size}^2 matmul: "
            f"{peak / 1e12:.3f} TFLOP/s; ratio {achieved / peak:.1%}")
      figures.update(train_flops_per_s=achieved, matmul_flops_per_s=peak,
                     matmul_size=FLAGS.matmul_size, flops_ratio=achieved / peak)

  if FLAGS.sample_batches:
    n = config.sampling.batch_size
    batch_sh = sharding.batch_sharding(sharding.make_mesh())
    sample = jax.jit(family.sample, static_argnums=2, out_shardings=batch_sh)
    params = state.ema_params
    start = time.perf_counter()
    jax.block_until_ready(sample(params, jax.random.PRNGKey(1), n))
    first_call = time.perf_counter() - start
    seconds = _time(lambda: sample(params, jax.random.PRNGKey(1), n),
                    FLAGS.sample_batches)
    settings = family.sampler_settings()
    nfe = settings["nfe"]
    print(f"sampling ({settings['sampler']}, {nfe} NFE, batch {n}): "
          f"{n / seconds:.2f} images/s, {n * nfe / seconds:.0f} image-evaluations/s "
          f"(first call, compile included: {first_call:.1f} s)")
    figures.update(sampler=str(settings["sampler"]), sampler_nfe=int(nfe),
                   sample_batch=n, sample_images_per_s=n / seconds,
                   sample_first_call_seconds=first_call)
  return figures


if __name__ == "__main__":
  app.run(main)
