"""Several processes joined by `jax.distributed` on 127.0.0.1, as on a cluster.

Two processes with 2 forced CPU devices each (gloo collectives) train through the
unchanged loop and are compared with ONE process holding 4 devices, fed the same
global batches; the checkpoints they leave restore and sample on 1 device (this
process). A peer killed with SIGKILL makes the survivor exit with an error within
the heartbeat timeout; SIGTERM to one process stops every process at the same step
with a checkpoint. Every subprocess runs under a timeout and is killed on failure.
"""

import dataclasses
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import jax
import numpy as np
import pytest

import datasets
from tests.test_train_loop import tiny_config
from train import distributed, families
from train import modes
from train.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 4
SUBPROCESS_TIMEOUT_S = 300


# The smallest U-Net (2.8k parameters): compile time dominates these tests.
SMALL_MODEL = {"model.ch": 4, "model.num_groups": 2, "model.ch_mult": (1,),
               "model.num_res_blocks": 1, "model.attn_resolutions": ()}
# With these, main.py's configs/ddpm_digits.py compiles the same train step as
# small_config, so that later jobs reuse what earlier ones compiled (shared cache).
SMALL_TRAIN_STEP = {**SMALL_MODEL, "model.dropout": 0.1, "diffusion.num_timesteps": 10,
                    "optim.warmup_steps": 2, "training.batch_size": 8,
                    # ddpm_digits' quick DDIM-50 needs T >= 50: the config's sampler.
                    "eval.quick_sampling": ""}


def with_overrides(config, overrides: dict[str, Any]):
  """`config` with dotted fields set: what `--config.<field>=<value>` does."""
  config.update_from_flattened_dict(overrides)
  return config


def as_flags(overrides: dict[str, Any]) -> list[str]:
  """main.py's command-line form of `overrides`."""
  return [f"--config.{key}={value!r}" if isinstance(value, tuple)
          else f"--config.{key}={value}" for key, value in overrides.items()]


def small_config(num_train_steps: int = NUM_STEPS):
  """tiny_config (tests/test_train_loop.py) with the smallest U-Net and a sample grid."""
  config = tiny_config(num_train_steps, sample_every_steps=num_train_steps)
  return with_overrides(config, {**SMALL_MODEL, "eval.vlb_timestep_chunk": 10})


