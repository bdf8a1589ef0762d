"""`python -m evaluation.cli` end to end: reference_stats, metrics, train_classifier."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import datasets
from evaluation import cli
from evaluation import inception
from evaluation import metrics as metrics_lib
from evaluation import reference_stats as reference_lib
from evaluation import sample_metrics
from tests.test_classifier import digits_classifier_dir
from tests.test_sample_metrics import random_inception_weights_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv, capsys):
  """(exit code, parsed stdout JSON or None, stderr) of cli.main in this process."""
  code = cli.main([str(a) for a in argv])
  captured = capsys.readouterr()
  try:
    output = json.loads(captured.out) if captured.out.strip() else None
  except json.JSONDecodeError:
    output = None
  return code, output, captured.err


@pytest.mark.integration
def test_train_classifier_command_runs_as_a_module():
  # The classifier is already in this cache: the command loads it and reports.
  root = digits_classifier_dir()
  done = subprocess.run(
      [sys.executable, "-m", "evaluation.cli", "train_classifier", "--dataset=digits",
       f"--out_dir={root}"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr
  report = json.loads(done.stdout)
  assert report["test_accuracy"] >= 0.95
  assert report["directory"] == os.path.join(root, "digits")
  assert report["classes"] == [str(i) for i in range(10)]


def test_classifier_metrics_from_dataset_and_from_a_stats_file_agree(
    digits_test, tmp_path, capsys):
  samples = tmp_path / "samples.npz"
  np.savez(samples, arr_0=digits_test[0])
  common = [f"--classifier_dir={digits_classifier_dir()}", "--batch_size=100"]
  code, by_dataset, err = _run(
      ["metrics", f"--samples={samples}", "--dataset=digits",
       f"--cache_dir={tmp_path / 'cache'}", f"--out={tmp_path / 'm.json'}", *common],
      capsys)
  assert code == 0, err
  assert by_dataset["class_coverage"] == 1.0
  assert by_dataset["protocol"]["reference"]["classifier"]["num_examples"] == 1442
  assert json.loads((tmp_path / "m.json").read_text()) == by_dataset
  # The same number through the API.
  api = sample_metrics.compute_sample_metrics(
      digits_test[0], reference=reference_lib.ReferenceSpec("digits"),
      cache_dir=tmp_path / "cache", classifier_dir=digits_classifier_dir(),
      log_progress=False)
  assert by_dataset["classifier_fd"] == pytest.approx(api.values["classifier_fd"])

  stats = tmp_path / "digits_train_classifier.npz"
  code, written, err = _run(
      ["reference_stats", "--dataset=digits", "--split=train", f"--out={stats}",
       "--feature_net=classifier", *common], capsys)
  assert code == 0, err
  assert written["num_examples"] == 1442 and written["feature_net"] == (
      "classifier/digits/8px")
  code, by_file, err = _run(["metrics", f"--samples={samples}", f"--reference={stats}",
                             *common], capsys)
  assert code == 0, err
  for key in ("classifier_fd", "class_coverage", "class_kl_reference"):
    assert by_file[key] == pytest.approx(by_dataset[key], rel=1e-6), key


@pytest.mark.integration
def test_inception_reference_stats_on_mock_cifar10_and_metrics(tmp_path, capsys,
                                                               monkeypatch):
  weights = random_inception_weights_file()
  stats_path = tmp_path / "cifar10_train.npz"
  with tfds.testing.mock_data(num_examples=5):
    code, written, err = _run(
        ["reference_stats", "--dataset=cifar10", "--split=train",
         f"--out={stats_path}", f"--inception_weights={weights}", "--batch_size=3",
         f"--data_dir={tmp_path / 'tfds'}"], capsys)
    assert code == 0, err
    mock_images = np.concatenate([
        b["image"][b["mask"]] for b in datasets.make_eval_batches(
            {"dataset": "cifar10", "data_dir": str(tmp_path / "tfds")},
            split="train", global_batch_size=5)])
  assert written["num_examples"] == 5 and written["image_shape"] == [32, 32, 3]
  assert written["weights_sha256"] == sample_metrics.file_sha256(weights)
  # The file is a pytorch-fid stats file of the (mock) images' pool3 features.
  expected = inception.extract_features(inception.load_params(weights), mock_images,
                                        batch_size=5)["pool"]
  mu, sigma = metrics_lib.load_stats(stats_path)
  np.testing.assert_allclose(mu, expected.mean(axis=0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(expected, rowvar=False), rtol=1e-3,
                             atol=1e-6)

  # Metrics of samples against that file. FID's 2048-d sqrtm (a minute on this
  # CPU) is checked in test_metrics.py; here a spy checks what it is given.
  fd_inputs = []
  monkeypatch.setattr(sample_metrics.metrics_lib, "frechet_distance",
                      lambda a, b: fd_inputs.append((a, b)) or 7.0)
  samples = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  np.savez(tmp_path / "samples.npz", arr_0=samples)
  code, result, err = _run(
      ["metrics", f"--samples={tmp_path / 'samples.npz'}", f"--reference={stats_path}",
       "--metrics=fid,is,kid", f"--inception_weights={weights}", "--batch_size=4",
       "--is_splits=2"],
      capsys)
  assert code == 0, err
  assert result["fid"] == 7.0
  np.testing.assert_allclose(fd_inputs[0][1][0], mu)
  assert np.isfinite(result["is"]) and np.isfinite(result["kid"])
  assert result["protocol"]["kid_subset_size"] == 4          # min(1000, 4, 5)
  assert result["protocol"]["is_splits"] == 2
  assert result["protocol"]["reference"]["inception"]["dataset"] == "cifar10"


def test_user_errors_exit_with_status_2_and_say_what_to_change(tmp_path, capsys,
                                                               monkeypatch):
  code, _, err = _run(["metrics", f"--samples={tmp_path / 'none.npz'}",
                       "--dataset=digits"], capsys)
  assert code == 2 and "No samples file" in err

  np.savez(tmp_path / "float.npz", arr_0=np.zeros((4, 8, 8, 1), np.float32))
  code, _, err = _run(["metrics", f"--samples={tmp_path / 'float.npz'}",
                       "--dataset=digits"], capsys)
  assert code == 2 and "uint8" in err

  np.savez(tmp_path / "flat.npz", arr_0=np.zeros((4, 64), np.uint8))
  code, _, err = _run(["metrics", f"--samples={tmp_path / 'flat.npz'}",
                       "--dataset=digits"], capsys)
  assert code == 2 and "NHWC" in err

  np.savez(tmp_path / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))
  code, _, err = _run(["metrics", f"--samples={tmp_path / 'stats.npz'}",
                       "--dataset=digits"], capsys)
  assert code == 2 and "arr_0" in err and "--reference" in err

  np.savez(tmp_path / "ok.npz", arr_0=np.zeros((4, 8, 8, 1), np.uint8))
  code, _, err = _run(["metrics", f"--samples={tmp_path / 'ok.npz'}"], capsys)
  assert code == 2 and "--reference" in err and "--dataset" in err

  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "missing.pth"))
  code, _, err = _run(["metrics", f"--samples={tmp_path / 'ok.npz'}",
                       f"--reference={tmp_path / 'stats.npz'}", "--metrics=fid"], capsys)
  assert code == 2 and "Inception-v3 weights were not found" in err
  assert "missing.pth" in err

  code, _, err = _run(["metrics", f"--samples={tmp_path / 'ok.npz'}",
                       "--dataset=digits", "--metrics=fid,mmd"], capsys)
  assert code == 2 and "Unknown metric" in err

  with pytest.raises(SystemExit):
    cli.main(["train_classifier"])  # argparse: --dataset is required
  assert "needs --dataset" in capsys.readouterr().err
