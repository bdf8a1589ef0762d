"""The one training loop end to end on `digits`: resume, NaN halt, eval, sampling."""

import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ddpm_digits
from evaluation import sample_metrics
from train import ddpm as ddpm_family
from train import families, loop, modes, workdir_guard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(num_train_steps=4, **training):
  """A seconds-long DDPM on 8x8 digits."""
  config = ddpm_digits.get_config()
  config.data.image_size = None          # native 8x8
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.model.ch = 8
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.num_groups = 4
  config.model.dropout = 0.1             # exercises the dropout rng in resume
  config.diffusion.num_timesteps = 10
  config.optim.warmup_steps = 2
  t = config.training
  t.batch_size = 8
  t.num_train_steps = num_train_steps
  t.log_every_steps = 2
  t.checkpoint_every_steps = 2
  t.sample_every_steps = 0
  t.num_samples_in_grid = 4
  t.async_checkpointing = False
  for k, v in training.items():
    t[k] = v
  config.eval.num_eval_examples = 16
  config.eval.batch_size = 8
  config.eval.vlb_timestep_chunk = 5
  config.eval.num_samples = 6
  # Bits/dim only: the CLI test checks the sample metrics, the others need not pay
  # for the classifier and its reference statistics.
  config.eval.sample_metrics = "none"
  config.sampling.batch_size = 4
  config.eval.quick_sampling = ""        # ddpm_digits' quick DDIM-50 needs T >= 50
  return config


def cli_env() -> dict[str, str]:
  """A main.py subprocess's environment: one CPU device, the session's persistent
  compilation cache (tests/conftest.py), so that later runs reuse earlier compilations."""
  from tests.test_multihost import subprocess_env  # here: it imports this module
  return subprocess_env(1, jax.config.jax_compilation_cache_dir)


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.integration
def test_resumed_run_equals_uninterrupted_run(tmp_path, fast_compile):
  full = loop.train_and_evaluate(tiny_config(4), str(tmp_path / "full"))
  loop.train_and_evaluate(tiny_config(2), str(tmp_path / "split"))
  resumed = loop.train_and_evaluate(tiny_config(4), str(tmp_path / "split"))
  assert int(full.step) == int(resumed.step) == 4
  for a, b in zip(leaves(full.checkpoint_tree()), leaves(resumed.checkpoint_tree())):
    np.testing.assert_array_equal(a, b)   # bit for bit on CPU
  # The eval JSON of both runs exists and agrees.
  r1 = json.load(open(tmp_path / "full" / "eval" / "step_00000004.json"))
  r2 = json.load(open(tmp_path / "split" / "eval" / "step_00000004.json"))
  assert r1["bpd_vlb"] == r2["bpd_vlb"] and r1["config_name"] == "ddpm_digits"
  assert r1["num_examples"] == 16 and np.isfinite(r1["bpd_vlb"])


