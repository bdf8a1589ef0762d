"""PixelCNN++ on CIFAR-10: Salimans et al. 2017, "PixelCNN++: Improving the PixelCNN
with Discretized Logistic Mixture Likelihood and Other Modifications".

Reproduces the PixelCNN++ row of the paper's CIFAR-10 table, 2.92 bits/dim test NLL
(evaluation/paper_tables.py), with the hyperparameters of the reference
implementation that the paper publishes and whose README reports the 2.92
(github.com/openai/pixel-cnn, train.py defaults): 3 resolution levels (32, 16, 8) of
nr_resnet=5 gated ResNet blocks per stream and pass, nr_filters=160, a mixture of 10
discretized logistics, dropout 0.5, concat_elu, weight normalisation; Adam with
learning rate 1e-3 decayed by 0.999995 every step, beta1=0.95, beta2=0.9995, batch
16 per GPU x 8 GPUs = 128, Polyak averaging (EMA) 0.9995 of the parameters used for
test NLL and samples. 53.66M parameters. Differences from the reference:
- no data-dependent initialisation: weight-norm scales start at 1 (0.1 on each
  block's last convolution) and biases at 0 instead of being set from a first batch's
  statistics (models/pixelcnnpp.py);
- the loss is the mean bits/dim of the batch instead of the summed nats: Adam is
  invariant to that scale except for its epsilon (the reference adds 1e-8 inside the
  square root of the summed-loss second moment; here optax's eps=1e-8 outside), a
  negligible difference;
- the number of steps is not stated (README: "approximately 5 days to converge to
  2.92" on 8 Maxwell TITAN X). 500k steps (1280 epochs) is our estimate of that
  budget; by then the decayed learning rate is 1e-3 * 0.999995^500k = 8e-5.

  python main.py --config=configs/pixelcnnpp_cifar.py --workdir=runs/pixelcnnpp_cifar
  python main.py --config=configs/pixelcnnpp_cifar.py --workdir=runs/pixelcnnpp_cifar \
      --mode=eval
  python main.py --config=configs/pixelcnnpp_cifar.py --workdir=runs/pixelcnnpp_cifar \
      --mode=sample

The authors' released weights of this network (the README of openai/pixel-cnn links
pxpp.zip, which holds params_cifar.ckpt, a TensorFlow V1 checkpoint) convert into a
workdir of this config: the raw variables become params, their Polyak averages
ema_params, which eval and sampling use (convert/pixelcnnpp_tf.py; the link
alpha.openai.com/pxpp.zip is down, openai/pixel-cnn issue #35 gives a mirror and the
file's SHA-1, c0913e0aea902ad33dde81c96b3d8cea8c0687e9):

  unzip pxpp.zip    # -> params_cifar.ckpt
  python -m convert --from=pixelcnnpp_tf --source=params_cifar.ckpt \
      --config=configs/pixelcnnpp_cifar.py --workdir=runs/pixelcnnpp_cifar_published
  python main.py --config=configs/pixelcnnpp_cifar.py \
      --workdir=runs/pixelcnnpp_cifar_published --mode=eval \
      --config.eval.sample_metrics=none   # test bits/dim only (paper: 2.92)

`--config=configs/pixelcnnpp_cifar.py:runlocal` shrinks everything for a smoke test on
a laptop CPU (tiny network, a few steps); it reproduces nothing.
"""

from configs import autoregressive_base
from configs import config_args


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/pixelcnnpp_cifar.py")
  config = autoregressive_base.get_config()
  config.name = "pixelcnnpp_cifar"

  config.data.dataset = "cifar10"
  config.data.image_size = None       # native 32x32
  config.data.random_flip = False     # the reference trains without augmentation

  model = config.model
  model.name = "pixelcnnpp"
  model.likelihood = "logistic_mixture"   # whole pixels, RGB coupled (paper eqs. 2-3)
  model.conditional = False           # the 2.92 model is unconditional
  model.ch = 160                      # nr_filters: feature maps of every layer
  # The network's own name for the width, kept equal to ch (a reference: overriding
  # either changes both).
  model.nr_filters = model.get_ref("ch")
  model.nr_resnet = 5                 # gated ResNet blocks per level
  model.nr_logistic_mix = 10          # mixture components per pixel
  model.dropout = 0.5                 # on each block's inner activations, training only

  optim = config.optim
  optim.optimizer = "adam"
  optim.learning_rate = 1e-3
  # The reference multiplies the learning rate by 0.999995 before every step:
  # lr(step) = 1e-3 * 0.999995**step, no warm-up. These two fields name that schedule
  # (optax.exponential_decay(1e-3, transition_steps=1, decay_rate=0.999995)).
  optim.lr_schedule = "exponential"
  optim.lr_decay_rate = 0.999995      # per step
  optim.warmup_steps = 0
  optim.beta1 = 0.95
  optim.beta2 = 0.9995
  optim.eps = 1e-8
  optim.grad_clip_norm = 0.0          # the reference does not clip
  optim.ema_decay = 0.9995            # Polyak averaging of the parameters

  training = config.training
  training.batch_size = 128           # 16 per GPU x 8 GPUs
  training.num_train_steps = 500_000  # not stated; see the docstring
  training.log_every_steps = 100
  training.checkpoint_every_steps = 10_000
  # A sample grid costs 32*32 = 1024 network evaluations (one per pixel).
  training.sample_every_steps = 50_000
  training.keep_checkpoints = 3
  training.keep_checkpoint_every_steps = 100_000

  config.sampling.method = "naive"    # the fast sampler covers the PixelCNNs only
  config.sampling.use_ema = True      # the reference evaluates and samples with the EMA
  config.sampling.batch_size = 256
  config.eval.num_samples = 50_000    # 1024 evaluations of the network per batch
  config.eval.batch_size = 500

  if "runlocal" in args:
    config_args.runlocal(config, eval_examples=16)
    # A CIFAR-10 sample is 1024 network evaluations: no grid, 2 samples.
    training.sample_every_steps = 0
    config.eval.num_samples = 2
    training.batch_size = 8
    model.ch = 8
    model.nr_resnet = 1
    model.nr_logistic_mix = 2
  return config