# One process of a job. argv: output folder, process id, number of processes, port.
# It records what it read and what it wrote, then trains small_config through the
# loop into <output folder>/run (shared by the processes of a job, as on a cluster).
_WORKER = textwrap.dedent("""
    import json, os, sys
    out_dir, process_id, num_processes, port = sys.argv[1:5]
    process_id, num_processes = int(process_id), int(num_processes)
    workdir = os.path.join(out_dir, "run")

    # Every file this process opens for writing from Python (PNG, JSON, npz...).
    written = []
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
    def record_writes(event, args):
      if event != "open" or not isinstance(args[0], (str, bytes)):
        return
      mode, flags = args[1], args[2]
      if (isinstance(mode, str) and set(mode) & set("wax+")) or (
          mode is None and isinstance(flags, int) and flags & WRITE_FLAGS):
        written.append(os.path.abspath(os.fsdecode(args[0])))
    sys.addaudithook(record_writes)

    from train import distributed
    if num_processes > 1:
      distributed.maybe_initialize(f"127.0.0.1:{port}", num_processes, process_id)
    import jax
    import numpy as np
    import datasets
    from tests.test_multihost import NUM_STEPS, small_config
    from train import loop, sharding

    # What each process reads: the arguments of make_train_batches and, for the
    # first NUM_STEPS calls of to_global (the training steps), the local batch.
    reads = dict(make_train_batches=[], local=[], global_shapes=[])
    make_train_batches = datasets.make_train_batches
    def recording_make_train_batches(*args, **kwargs):
      reads["make_train_batches"].append(
          dict(process_index=kwargs["process_index"],
               process_count=kwargs["process_count"],
               global_batch_size=kwargs["global_batch_size"]))
      return make_train_batches(*args, **kwargs)
    datasets.make_train_batches = recording_make_train_batches
    to_global = sharding.to_global
    def recording_to_global(local, batch_sharding):
      arrays = to_global(local, batch_sharding)
      if len(reads["local"]) < NUM_STEPS:
        reads["local"].append({k: np.asarray(v) for k, v in local.items()})
        reads["global_shapes"].append(list(arrays["image"].shape))
      return arrays
    sharding.to_global = recording_to_global

    state = loop.train_and_evaluate(small_config(), workdir)
    # The state is replicated: this process's first shard is the whole array.
    np.savez(os.path.join(out_dir, f"params_{process_id}.npz"), **{
        jax.tree_util.keystr(p): np.asarray(x.addressable_shards[0].data)
        for p, x in jax.tree_util.tree_leaves_with_path(state.params)})
    np.savez(os.path.join(out_dir, f"batches_{process_id}.npz"), **{
        f"{key}_{i}": batch[key] for i, batch in enumerate(reads["local"])
        for key in batch})
    with open(os.path.join(out_dir, f"record_{process_id}.json"), "w") as f:
      json.dump(dict(pid=os.getpid(), step=int(state.step),
                     process_count=jax.process_count(), device_count=jax.device_count(),
                     local_device_count=jax.local_device_count(),
                     make_train_batches=reads["make_train_batches"],
                     global_shapes=reads["global_shapes"],
                     written=[p for p in written if p.startswith(workdir + os.sep)]), f)
""")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> str:
  """The session's persistent compilation cache (tests/conftest.py), shared with the
  subprocesses: a job reuses what an earlier job or this process compiled."""
  return (jax.config.jax_compilation_cache_dir
          or str(tmp_path_factory.mktemp("jax_cache")))


def subprocess_env(num_devices: int, cache_dir: str, **extra: str) -> dict[str, str]:
  """CPU with `num_devices` forced devices; compiled executables cached in `cache_dir`."""
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true",
              XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                         f" --xla_force_host_platform_device_count={num_devices}"),
              PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
              JAX_COMPILATION_CACHE_DIR=cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", **extra)