@pytest.mark.integration
def test_fused_steps_equal_single_steps(tmp_path, fast_compile):
  single = loop.train_and_evaluate(tiny_config(4), str(tmp_path / "a"))
  fused = loop.train_and_evaluate(tiny_config(4, steps_per_call=2), str(tmp_path / "b"))
  for a, b in zip(leaves(single.params), leaves(fused.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_nan_loss_stops_training_without_checkpointing_it(tmp_path, monkeypatch,
                                                          fast_compile):
  class NaNFamily(ddpm_family.DDPM):
    def train_step(self, state, batch):
      new_state, metrics = super().train_step(state, batch)
      bad = state.step >= 2   # steps 3 and later produce NaN
      nan_if_bad = jax.numpy.where(bad, jax.numpy.nan, 0.0)
      params = jax.tree.map(lambda p: p + nan_if_bad, new_state.params)
      metrics = dict(metrics, loss=metrics["loss"] + nan_if_bad)
      return new_state.replace(params=params), metrics

  monkeypatch.setitem(families.FAMILIES, "nan_ddpm", NaNFamily)
  config = tiny_config(6)
  config.model.family = "nan_ddpm"
  workdir = tmp_path / "w"
  with pytest.raises(loop.NonFiniteLossError, match="step 3.*newest good checkpoint is "
                     "step 2"):
    loop.train_and_evaluate(config, str(workdir))
  steps = sorted(os.listdir(workdir / "checkpoints"))
  assert steps == ["2"], steps


def test_init_compiled_to_run_once_gives_the_same_parameters():
  """state.jit_run_once (no XLA optimisation, no loop unrolling) against jax.jit: the
  same draws, up to float32 rounding in the initialisers' arithmetic (a few entries
  in a hundred differ in the last bit)."""
  import flax.linen as nn
  from train.state import jit_run_once

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.GroupNorm(num_groups=2)(nn.Conv(4, (3, 3))(x))
      x = nn.Dense(5, kernel_init=nn.initializers.variance_scaling(
          1.0, "fan_avg", "uniform"))(nn.silu(x))
      self.param("noise", nn.initializers.normal(0.3), (17, 3))
      return x

  def init(rng):
    params = Net().init(rng, jnp.ones((2, 6, 6, 3)))["params"]
    # A while loop of random draws: what the compiler options leave rolled.
    total = jax.lax.fori_loop(0, 4, lambda i, acc: acc + jax.random.uniform(
        jax.random.fold_in(rng, i), (3,)), jnp.zeros((3,)))
    return params, total

  rng = jax.random.PRNGKey(7)
  expected = jax.jit(init)(rng)
  got = jit_run_once(init)(rng)
  assert len(jax.tree.leaves(got)) == 8
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=3e-7, atol=1e-30)
  # Not the same draws everywhere: the test would catch a swapped key.
  assert len({float(np.asarray(x).ravel()[0]) for x in jax.tree.leaves(got)}) > 3


def test_bad_config_values_fail_before_compiling(tmp_path):
  config = tiny_config(4, log_every_steps=3, steps_per_call=2)
  with pytest.raises(ValueError, match="log_every_steps=3 must be a multiple"):
    loop.train_and_evaluate(config, str(tmp_path))
  config = tiny_config(4)
  config.model.family = "nope"
  with pytest.raises(ValueError, match="model.family='nope'"):
    loop.train_and_evaluate(config, str(tmp_path))
  config = tiny_config(4)
  config.diffusion.var_type = "learned"
  with pytest.raises(ValueError, match="var_type"):
    loop.train_and_evaluate(config, str(tmp_path))


def test_eval_and_sample_need_a_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="train first"):
    modes.sample(tiny_config(), str(tmp_path))


@pytest.mark.integration
def test_cli_train_eval_sample_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  overrides = [
      "--config.data.image_size=8", "--config.model.ch=8",
      "--config.model.ch_mult=(1,2)", "--config.model.num_groups=4",
      "--config.model.attn_resolutions=(4,)", "--config.training.batch_size=8",
      "--config.training.num_samples_in_grid=4",
  ]
  base = [sys.executable, os.path.join(REPO, "main.py"),
          "--config=" + os.path.join(REPO, "configs/ddpm_digits.py") + ":runlocal",
          f"--workdir={workdir}", *overrides]
  env = cli_env()
  for mode in ("train", "eval", "sample"):
    proc = subprocess.run(base + [f"--mode={mode}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    if mode == "train":
      assert "steps/s" in proc.stderr and "left" in proc.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
  assert glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))
  assert os.path.exists(workdir / "samples" / "train_step_00000020.png")
  report = json.load(open(workdir / "eval" / "step_00000020.json"))
  assert report["step"] == 20 and report["num_examples"] == 32
  # Sample metrics beside bits/dim, with the protocol that produced them.
  assert np.isfinite(report["classifier_fd"]) and 0 < report["class_coverage"] <= 1
  protocol = report["protocol"]
  assert protocol["num_samples"] == 8 and protocol["sampler"]["sampler"] == "ancestral"
  assert protocol["sampler"]["nfe"] == 20 and protocol["sampler"]["params"] == "ema"
  with np.load(workdir / "samples" / "step_00000020" / "samples.npz") as f:
    samples = f["arr_0"]
  assert samples.shape == (8, 8, 8, 1) and samples.dtype == np.uint8


