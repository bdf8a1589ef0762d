"""PixelCNN on CIFAR-10: van den Oord et al. 2016a, "Pixel Recurrent Neural Networks".

Reproduces the PixelCNN row of Table 5 of the paper (CIFAR-10 test NLL, 3.14 bits/dim;
evaluation/paper_tables.py) with the paper's architecture (section 4, table 1,
figure 5): a 7x7 mask-A convolution, 15 residual blocks (each ReLU -> 1x1 -> ReLU ->
masked 3x3 -> ReLU -> 1x1, mask B) with h=128 (a residual stream of 2h=256 maps), then
ReLU -> 1x1 with 1024 maps -> ReLU -> 1x1 to a 256-way softmax for each of R, G, B,
sub-pixels conditioned in raster order and R -> G -> B. Section 5.2 trains with
RMSProp on minibatches of 16 and no augmentation; the learning rate and the number of
steps are not stated and are marked below with what was chosen instead.

  python main.py --config=configs/pixelcnn_cifar.py --workdir=runs/pixelcnn_cifar
  python main.py --config=configs/pixelcnn_cifar.py --workdir=runs/pixelcnn_cifar --mode=eval
  python main.py --config=configs/pixelcnn_cifar.py --workdir=runs/pixelcnn_cifar --mode=sample

`--config=configs/pixelcnn_cifar.py:runlocal` shrinks everything for a smoke test on a
laptop CPU (tiny network, a few steps); it reproduces nothing.
"""

from configs import autoregressive_base
from configs import config_args


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/pixelcnn_cifar.py")
  config = autoregressive_base.get_config()
  config.name = "pixelcnn_cifar"

  config.data.dataset = "cifar10"
  config.data.image_size = None       # native 32x32
  config.data.random_flip = False     # the paper mentions no data augmentation

  model = config.model
  model.name = "pixelcnn"
  model.likelihood = "categorical"    # 256-way softmax per sub-pixel (section 2.2)
  model.conditional = False
  model.ch = 128                      # h (section 4: "15 layers and h=128")
  # "15 layers": read as 15 residual blocks, each holding one masked 3x3 convolution
  # (figure 5, left); the 7x7 input and the two 1x1 output layers come in addition.
  model.num_layers = 15
  model.kernel_size = 3               # table 1: 3x3 mask-B convolutions
  model.first_kernel_size = 7         # table 1: 7x7 mask-A convolution
  model.head_features = 1024          # table 1 / section 4: 1024 maps for CIFAR-10
  model.dropout = 0.0                 # none in the paper

  # Section 5.2: "RMSProp gives best convergence performance and is used for all
  # experiments"; the learning-rate schedules were set by hand per dataset and are not
  # given. Our choices: 3e-4 after a 1000-step linear warm-up (RMSProp without bias
  # correction takes steps several times larger while its average of squared gradients
  # fills), decay 0.95, clipping at norm 1. (On digits, RMSProp at 1e-3 with decay 0.95
  # reached 1.83 test bits/dim against Adam's 1.84 with configs/pixelcnn_digits.py.)
  config.optim.optimizer = "rmsprop"
  config.optim.learning_rate = 3e-4
  config.optim.warmup_steps = 1000
  config.optim.rmsprop_decay = 0.95
  config.optim.momentum = 0.0
  config.optim.grad_clip_norm = 1.0
  # No parameter averaging in the paper: the EMA is kept but evaluation and sampling
  # use the raw parameters (sampling.use_ema=False).
  config.optim.ema_decay = 0.9999

  training = config.training
  training.batch_size = 16            # section 5.2: minibatches of 16 for CIFAR-10
  training.num_train_steps = 500_000  # not stated in the paper; our choice (~160 epochs)
  training.log_every_steps = 100
  training.checkpoint_every_steps = 10_000
  # A sample grid costs 32*32*3 = 3072 steps of one pixel's worth of network each.
  training.sample_every_steps = 50_000
  training.keep_checkpoints = 3
  training.keep_checkpoint_every_steps = 100_000

  # Cached activations (sampling/fast_autoregressive.py): the naive sampler's draws.
  config.sampling.method = "fast"
  config.sampling.use_ema = False
  config.sampling.batch_size = 256
  config.eval.num_samples = 50_000
  config.eval.batch_size = 100        # logits are [B, 32, 32, 3, 256]: keep B small

  if "runlocal" in args:
    config_args.runlocal(config, eval_examples=16)
    # A CIFAR-10 sample is 3072 network evaluations: no grid, 2 samples.
    training.sample_every_steps = 0
    config.eval.num_samples = 2
    training.batch_size = 8
    model.ch = 8
    model.num_layers = 2
    model.head_features = 16
  return config