class Processes:
  """Subprocesses logging to files; all are killed when the block ends."""

  def __init__(self, directory):
    self.directory = directory
    self.procs: dict[str, subprocess.Popen] = {}
    self._logs = []

  def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    # A file, not a pipe: a full pipe would stall the process.
    log = open(self.log_path(name), "w")
    self._logs.append(log)
    self.procs[name] = subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
    return self.procs[name]

  def log_path(self, name: str) -> str:
    return os.path.join(self.directory, f"{name}.log")

  def log(self, name: str) -> str:
    with open(self.log_path(name), errors="replace") as f:
      return f.read()

  def wait_all(self, timeout: float) -> dict[str, int]:
    deadline = time.time() + timeout
    for name, proc in self.procs.items():
      try:
        proc.wait(timeout=max(1.0, deadline - time.time()))
      except subprocess.TimeoutExpired:
        pytest.fail(f"{name} still running after {timeout} s:\n{self.log(name)[-4000:]}")
    return {name: proc.returncode for name, proc in self.procs.items()}

  def wait_for_line(self, name: str, pattern: str, timeout: float) -> None:
    """Blocks until `name`'s log matches `pattern`; fails if it exits or times out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      if re.search(pattern, self.log(name)):
        return
      if self.procs[name].poll() is not None:
        pytest.fail(f"{name} exited ({self.procs[name].returncode}) before "
                    f"{pattern!r}:\n{self.log(name)[-4000:]}")
      time.sleep(0.2)
    pytest.fail(f"{name} did not log {pattern!r} within {timeout} s:\n"
                f"{self.log(name)[-4000:]}")

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    for proc in self.procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    for log in self._logs:
      log.close()


def abstract_state_on_one_device(config) -> Any:
  """The checkpoint tree's shapes, to be restored onto this process's one device."""
  info = datasets.get_dataset_info(config.data)
  family = families.get_family(config, info.image_shape, info.num_classes)
  example = dict(image=np.zeros((1, *info.image_shape), np.uint8),
                 label=np.zeros((1,), np.int32))
  shapes = jax.eval_shape(family.init, jax.random.PRNGKey(0), example).checkpoint_tree()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                      shapes)


def restore_on_one_device(workdir, config, step=None) -> dict:
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    tree, _, _ = checkpointer.restore(abstract_state_on_one_device(config), step=step)
  finally:
    checkpointer.close()
  return tree


def by_path(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


# ------------------------------------------------------------ 2 processes x 2 devices
@dataclasses.dataclass
class Jobs:
  multi: str                       # output folder of the 2-process job
  single: str                      # output folder of the 1-process, 4-device job
  records: dict[int, dict]         # what each process of the 2-process job saw
  single_record: dict


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, compile_cache) -> Jobs:
  """The 2-process job and the 4-device job, run side by side."""
  multi = tmp_path_factory.mktemp("two_processes")
  single = tmp_path_factory.mktemp("one_process")
  # Prepare `digits` here first, so that the processes never prepare it at once.
  datasets.get_dataset_info(small_config().data)
  port = str(free_port())
  with Processes(str(multi)) as procs:
    for process_id in (0, 1):
      procs.start(f"process_{process_id}",
                  [sys.executable, "-c", _WORKER, str(multi), str(process_id), "2", port],
                  subprocess_env(2, compile_cache))
    procs.start("single", [sys.executable, "-c", _WORKER, str(single), "0", "1", "0"],
                subprocess_env(4, compile_cache))
    codes = procs.wait_all(SUBPROCESS_TIMEOUT_S)
    for name, code in codes.items():
      assert code == 0, f"{name} failed:\n{procs.log(name)[-6000:]}"
  records = {}
  for process_id in (0, 1):
    with open(multi / f"record_{process_id}.json") as f:
      records[process_id] = json.load(f)
  with open(single / "record_0.json") as f:
    single_record = json.load(f)
  return Jobs(str(multi), str(single), records, single_record)


@pytest.mark.integration
def test_two_processes_form_one_four_device_job(jobs):
  for process_id, record in jobs.records.items():
    assert record["process_count"] == 2 and record["device_count"] == 4
    assert record["local_device_count"] == 2 and record["step"] == NUM_STEPS
  assert jobs.single_record["process_count"] == 1
  assert jobs.single_record["device_count"] == 4


@pytest.mark.integration
def test_each_process_reads_only_its_half_of_every_global_batch(jobs):
  batch_size = small_config().training.batch_size
  for process_id, record in jobs.records.items():
    assert record["make_train_batches"] == [dict(process_index=process_id,
                                                 process_count=2,
                                                 global_batch_size=batch_size)]
    assert record["global_shapes"] == [[batch_size, 8, 8, 1]] * NUM_STEPS
  halves = [np.load(os.path.join(jobs.multi, f"batches_{p}.npz")) for p in (0, 1)]
  whole = np.load(os.path.join(jobs.single, "batches_0.npz"))
  for step in range(NUM_STEPS):
    for key in ("image", "label"):
      name = f"{key}_{step}"
      assert halves[0][name].shape[0] == halves[1][name].shape[0] == batch_size // 2
      # Process 0's rows then process 1's: the 4-device process's global batch.
      np.testing.assert_array_equal(
          np.concatenate([halves[0][name], halves[1][name]]), whole[name])
    # The halves differ: neither process read the whole batch.
    assert not np.array_equal(halves[0][f"image_{step}"], halves[1][f"image_{step}"])


@pytest.mark.integration
def test_two_processes_end_with_the_params_of_one_four_device_process(jobs):
  p0 = dict(np.load(os.path.join(jobs.multi, "params_0.npz")))
  p1 = dict(np.load(os.path.join(jobs.multi, "params_1.npz")))
  single = dict(np.load(os.path.join(jobs.single, "params_0.npz")))
  assert sorted(p0) == sorted(p1) == sorted(single)
  # Step-2 params of the single-process run: how far two steps move the weights.
  step2 = by_path(restore_on_one_device(os.path.join(jobs.single, "run"), small_config(),
                                        step=2)["params"])
  largest_difference = largest_update = 0.0
  for path in single:
    np.testing.assert_array_equal(p0[path], p1[path], err_msg=path)  # one replicated state
    # Gloo sums the gradients of the two processes in another order: close, not equal.
    np.testing.assert_allclose(p0[path], single[path], rtol=1e-5, atol=1e-6, err_msg=path)
    largest_difference = max(largest_difference, np.max(np.abs(p0[path] - single[path])))
    largest_update = max(largest_update, np.max(np.abs(single[path] - step2[path])))
  assert largest_update > 5e-4 and largest_difference < 1e-3 * largest_update, (
      largest_difference, largest_update)
  reports = [json.load(open(os.path.join(d, "run", "eval", f"step_{NUM_STEPS:08d}.json")))
             for d in (jobs.multi, jobs.single)]
  assert reports[0]["num_examples"] == reports[1]["num_examples"] == 16
  np.testing.assert_allclose(reports[0]["bpd_vlb"], reports[1]["bpd_vlb"], rtol=1e-5)


@pytest.mark.integration
def test_only_process_zero_writes_logs_samples_and_eval(jobs):
  run = os.path.join(jobs.multi, "run")
  # config.json is written as config.json.tmp, then renamed.
  written = {p: {os.path.relpath(path, run).removesuffix(".tmp")
                 for path in jobs.records[p]["written"]} for p in (0, 1)}
  expected = {"config.json", f"eval/step_{NUM_STEPS:08d}.json",
              f"samples/train_step_{NUM_STEPS:08d}.png"}
  assert expected <= written[0], written[0]
  assert not {p for p in written[1] if not p.startswith("checkpoints" + os.sep)}, written[1]
  # TensorBoard event files are written by TensorFlow (C++), named after the writer's pid.
  events = glob.glob(os.path.join(run, "tensorboard", "events.out.tfevents.*"))
  assert events
  for path in events:
    assert f".{jobs.records[0]['pid']}." in os.path.basename(path), path
  assert sorted(os.listdir(os.path.join(run, "samples"))) == [
      f"train_step_{NUM_STEPS:08d}.png"]


@pytest.mark.integration
def test_both_processes_write_the_checkpoints_through_orbax(jobs):
  checkpoints = os.path.join(jobs.multi, "run", "checkpoints")
  assert sorted(os.listdir(checkpoints)) == ["2", "4"]
  for step in ("2", "4"):
    state = os.path.join(checkpoints, step, "state")
    # Orbax (OCDBT) gives each process its own data store and array metadata.
    for process_id in (0, 1):
      assert os.path.exists(os.path.join(state, f"ocdbt.process_{process_id}",
                                         "manifest.ocdbt")), os.listdir(state)
      assert os.path.exists(os.path.join(state, "array_metadatas",
                                         f"process_{process_id}"))


@pytest.mark.integration
def test_checkpoints_of_both_jobs_restore_exactly_on_one_device(jobs):
  """Saved on 4 devices (over 1 or 2 processes), restored here on 1."""
  assert jax.device_count() == 1
  for folder, params_file in ((jobs.multi, "params_0.npz"), (jobs.single, "params_0.npz")):
    restored = restore_on_one_device(os.path.join(folder, "run"), small_config())
    assert int(restored["step"]) == NUM_STEPS
    saved = dict(np.load(os.path.join(folder, params_file)))
    for path, value in by_path(restored["params"]).items():
      np.testing.assert_array_equal(value, saved[path], err_msg=path)


@pytest.mark.integration
def test_four_device_checkpoint_samples_on_one_device(jobs, tmp_path, fast_compile):
  """`--mode=sample` on a 1-device machine from a 4-device run's workdir."""
  config = small_config()
  directory = modes.sample(config, os.path.join(jobs.single, "run"))
  assert directory.endswith(f"step_{NUM_STEPS:08d}")
  with np.load(os.path.join(directory, "samples.npz")) as f:
    samples = f["arr_0"]
  assert samples.shape == (config.eval.num_samples, 8, 8, 1)
  assert samples.dtype == np.uint8 and samples.std() > 0


