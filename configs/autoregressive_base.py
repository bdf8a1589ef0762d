"""The autoregressive family's base config: configs/default.py plus every field that
train/autoregressive.py reads, each at its default and explained.

The family models p(x) = prod_t p(x_t | x_<t) exactly (PixelCNN, Gated PixelCNN,
PixelRNN, PixelCNN++), trains on the negative log-likelihood under teacher forcing and
samples one sub-pixel (or pixel) at a time. The network's fields are all here: those
of the PixelCNNs and PixelRNN (ch, num_layers, ...) and those of PixelCNN++
(nr_filters, ...); a network reads its own and ignores the others.

`get_config()` is itself a runnable small config: a PixelCNN with a 256-way softmax per
sub-pixel on the embedded 8x8 `digits` (CPU, no download), the settings of
configs/pixelcnn_digits.py. Experiment configs (pixelcnn_*, gated_pixelcnn_cifar,
pixelrnn_*, pixelcnnpp_*) start from it and set what their paper sets.

  python main.py --config=configs/autoregressive_base.py --workdir=/tmp/autoregressive_base
  python main.py --config=configs/autoregressive_base.py:runlocal --workdir=/tmp/ar_smoke
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import config_args
from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, "configs/autoregressive_base.py")
  config = default.get_config()
  config.name = "autoregressive_base"   # data: default.py's digits, native 8x8, no flips

  model = config.model
  model.family = "autoregressive"
  # pixelcnn | gated_pixelcnn (models/pixelcnn.py) | row_lstm | diagonal_bilstm
  # (PixelRNN, models/pixelrnn.py) | pixelcnnpp (models/pixelcnnpp.py).
  model.name = "pixelcnn"
  # categorical (a 256-way softmax per sub-pixel) | bernoulli (binary data, one logit
  # per sub-pixel; not pixelcnnpp) | logistic_mixture (pixelcnnpp only). None = the
  # network's own likelihood (table NETWORK_LIKELIHOODS in train/autoregressive.py):
  # logistic_mixture for pixelcnnpp, categorical for the others.
  model.likelihood = placeholder(str)
  # bernoulli only: how the uint8 images become bits inside the family
  # (datasets/transforms.py): dynamic (x ~ Bernoulli(pixel / 255), drawn afresh at
  # every step) | threshold (x = [pixel >= 128]) | binary (data stored as 0/1).
  model.binarization = "dynamic"
  # Class-conditional (gated_pixelcnn, pixelcnnpp; the dataset must have labels).
  model.conditional = False
  # pixelcnnpp: dropout on each block's inner activations in training. The other
  # networks have none and refuse a non-zero value.
  model.dropout = 0.0

  # PixelCNN, Gated PixelCNN and PixelRNN (van den Oord et al. 2016a, 2016b).
  # PixelCNN / PixelRNN: h, a residual stream of 2h maps (h maps per LSTM gate);
  # Gated PixelCNN: p, the maps of each gated layer. >= the image's channels.
  model.ch = 32                       # (paper's CIFAR-10 PixelCNN: 128)
  # Residual blocks (PixelCNN), gated layers (Gated PixelCNN) or LSTM layers (PixelRNN).
  model.num_layers = 4                # (paper's CIFAR-10 PixelCNN: 15)
  # Odd, >= 3: the masked k x k convolutions (PixelCNN, Gated PixelCNN); the Row LSTM's
  # k x 1 convolutions. The Diagonal BiLSTM's are fixed (1x1 and 2x1).
  model.kernel_size = 3
  model.first_kernel_size = 7         # odd, >= 3: the mask-A input convolution
  # Maps of the two ReLU -> 1x1 output layers (paper: 1024 for CIFAR-10, 32 for MNIST).
  model.head_features = 128
  model.skip_connections = True       # PixelRNN: learnable layer-to-output skips (sec. 3.3)

  # PixelCNN++ (Salimans et al. 2017; configs/pixelcnnpp_cifar.py has the paper's).
  model.nr_filters = 32               # feature maps of every layer (paper: 160)
  model.nr_resnet = 1                 # gated ResNet blocks per level and stream (paper: 5)
  model.nr_logistic_mix = 5           # discretized logistics per pixel (paper: 10)

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
  training.checkpoint_every_steps = 500
  training.sample_every_steps = 750

  # naive: one network evaluation on the whole canvas per sub-pixel (per pixel for
  # the mixture), any network | fast: the same draws from cached activations, one
  # pixel's worth of network per sub-pixel (pixelcnn, gated_pixelcnn;
  # sampling/fast_autoregressive.py). 'naive_autoregressive' is an older name of naive.
  config.sampling.method = "naive"
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch

  if "runlocal" in args:
    config_args.runlocal(config)
    model.ch = 8
    model.num_layers = 1
    model.head_features = 16
    model.nr_filters = 8
    model.nr_logistic_mix = 2
  return config