@pytest.mark.integration
def test_loss_decreases_on_digits_within_a_few_hundred_steps(fast_compile):
  """L_simple falls well below its value at initialisation (~1: eps_theta ~ 0)."""
  import datasets
  config = tiny_config()
  config.model.dropout = 0.0
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 20
  config.diffusion.num_timesteps = 100
  info = datasets.get_dataset_info(config.data)
  family = families.get_family(config, info.image_shape, info.num_classes)
  batches = datasets.make_train_batches(config.data, seed=0, global_batch_size=32)
  state = jax.jit(family.init)(jax.random.PRNGKey(0), batches.get(0))
  step = jax.jit(family.train_step, donate_argnums=0)
  losses = []
  for i, batch in zip(range(300), batches.iterate(0)):
    state, metrics = step(state, {k: batch[k] for k in ("image", "label")})
    losses.append(metrics["loss"])
  losses = np.asarray(jax.device_get(losses))
  first, last = losses[:30].mean(), losses[-50:].mean()
  assert first > 0.7, first                # eps_theta starts near 0: loss ~ E|eps|^2 = 1
  assert last < 0.5 * first, (first, last)
  # Samples have the data's shape, dtype and range.
  images = jax.jit(family.sample, static_argnums=2)(state.ema_params,
                                                    jax.random.PRNGKey(1), 4)
  assert images.shape == (4, *info.image_shape) and images.dtype == np.uint8


@pytest.mark.integration
def test_resuming_with_a_different_config_is_refused_unless_allowed(tmp_path,
                                                                     fast_compile):
  loop.train_and_evaluate(tiny_config(2), str(tmp_path))
  changed = tiny_config(4)
  changed.optim.learning_rate = 5e-4
  changed.seed = 7
  before = tiny_config(2).optim.learning_rate   # ddpm_digits': 0.002
  with pytest.raises(ValueError, match=rf"different config \(optim.learning_rate: "
                     rf"{before} -> 0.0005; seed: 42 -> 7\)"):
    loop.train_and_evaluate(changed, str(tmp_path))
  changed.training.allow_config_change = True
  assert int(loop.train_and_evaluate(changed, str(tmp_path)).step) == 4


def test_fields_added_after_a_run_started_resume_at_their_defaults(tmp_path):
  """A config.json written before a field existed: the field at its default (in the
  family's base config, which main.py passes) changes nothing; set to another value,
  or without the defaults, it is a change."""
  from configs import bases  # pylint: disable=g-import-not-at-top
  config = tiny_config(2)
  defaults = bases.base_config(config.model.family)
  workdir_guard.check_workdir_config(config, str(tmp_path), defaults)
  path = tmp_path / "config.json"
  saved = json.loads(path.read_text())
  del saved["guidance.p_uncond"], saved["diffusion.loss"]   # an older run's config.json
  path.write_text(json.dumps(saved))
  workdir_guard.check_workdir_config(config, str(tmp_path), defaults)
  with pytest.raises(ValueError, match=r"diffusion.loss: None -> 'simple'"):
    workdir_guard.check_workdir_config(config, str(tmp_path))
  config.diffusion.loss = "hybrid"
  with pytest.raises(ValueError, match=r"diffusion.loss: None -> 'hybrid'"):
    workdir_guard.check_workdir_config(config, str(tmp_path), defaults)


def test_fields_removed_from_the_code_do_not_block_a_resume(tmp_path):
  """A config.json with a field the code no longer has (nothing reads it): resumes."""
  config = tiny_config(2)
  workdir_guard.check_workdir_config(config, str(tmp_path))
  path = tmp_path / "config.json"
  saved = json.loads(path.read_text())
  saved["model.a_removed_field"] = 3
  path.write_text(json.dumps(saved))
  workdir_guard.check_workdir_config(config, str(tmp_path))


