"""PixelRNN on binarized MNIST: van den Oord et al. 2016a, "Pixel Recurrent Neural
Networks", Table 4: Diagonal BiLSTM with 7 layers and h = 16, 79.20 nats test NLL
(evaluation/paper_tables.py).

Section 4 gives the model: "a Diagonal BiLSTM with 7 layers and a value of h = 16";
table 1 the rest (models/pixelrnn.py): a 7x7 mask-A convolution, the LSTM layers in
residual blocks, two ReLU -> 1x1 output layers with 32 maps (MNIST) and a sigmoid
output, one logit per pixel. Skip connections to the output are on, as in the
paper's best CIFAR-10 models (section 3.3, table 3; not stated for MNIST).
Data, training (RMSProp, batch 16) and evaluation (NLL in nats on the 10,000 test
images of tfds 'binarized_mnist', the fixed binarization the paper uses) are those of
configs/pixelcnn_binarized_mnist.py, with the same choices where the paper is silent
(learning rate 3e-4, 200k steps). Arg 'row_lstm' trains a Row LSTM of the same size
instead (its size for MNIST is not stated; our choice).

  python main.py --config=configs/pixelrnn_binarized_mnist.py --workdir=runs/diagonal_bilstm_bmnist
  python main.py --config=configs/pixelrnn_binarized_mnist.py:row_lstm --workdir=runs/row_lstm_bmnist

Args (comma-separated): 'diagonal_bilstm' (the default) or 'row_lstm'; 'dynamic'
(tfds 'mnist', dynamic binarization: not comparable with Table 4); 'runlocal'.
"""

from configs import autoregressive_base
from configs import config_args
from configs.pixelcnn_binarized_mnist import set_binarized_mnist, shrink_for_runlocal
from configs.pixelrnn_cifar import LAYER_TYPES


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/pixelrnn_binarized_mnist.py",
                           choices=LAYER_TYPES + ("dynamic",), exclusive=(LAYER_TYPES,))
  layer_type = next((a for a in args if a in LAYER_TYPES), "diagonal_bilstm")
  config = autoregressive_base.get_config()
  config.name = f"{layer_type}_binarized_mnist"
  set_binarized_mnist(config, dynamic="dynamic" in args)
  model = config.model
  model.name = layer_type             # diagonal_bilstm | row_lstm
  model.ch = 16                       # h (section 4)
  model.num_layers = 7                # LSTM layers (section 4)
  model.skip_connections = True       # layer-to-output skip connections (section 3.3)
  config.sampling.method = "naive"    # the fast sampler covers the PixelCNNs only
  if "runlocal" in args:
    shrink_for_runlocal(config)
  return config
