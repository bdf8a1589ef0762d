"""PixelRNN (Row LSTM or Diagonal BiLSTM) on CIFAR-10: van den Oord et al. 2016a,
"Pixel Recurrent Neural Networks".

Reproduces the PixelRNN rows of Table 5 of the paper (CIFAR-10 test NLL; Row LSTM
3.07, Diagonal BiLSTM 3.00 bits/dim; evaluation/paper_tables.py) with the paper's
architecture (models/pixelrnn.py): section 4 gives "12 layers and h = 128" for both
LSTMs on CIFAR-10; table 1 a 7x7 mask-A convolution, then the LSTM layers (Row LSTM:
3 x 1 input-to-state convolution with mask B, 3 x 1 unmasked state-to-state; Diagonal
BiLSTM: 1x1 input-to-state with mask B, 2 x 1 unmasked state-to-state), each in a
residual block (2h -> LSTM with h per gate -> 1x1 to 2h, added; section 3.3), then
two ReLU -> 1x1 mask-B layers, 1024 maps for CIFAR-10, and a 256-way softmax for each
of R, G, B. Section 3.3 adds learnable skip connections from every layer to the
output; table 3 reports the best CIFAR-10 result with residual and skip connections
together, which is what this config uses.

Training (section 5.2): RMSProp, minibatches of 16 images for CIFAR-10, no data
augmentation, learned initial recurrent states. The paper sets its learning-rate
schedules by hand per dataset and gives no value. Our choices, marked below: learning
rate 1e-4 with a 1000-step linear warm-up (RMSProp without bias correction takes its
first steps several times larger than later ones), RMSProp decay 0.95, gradient
clipping at norm 1, 500k steps (160 epochs), no parameter averaging for evaluation.

  python main.py --config=configs/pixelrnn_cifar.py:diagonal_bilstm --workdir=runs/diagonal_bilstm_cifar
  python main.py --config=configs/pixelrnn_cifar.py:row_lstm --workdir=runs/row_lstm_cifar
  python main.py --config=configs/pixelrnn_cifar.py:row_lstm --workdir=runs/row_lstm_cifar --mode=eval

Args (comma-separated): 'diagonal_bilstm' (the default) or 'row_lstm'; 'runlocal'
shrinks everything for a seconds-long smoke test on a laptop CPU (reproduces nothing).
Sampling is naive (3072 network evaluations per image): the fast sampler
(sampling/fast_autoregressive.py) covers the PixelCNNs only.
"""

import ml_collections

from configs import autoregressive_base
from configs import config_args

LAYER_TYPES = ("diagonal_bilstm", "row_lstm")


def set_pixelrnn_model(model: ml_collections.ConfigDict, layer_type: str, *, ch: int,
                       num_layers: int, head_features: int) -> None:
  """The PixelRNN fields of config.model (read by train/autoregressive.py)."""
  model.name = layer_type             # row_lstm | diagonal_bilstm
  model.likelihood = "categorical"    # 256-way softmax per sub-pixel (section 2.2)
  model.conditional = False           # the PixelRNN is unconditional
  model.ch = ch                       # h: h maps per LSTM gate, residual stream of 2h
  model.num_layers = num_layers       # LSTM layers, each in a residual block
  model.first_kernel_size = 7         # table 1: 7x7 mask-A convolution
  # Row LSTM: k of its k x 1 input-to-state (mask B) and state-to-state convolutions
  # (table 1: 3 x 1). The Diagonal BiLSTM's are fixed (1x1 and 2 x 1).
  model.kernel_size = 3
  model.head_features = head_features   # the two output 1x1 layers (table 1)
  model.skip_connections = True       # layer-to-output skip connections (section 3.3)
  model.dropout = 0.0                 # none in the paper


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/pixelrnn_cifar.py", choices=LAYER_TYPES,
                           exclusive=(LAYER_TYPES,))
  layer_type = next((a for a in args if a in LAYER_TYPES), "diagonal_bilstm")
  config = autoregressive_base.get_config()
  config.name = f"{layer_type}_cifar"

  config.data.dataset = "cifar10"
  config.data.image_size = None       # native 32x32
  config.data.random_flip = False     # section 5.2: no augmentation

  set_pixelrnn_model(config.model, layer_type, ch=128, num_layers=12,
                     head_features=1024)

  optim = config.optim
  optim.optimizer = "rmsprop"         # section 5.2: RMSProp for all experiments
  optim.learning_rate = 1e-4          # not stated in the paper: our choice
  optim.warmup_steps = 1000           # our choice
  optim.rmsprop_decay = 0.95          # not stated: our choice
  optim.momentum = 0.0
  optim.eps = 1e-8
  optim.grad_clip_norm = 1.0          # not stated: our choice
  # No parameter averaging in the paper: the EMA is kept but evaluation and sampling
  # use the raw parameters (sampling.use_ema=False).
  optim.ema_decay = 0.9999

  training = config.training
  training.batch_size = 16            # section 5.2: 16 images for CIFAR-10
  training.num_train_steps = 500_000  # not stated: our choice (160 epochs)
  training.log_every_steps = 100
  training.checkpoint_every_steps = 10_000
  # A naive sample grid costs 32*32*3 = 3072 network evaluations.
  training.sample_every_steps = 100_000
  training.num_samples_in_grid = 16
  training.keep_checkpoints = 3
  training.keep_checkpoint_every_steps = 100_000

  config.sampling.method = "naive"    # the fast sampler covers the PixelCNNs only
  config.sampling.use_ema = False
  config.sampling.batch_size = 64
  config.eval.num_samples = 10_000    # --mode=sample
  config.eval.batch_size = 100        # logits are [B, 32, 32, 3, 256]: keep B small
  # Table 5 reports the test NLL only, and naive sampling costs 3072 network
  # evaluations per batch: --mode=eval computes bits/dim only.
  config.eval.sample_metrics = "none"

  if "runlocal" in args:
    config_args.runlocal(config, num_train_steps=10, eval_examples=8)
    # A CIFAR-10 sample is 3072 network evaluations: no grid, 2 samples.
    training.sample_every_steps = 0
    config.eval.num_samples = 2
    training.batch_size = 4
    config.model.ch = 6
    config.model.num_layers = 1
    config.model.head_features = 12
  return config
