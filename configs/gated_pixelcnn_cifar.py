"""Gated PixelCNN on CIFAR-10: van den Oord et al. 2016b, "Conditional Image
Generation with PixelCNN Decoders".

Reproduces the Gated PixelCNN row of Table 1 of the paper (unconditional CIFAR-10 test
NLL, 3.03 bits/dim; evaluation/paper_tables.py). Architecture (section 2, figure 2):
vertical and horizontal stacks without blind spot, gated activations
tanh(W_f * x) * sigmoid(W_g * x), a residual connection on the horizontal stack, a
256-way softmax per sub-pixel in raster and R -> G -> B order. Section 3.1 gives the
size used for its unconditional results: 20 layers of figure 2, 384 hidden units
(p), 5x5 filters, 200K synchronous updates with a total batch of 128. Everything the
paper does not state is marked below with what was chosen instead.

  python main.py --config=configs/gated_pixelcnn_cifar.py --workdir=runs/gated_pixelcnn_cifar
  python main.py --config=configs/gated_pixelcnn_cifar.py --workdir=runs/gated_pixelcnn_cifar --mode=eval
  python main.py --config=configs/gated_pixelcnn_cifar.py --workdir=runs/gated_pixelcnn_cifar --mode=sample

`--config=configs/gated_pixelcnn_cifar.py:runlocal` shrinks everything for a smoke test
on a laptop CPU (tiny network, a few steps); it reproduces nothing.
"""

from configs import autoregressive_base
from configs import config_args


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/gated_pixelcnn_cifar.py")
  config = autoregressive_base.get_config()
  config.name = "gated_pixelcnn_cifar"

  config.data.dataset = "cifar10"
  config.data.image_size = None       # native 32x32
  config.data.random_flip = False     # the paper mentions no data augmentation

  model = config.model
  model.name = "gated_pixelcnn"
  model.likelihood = "categorical"    # 256-way softmax per sub-pixel
  model.conditional = False           # Table 1 is unconditional (True: class biases, eq. 4)
  model.ch = 384                      # p, hidden units per layer (section 3.1)
  model.num_layers = 20               # gated layers (section 3.1)
  model.kernel_size = 5               # 5x5 filters (section 3.1)
  # Not stated: the first (mask-A) layer uses PixelCNN's 7x7 receptive field, and the
  # output is PixelCNN's ReLU -> 1x1 (1024) -> ReLU -> 1x1 head (van den Oord et al.
  # 2016a, table 1).
  model.first_kernel_size = 7
  model.head_features = 1024
  model.dropout = 0.0                 # none in the paper

  # The paper states neither optimizer nor learning rate (section 3.1 gives only the
  # network size, the number of updates and the batch): Adam at 1e-3 with a 1000-step
  # warm-up and clipping at norm 1 are our choice. (RMSProp, the PixelRNN paper's
  # optimizer, is available as optim.optimizer='rmsprop'.)
  config.optim.optimizer = "adam"
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 1000
  config.optim.grad_clip_norm = 1.0
  # No parameter averaging in the paper: the EMA is kept but evaluation and sampling
  # use the raw parameters (sampling.use_ema=False).
  config.optim.ema_decay = 0.9999

  training = config.training
  training.batch_size = 128           # total batch of 128 (section 3.1)
  training.num_train_steps = 200_000  # 200K synchronous updates (section 3.1)
  training.log_every_steps = 100
  training.checkpoint_every_steps = 10_000
  # A sample grid costs 32*32*3 = 3072 steps of one pixel's worth of network each.
  training.sample_every_steps = 50_000
  training.keep_checkpoints = 3
  training.keep_checkpoint_every_steps = 50_000

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
    model.ch = 6
    model.num_layers = 2
    model.kernel_size = 3
    model.head_features = 12
  return config
