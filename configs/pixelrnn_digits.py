"""PixelRNN (Diagonal BiLSTM or Row LSTM) on the embedded `digits` dataset: CPU-sized.

The architecture of configs/pixelrnn_cifar.py (van den Oord et al. 2016a: 7x7 mask-A
convolution, LSTM layers in residual blocks with skip connections, a 256-way softmax
per sub-pixel; models/pixelrnn.py) with fewer and narrower layers, trained with
RMSProp as in the paper, on scikit-learn's 8x8 handwritten digits at native size. It
writes the test set's exact bits/dim (`bpd`) to workdir/eval/ and naive
(pixel-by-pixel) samples to workdir/samples/. It reproduces no paper number.
Measured on 2 shared CPU cores (1500 steps, EMA parameters): Diagonal BiLSTM 1.815
test bits/dim in 11 minutes, Row LSTM 1.843 in 7 minutes (configs/pixelcnn_digits.py:
1.84 in 2.5 minutes).

  python main.py --config=configs/pixelrnn_digits.py --workdir=/tmp/diagonal_bilstm_digits
  python main.py --config=configs/pixelrnn_digits.py:row_lstm --workdir=/tmp/row_lstm_digits

Args (comma-separated): 'diagonal_bilstm' (the default) or 'row_lstm'; 'runlocal' for
a seconds-long smoke test.
"""

from configs import autoregressive_base
from configs import config_args
from configs.pixelrnn_cifar import LAYER_TYPES, set_pixelrnn_model


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/pixelrnn_digits.py", choices=LAYER_TYPES,
                           exclusive=(LAYER_TYPES,))
  layer_type = next((a for a in args if a in LAYER_TYPES), "diagonal_bilstm")
  config = autoregressive_base.get_config()
  config.name = f"{layer_type}_digits"

  # 2 layers (the paper's MNIST model: 7) of h = 32 (MNIST: 16; CIFAR-10: 128) keep a
  # CPU run to a few minutes; h = 16 reached 1.96 (Diagonal BiLSTM) and 1.95 (Row
  # LSTM) test bits/dim in the same 1500 steps.
  set_pixelrnn_model(config.model, layer_type, ch=32, num_layers=2, head_features=64)

  # Learning rate 1e-3 after a 100-step warm-up, EMA 0.995, 1500 steps of 64 digits and
  # naive sampling: the base's.
  optim = config.optim
  optim.optimizer = "rmsprop"         # as in the paper (section 5.2)
  optim.rmsprop_decay = 0.95
  optim.momentum = 0.0

  config.training.sample_every_steps = 1500
  config.eval.num_samples = 256

  if "runlocal" in args:
    config_args.runlocal(config)
    config.model.ch = 6
    config.model.num_layers = 1
    config.model.head_features = 12
  return config
