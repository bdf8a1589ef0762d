"""PixelCNN on binarized MNIST: van den Oord et al. 2016a, "Pixel Recurrent Neural
Networks", Table 4: PixelCNN, 81.30 nats test NLL (evaluation/paper_tables.py).

Data (section 5.1): "the binary version (Salakhutdinov & Murray, 2008) of MNIST", the
fixed stochastic binarization that tfds serves as 'binarized_mnist' (Larochelle &
Murray's files: 50,000 train / 10,000 validation / 10,000 test images stored as
0/1, so model.binarization='binary'). Training uses the 50,000 training images; the
NLL is reported on the 10,000 test images in nats per image (`nll_nats`; `bpd` is the
same number in bits per binary pixel). Arg 'dynamic' trains on tfds 'mnist' binarized
afresh at every step instead: a different benchmark whose numbers are not comparable.

Model (models/pixelcnn.py): the PixelCNN of table 1 (7x7 mask-A convolution, residual
blocks with a masked 3x3 convolution, two ReLU -> 1x1 output layers) with a sigmoid
output, one logit per pixel (table 1: "Sigmoid (MNIST)"), and 32 maps in the output
layers (section 4: 32 for MNIST). Training (section 5.2): RMSProp, minibatches of 16.
Not stated for this model, our choices: 15 residual blocks (the paper's CIFAR-10
PixelCNN depth) of width h = 16 (the width of the paper's MNIST PixelRNN), learning
rate 3e-4 with a 1000-step warm-up, RMSProp decay 0.95, clipping at norm 1, 200k
steps (64 epochs), no parameter averaging.

  python main.py --config=configs/pixelcnn_binarized_mnist.py --workdir=runs/pixelcnn_bmnist
  python main.py --config=configs/pixelcnn_binarized_mnist.py --workdir=runs/pixelcnn_bmnist --mode=eval

The data must be prepared once where the machine can download:
  tfds build binarized_mnist --file_format=array_record --data_dir=<data_dir>

Args (comma-separated): 'dynamic' (tfds 'mnist', dynamic binarization), 'runlocal'.
"""

import ml_collections

from configs import autoregressive_base
from configs import config_args


def set_binarized_mnist(config: ml_collections.ConfigDict, dynamic: bool) -> None:
  """Data, likelihood, training and evaluation shared by the binarized MNIST configs."""
  data = config.data
  data.dataset = "mnist" if dynamic else "binarized_mnist"
  data.train_split = "train"          # binarized_mnist: 50,000 (validation held out)
  data.eval_split = "test"
  data.image_size = None              # native 28x28
  data.random_flip = False

  model = config.model
  model.likelihood = "bernoulli"      # one sigmoid logit per pixel (table 1)
  # 'binary': stored as 0/1; 'dynamic': x ~ Bernoulli(pixel / 255) at every step.
  model.binarization = "dynamic" if dynamic else "binary"
  model.conditional = False
  model.head_features = 32            # section 4: 32 output maps for MNIST
  model.first_kernel_size = 7         # table 1
  model.kernel_size = 3
  model.dropout = 0.0

  optim = config.optim
  optim.optimizer = "rmsprop"         # section 5.2
  optim.learning_rate = 3e-4          # not stated: our choice
  optim.warmup_steps = 1000           # our choice
  optim.rmsprop_decay = 0.95          # not stated: our choice
  optim.momentum = 0.0
  optim.grad_clip_norm = 1.0          # our choice
  optim.ema_decay = 0.9999            # kept, unused: sampling.use_ema=False

  training = config.training
  training.batch_size = 16            # section 5.2: 16 for MNIST and CIFAR-10
  training.num_train_steps = 200_000  # not stated: our choice (64 epochs of 50,000)
  training.log_every_steps = 500
  training.checkpoint_every_steps = 10_000
  training.sample_every_steps = 50_000
  training.num_samples_in_grid = 64
  training.keep_checkpoints = 3
  training.keep_checkpoint_every_steps = 50_000

  config.sampling.use_ema = False     # the paper evaluates the trained weights
  config.sampling.batch_size = 256
  config.eval.num_samples = 10_000    # --mode=sample
  config.eval.batch_size = 500        # the 10,000 test images in 20 batches
  # Table 4 reports the test NLL only: --mode=eval computes no sample-based metrics.
  config.eval.sample_metrics = "none"


def shrink_for_runlocal(config: ml_collections.ConfigDict) -> None:
  """The runlocal smoke test of the binarized MNIST configs."""
  config_args.runlocal(config, num_train_steps=10, eval_examples=16)
  config.training.batch_size = 8
  config.model.ch = 4
  config.model.num_layers = 1
  config.model.head_features = 8


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/pixelcnn_binarized_mnist.py", choices=("dynamic",))
  config = autoregressive_base.get_config()
  config.name = "pixelcnn_binarized_mnist"
  set_binarized_mnist(config, dynamic="dynamic" in args)
  model = config.model
  model.name = "pixelcnn"
  model.ch = 16                       # h: not stated for this model, our choice
  model.num_layers = 15               # residual blocks: not stated, our choice
  config.sampling.method = "fast"     # cached activations: the naive sampler's draws
  if "runlocal" in args:
    shrink_for_runlocal(config)
  return config
