"""PixelCNN on the embedded `digits` dataset: CPU-sized, no download needed.

A small PixelCNN (van den Oord et al. 2016a: masked convolutions, residual blocks, a
256-way softmax per sub-pixel; the architecture of configs/pixelcnn_cifar.py with fewer
and narrower layers) on scikit-learn's 8x8 handwritten digits at native size. It trains
on 2 CPU cores in about 2.5 minutes and writes the test set's exact bits/dim (`bpd`) to
workdir/eval/ and naive (pixel-by-pixel) samples to workdir/samples/. It reproduces no
paper number. Its settings are the family's base (configs/autoregressive_base.py):
h = 32 (paper's CIFAR: 128), 4 residual blocks (15), 128 output maps (1024), Adam at
1e-3, 1500 steps of 64 digits, EMA 0.995.

  python main.py --config=configs/pixelcnn_digits.py --workdir=/tmp/pixelcnn_digits
  tensorboard --logdir=/tmp/pixelcnn_digits/tensorboard
"""

from configs import autoregressive_base
from configs import config_args


def get_config(arg: str | None = None):
  config_args.parse(arg, "configs/pixelcnn_digits.py")
  # The base is this model; its runlocal variant is this config's.
  config = autoregressive_base.get_config(arg)
  config.name = "pixelcnn_digits"
  config.model.name = "pixelcnn"
  config.model.likelihood = "categorical"   # 256-way softmax per sub-pixel
  return config