# ------------------------------------------------------------------------ via main.py
def main_command(workdir, port: int, process_id: int, num_steps: int,
                 *flags: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, "main.py"),
          "--config=" + os.path.join(REPO, "configs/ddpm_digits.py"),
          f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2", f"--process_id={process_id}",
          *as_flags({**SMALL_TRAIN_STEP, "training.sample_every_steps": 0}),
          f"--config.training.num_train_steps={num_steps}",
          "--config.training.log_every_steps=1", *flags]


HEARTBEAT_S = 5


@pytest.mark.parametrize("victim", [pytest.param(1, marks=pytest.mark.integration),
                                    pytest.param(0, marks=pytest.mark.slow)],
                         ids=["worker_dies", "coordinator_dies"])
def test_a_dead_peer_makes_the_survivor_fail_within_the_heartbeat_timeout(
    tmp_path, compile_cache, victim):
  datasets.get_dataset_info(small_config().data)
  port = free_port()
  env = subprocess_env(2, compile_cache, TRAIN_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_S))
  survivor = 1 - victim
  with Processes(str(tmp_path)) as procs:
    for process_id in (0, 1):
      procs.start(f"process_{process_id}",
                  main_command(tmp_path / "run", port, process_id, 100_000,
                               "--config.training.checkpoint_every_steps=1000"), env)
    procs.wait_for_line(f"process_{survivor}", r"step 3/100000", SUBPROCESS_TIMEOUT_S)
    procs.procs[f"process_{victim}"].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
      code = procs.procs[f"process_{survivor}"].wait(timeout=120)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process {survivor} still running 120 s after its peer died:\n"
                  f"{procs.log(f'process_{survivor}')[-4000:]}")
    elapsed = time.time() - killed_at
    log = procs.log(f"process_{survivor}")
  assert code != 0, log[-4000:]
  # Heartbeats are missed for HEARTBEAT_S before the coordinator declares the peer
  # dead; a dead coordinator is noticed at once. Generous slack: a loaded CI machine.
  assert elapsed < HEARTBEAT_S + 60, elapsed
  # JAX's coordination service aborts the survivor, naming the cause.
  assert "distributed service detected fatal errors" in log, log[-4000:]
  if victim == 1:   # the coordinator noticed that process 1 stopped sending heartbeats
    assert "stopped sending heartbeats" in log, log[-4000:]
  reason = [line for line in log.splitlines() if line.startswith(("F", "E"))]
  print(f"process {survivor} exited with {code} {elapsed:.1f} s after process "
        f"{victim} was killed: {reason[:2]}")