@pytest.mark.integration
def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  """What SLURM/TPU preemption sends: checkpoint now, exit 0, resume on restart."""
  import signal
  import time
  workdir = tmp_path / "run"
  base = [sys.executable, os.path.join(REPO, "main.py"),
          "--config=" + os.path.join(REPO, "configs/ddpm_digits.py") + ":runlocal",
          f"--workdir={workdir}", "--config.model.ch=8", "--config.model.ch_mult=(1,2)",
          "--config.model.num_groups=4", "--config.model.attn_resolutions=(4,)",
          "--config.training.batch_size=8", "--config.training.log_every_steps=1",
          "--config.training.checkpoint_every_steps=1000",
          "--config.training.sample_every_steps=0"]
  env = cli_env()
  proc = subprocess.Popen(base + ["--config.training.num_train_steps=100000"], cwd=REPO,
                          env=env, stderr=subprocess.PIPE, text=True)
  lines, deadline = [], time.time() + 300
  for line in proc.stderr:   # wait until training is under way
    lines.append(line)
    if "step 3/100000" in line or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  lines += proc.stderr.readlines()
  assert proc.wait(timeout=120) == 0, "".join(lines)[-3000:]
  log = "".join(lines)
  assert "Preempted (SIGTERM)" in log
  saved = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  assert len(saved) == 1 and saved[0] >= 3, saved   # not a multiple of 1000: on demand
  stop = saved[0]
  proc = subprocess.run(base + [f"--config.training.num_train_steps={stop + 2}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"from step {stop} to {stop + 2}" in proc.stderr


@pytest.mark.integration
def test_eval_watch_evaluates_each_checkpoint_once(tmp_path, fast_compile):
  """Beside training: every checkpoint without an eval JSON is evaluated, then it stops."""
  config = tiny_config(num_train_steps=4)
  config.eval.sample_metrics = "none"
  loop.train_and_evaluate(config, str(tmp_path))      # evaluates step 4 itself
  assert sorted(os.listdir(tmp_path / "eval")) == ["step_00000004.json"]
  reports = modes.evaluate_continuously(config, str(tmp_path), poll_seconds=0)
  assert [r["step"] for r in reports] == [2]          # 4 was done already
  assert sorted(os.listdir(tmp_path / "eval")) == ["step_00000002.json",
                                                   "step_00000004.json"]
  assert modes.evaluate_continuously(config, str(tmp_path), poll_seconds=0) == []


@pytest.mark.integration
def test_eval_samples_are_reused_only_by_the_same_sampler(tmp_path, monkeypatch,
                                                          fast_compile):
  """Chunks of eval samples resume an interrupted evaluation of the same sampler and
  weights; another sampler (or the raw weights) gets a sample set of its own."""
  seen = []

  def fake_metrics(images, **kwargs):
    del kwargs
    seen.append(np.asarray(images).copy())
    return sample_metrics.SampleMetrics(values=dict(fake=0.0), protocol={})

  monkeypatch.setattr(sample_metrics, "compute_sample_metrics", fake_metrics)
  config = tiny_config(num_train_steps=2)
  config.eval.sample_metrics = "classifier_fd"
  loop.train_and_evaluate(config, str(tmp_path))
  sample_dirs = lambda: sorted(glob.glob(str(tmp_path / "eval" / "samples_step_*")))  # noqa: E731
  assert len(sample_dirs()) == 1
  modes.evaluate(config, str(tmp_path))                      # the same sampler: resumed
  assert len(sample_dirs()) == 1
  np.testing.assert_array_equal(seen[0], seen[1])
  config.sampling.use_ema = False                            # other weights
  modes.evaluate(config, str(tmp_path))
  config.sampling.use_ema = True
  config.sampling.method = "ddim"                            # another sampler
  config.sampling.ddim_steps = 5
  modes.evaluate(config, str(tmp_path))
  assert len(sample_dirs()) == 3
