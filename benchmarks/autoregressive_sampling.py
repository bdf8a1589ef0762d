"""Naive vs fast (cached-activation) sampling of the PixelCNN and the Gated PixelCNN.

For each image size and network, prints the seconds per batch and images/s of the
family's naive sampler (the network on the whole canvas for every sub-pixel) and of
its fast sampler (sampling/fast_autoregressive.py: one pixel's worth of network per
sub-pixel), and whether the two drew the same images from the same key.

- 'digits': 8x8x1, configs/pixelcnn_digits.py's network (and a Gated PixelCNN of the
  same width and depth), batch --digits_batch.
- 'cifar': 32x32x3, the paper-sized networks of configs/pixelcnn_cifar.py and
  configs/gated_pixelcnn_cifar.py, batch --cifar_batch. A naive CIFAR batch takes
  hours on a CPU, so unless --naive_full the naive time is extrapolated from the
  naive sampler's first --naive_steps steps (every step costs the same: one network
  evaluation on the whole canvas, a slice and a draw); the digits rows print the
  same extrapolation next to the measured time.

  python benchmarks/autoregressive_sampling.py
  python benchmarks/autoregressive_sampling.py --sizes=digits --digits_batch=256

Untrained (initialised) weights: the cost does not depend on their values.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import gated_pixelcnn_cifar, pixelcnn_cifar, pixelcnn_digits  # noqa: E402
from train import autoregressive  # noqa: E402
from train.state import num_params  # noqa: E402

flags.DEFINE_list("sizes", ["digits", "cifar"], "Image sizes: digits, cifar.")
flags.DEFINE_list("networks", ["pixelcnn", "gated_pixelcnn"], "Networks to time.")
flags.DEFINE_integer("digits_batch", 64, "Images per sampling call at 8x8x1.")
flags.DEFINE_integer("cifar_batch", 4, "Images per sampling call at 32x32x3.")
flags.DEFINE_bool("naive_full", False, "Run the naive CIFAR sampler instead of "
                  "extrapolating it from its first --naive_steps steps.")
flags.DEFINE_integer("repeats", 3, "Timed calls after the first; the fastest counts.")
flags.DEFINE_integer("naive_steps", 8, "Steps of the naive sampler timed to extrapolate.")
FLAGS = flags.FLAGS


def make_config(size: str, network: str, method: str):
  if size == "digits":
    config = pixelcnn_digits.get_config()
    config.model.name = network
  else:
    config = (pixelcnn_cifar if network == "pixelcnn" else gated_pixelcnn_cifar).get_config()
  config.sampling.method = method
  return config


def timed(fn, *args):
  """(seconds of the first call: compile + run, fastest of --repeats more, output).

  The fastest call is the least disturbed by other work on a shared machine.
  """
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  best = float("inf")
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return first, best, out


def run_case(size: str, network: str) -> dict:
  shape = (8, 8, 1) if size == "digits" else (32, 32, 3)
  batch_size = FLAGS.digits_batch if size == "digits" else FLAGS.cifar_batch
  families = {m: autoregressive.Autoregressive(make_config(size, network, m), shape, 10)
              for m in ("naive", "fast")}
  example = {"image": jnp.zeros((1, *shape), jnp.uint8), "label": jnp.zeros(1, jnp.int32)}
  params = jax.jit(families["naive"].init)(jax.random.PRNGKey(0), example).params
  rng = jax.random.PRNGKey(1)
  positions = int(np.prod(shape))
  result = dict(size=size, network=network, batch=batch_size, positions=positions,
                params=num_params(params))
  fast = jax.jit(families["fast"].sample, static_argnums=2)
  result["fast_first_s"], result["fast_s"], fast_images = timed(fast, params, rng,
                                                                batch_size)
  if size == "digits" or FLAGS.naive_full:
    naive = jax.jit(families["naive"].sample, static_argnums=2)
    result["naive_first_s"], result["naive_s"], naive_images = timed(naive, params, rng,
                                                                     batch_size)
    result["naive_measured"] = True
    result["same_images"] = bool(np.array_equal(naive_images, fast_images))
  else:
    result["naive_measured"] = False
    result["same_images"] = None
  # The naive sampler's first steps (same code, shorter loop): every step costs the same.
  steps = min(FLAGS.naive_steps, positions)
  partial = jax.jit(lambda p, r: autoregressive.sample_subpixels(
      lambda canvas: families["naive"].apply(p, canvas), r, (batch_size, *shape),
      num_positions=steps))
  _, partial_s, _ = timed(partial, params, rng)
  result["step_s"] = partial_s / steps
  result["naive_extrapolated_s"] = positions * result["step_s"]
  if not result["naive_measured"]:
    result["naive_s"] = result["naive_extrapolated_s"]
  return result


def main(argv):
  del argv
  print(f"devices: {jax.devices()}")
  header = ("size", "network", "batch", "params", "naive s", "naive img/s", "fast s",
            "fast img/s", "speed-up", "same images", "fast compile+run s")
  print(" | ".join(header))
  for size in FLAGS.sizes:
    for network in FLAGS.networks:
      r = run_case(size, network)
      naive = f"{r['naive_s']:.2f}" + ("" if r["naive_measured"] else " (extrap.)")
      print(" | ".join([
          r["size"], r["network"], str(r["batch"]), f"{r['params'] / 1e6:.2f}M", naive,
          f"{r['batch'] / r['naive_s']:.3g}", f"{r['fast_s']:.2f}",
          f"{r['batch'] / r['fast_s']:.3g}", f"{r['naive_s'] / r['fast_s']:.1f}x",
          str(r["same_images"]), f"{r['fast_first_s']:.1f}"]), flush=True)
      if r["naive_measured"]:
        print(f"  naive measured {r['naive_s']:.2f} s vs extrapolated "
              f"{r['naive_extrapolated_s']:.2f} s ({r['positions']} x "
              f"{r['step_s'] * 1e3:.1f} ms per step)", flush=True)


if __name__ == "__main__":
  app.run(main)