@pytest.mark.slow   # ~20 CPU-s; SIGTERM in one process is tested in test_train_loop.py
def test_sigterm_to_one_process_stops_every_process_at_one_checkpointed_step(
    tmp_path, compile_cache):
  """What SLURM sends before a time limit: all processes agree on the step to stop."""
  datasets.get_dataset_info(small_config().data)
  port = free_port()
  env = subprocess_env(2, compile_cache)
  with Processes(str(tmp_path)) as procs:
    for process_id in (0, 1):
      procs.start(f"process_{process_id}",
                  main_command(tmp_path / "run", port, process_id, 100_000,
                               "--config.training.checkpoint_every_steps=1000"), env)
    procs.wait_for_line("process_1", r"step 3/100000", SUBPROCESS_TIMEOUT_S)
    procs.procs["process_1"].send_signal(signal.SIGTERM)
    codes = procs.wait_all(120)
    logs = {p: procs.log(f"process_{p}") for p in (0, 1)}
  for p in (0, 1):
    assert codes[f"process_{p}"] == 0, logs[p][-4000:]
  stops = [int(re.search(r"Preempted \(SIGTERM\): checkpoint of step (\d+)",
                         logs[p]).group(1)) for p in (0, 1)]
  assert stops[0] == stops[1] >= 3, stops
  saved = sorted(int(s) for s in os.listdir(tmp_path / "run" / "checkpoints")
                 if s.isdigit())
  assert saved == [stops[0]], saved   # not a multiple of 1000: saved on demand


def test_initialize_arguments():
  """What main.py's flags and the environment turn into (nothing is started)."""
  args = distributed.initialize_arguments
  assert args(environ={}) is None                      # a plain single-process run
  assert args(None, 1, 0, environ={}) is None
  assert args(environ={"SLURM_NTASKS": "1"}) is None
  defaults = dict(heartbeat_timeout_seconds=distributed.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
                  shutdown_timeout_seconds=distributed.DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
                  initialization_timeout=distributed.DEFAULT_INITIALIZATION_TIMEOUT_SECONDS)
  # Cluster variables: JAX detects coordinator, count and id itself.
  for environ in ({"SLURM_NTASKS": "16"}, {"OMPI_COMM_WORLD_SIZE": "2"},
                  {"TPU_WORKER_HOSTNAMES": "a,b"}, {"TRAIN_DISTRIBUTED": "on"}):
    assert args(environ=environ) == defaults, environ
  assert args(environ={"SLURM_NTASKS": "16", "TRAIN_DISTRIBUTED": "off"}) is None
  assert args("10.0.0.1:1234", 4, 3, heartbeat_timeout_seconds=9, environ={}) == dict(
      defaults, heartbeat_timeout_seconds=9, coordinator_address="10.0.0.1:1234",
      num_processes=4, process_id=3)
  environ = {"TRAIN_HEARTBEAT_TIMEOUT_SECONDS": "7", "TRAIN_SHUTDOWN_TIMEOUT_SECONDS": "8"}
  got = args("h:1", 2, 0, environ=environ)
  assert got["heartbeat_timeout_seconds"] == 7 and got["shutdown_timeout_seconds"] == 8
  assert args("h:1", 2, 0, heartbeat_timeout_seconds=3,
              environ=environ)["heartbeat_timeout_seconds"] == 3   # argument wins
  for bad, message in [((None, 2, 0), "missing --coordinator_address"),
                       (("h:1", 2, None), "missing --process_id"),
                       (("h:1", 2, 2), r"--process_id=2 must be in \[0, 2\)"),
                       (("h", 2, 0), "must be host:port"),
                       ((None, 0, 0), "--num_processes=0")]:
    with pytest.raises(ValueError, match=message):
      args(*bad, environ={})
  with pytest.raises(ValueError, match="TRAIN_HEARTBEAT_TIMEOUT_SECONDS='soon'"):
    args("h:1", 2, 0, environ={"TRAIN_HEARTBEAT_TIMEOUT_SECONDS": "soon"})
  with pytest.raises(ValueError, match="must be a positive"):
    args("h:1", 2, 0, environ={"TRAIN_HEARTBEAT_TIMEOUT_SECONDS": "0"})
  with pytest.raises(ValueError, match="TRAIN_DISTRIBUTED='maybe'"):
    args(environ={"TRAIN_DISTRIBUTED": "maybe"})
