"""Published numbers, as data, for reports beside this codebase's own.

The numbers the configs must reproduce, each with its paper, as the paper prints
them (values are kept as strings so that "2.20" stays "2.20"). This module is the
project's one copy of them: configs, docs and tests cite it. `source` gives the
table where a config's docstring cites it (DDPM Table 1, PixelRNN Table 5, Gated
PixelCNN Table 1, IWAE Table 1) or for PixelRNN's MNIST table (Table 4), and is
empty otherwise (the paper's main results). Two rows are quoted by
configs/vae_binarized_mnist.py's docstring (the one-stochastic-layer VAE and IWAE),
and say so in `source`.

Metric keys match the eval JSON where they compare directly:
`fid`, `is` (Inception Score), `nll_bpd` (test NLL in bits per sub-pixel of 8-bit
data; compared with this codebase's `bpd*` keys) and `nll_nats` (binarized MNIST,
nats per image; compared with `nll_nats*`). `bounds` marks values that are upper
bounds ("<="), `display` gives a cell text where the paper gave a range or an
approximate value.

How the published numbers were computed (the papers' protocol): FID with 50,000 samples
against the statistics of the 50,000 CIFAR-10 training images, Inception-v3
2015-12-05 pool3, uint8 inputs; IS with 50,000 samples in 10 splits.

`PUBLISHED` maps a config name (`config.name`, recorded as `config_name` in
workdir/eval/step_*.json) to the rows it should be compared with: the names of the
configs in configs/ (ddpm_cifar, ncsnpp_deep_cifar, ddpmpp_vp_deep_cifar,
edm_ddpmpp_cifar, row_lstm_cifar, sngan_resnet_cifar, ...). Keys for configs that
do not exist (iddpm_cifar, vdm_cifar, pixelsnail_cifar, nvae_cifar, the conditional
WGAN-GP, ...) are guesses, to rename if the config lands under another name.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

PUBLISHED_METRICS = {"fid": "FID", "is": "IS", "nll_bpd": "NLL (bits/dim)",
                     "nll_nats": "NLL (nats)"}
PROTOCOL = ("FID: 50k samples vs. statistics of the 50k CIFAR-10 training images, "
            "Inception-v3 2015-12-05 pool3, uint8 inputs; IS: 50k samples, 10 splits.")


@dataclasses.dataclass(frozen=True)
class Paper:
  authors: str   # "Ho et al. 2020"
  title: str
  arxiv: str

  def cite(self) -> str:
    return f'{self.authors}, "{self.title}", arXiv:{self.arxiv}'


@dataclasses.dataclass(frozen=True)
class PublishedResult:
  model: str                          # the row's name in the paper
  paper: Paper
  dataset: str                        # tfds name: cifar10, mnist (binarized)
  values: Mapping[str, str]           # PUBLISHED_METRICS key -> number as printed
  source: str = ""                    # where in the paper ("Table 1"), when known
  bounds: Mapping[str, str] = dataclasses.field(default_factory=dict)
  display: Mapping[str, str] = dataclasses.field(default_factory=dict)
  notes: str = ""
  # How the paper computed its FID/IS, where not PROTOCOL's (CIFAR-10) way.
  protocol: str = ""

  def cell(self, metric: str) -> str:
    """The published value as a table cell ('' when the paper gave none)."""
    if metric in self.display:
      return self.display[metric]
    if metric not in self.values:
      return ""
    bound = "≤ " if self.bounds.get(metric) == "<=" else ""
    return bound + self.values[metric]

  def number(self, metric: str) -> float | None:
    """The published value as a float (None when the paper gave none)."""
    return float(self.values[metric]) if metric in self.values else None

  def citation(self) -> str:
    return f"{self.paper.cite()}, {self.source}" if self.source else self.paper.cite()


# ------------------------------------------------------------------------ papers
DDPM = Paper("Ho et al. 2020", "Denoising Diffusion Probabilistic Models", "2006.11239")
DDIM = Paper("Song et al. 2021", "Denoising Diffusion Implicit Models", "2010.02502")
IDDPM = Paper("Nichol & Dhariwal 2021",
              "Improved Denoising Diffusion Probabilistic Models", "2102.09672")
SCORE_SDE = Paper("Song et al. 2021", "Score-Based Generative Modeling through "
                  "Stochastic Differential Equations", "2011.13456")
VDM = Paper("Kingma et al. 2021", "Variational Diffusion Models", "2107.00630")
EDM = Paper("Karras et al. 2022", "Elucidating the Design Space of Diffusion-Based "
            "Generative Models", "2206.00364")
DPM_SOLVER = Paper("Lu et al. 2022", "DPM-Solver: A Fast ODE Solver for Diffusion "
                   "Probabilistic Model Sampling in Around 10 Steps", "2206.00927")
PIXEL_RNN = Paper("van den Oord et al. 2016a", "Pixel Recurrent Neural Networks",
                  "1601.06759")
GATED_PIXELCNN = Paper("van den Oord et al. 2016b",
                       "Conditional Image Generation with PixelCNN Decoders",
                       "1606.05328")
PIXELCNNPP = Paper("Salimans et al. 2017", "PixelCNN++: Improving the PixelCNN with "
                   "Discretized Logistic Mixture Likelihood and Other Modifications",
                   "1701.05517")
PIXELSNAIL = Paper("Chen et al. 2018",
                   "PixelSNAIL: An Improved Autoregressive Generative Model",
                   "1712.09763")
SPARSE_TRANSFORMER = Paper("Child et al. 2019",
                           "Generating Long Sequences with Sparse Transformers",
                           "1904.10509")
IAF = Paper("Kingma et al. 2016",
            "Improved Variational Inference with Inverse Autoregressive Flow",
            "1606.04934")
NVAE = Paper("Vahdat & Kautz 2020", "NVAE: A Deep Hierarchical Variational "
             "Autoencoder", "2007.03898")
VDVAE = Paper("Child 2021", "Very Deep VAEs Generalize Autoregressive Models and Can "
              "Outperform Them on Images", "2011.10650")
IWAE = Paper("Burda et al. 2016", "Importance Weighted Autoencoders", "1509.00519")
DCGAN = Paper("Radford et al. 2016", "Unsupervised Representation Learning with Deep "
              "Convolutional Generative Adversarial Networks", "1511.06434")
WGAN_GP = Paper("Gulrajani et al. 2017", "Improved Training of Wasserstein GANs",
                "1704.00028")
SNGAN = Paper("Miyato et al. 2018",
              "Spectral Normalization for Generative Adversarial Networks", "1802.05957")
BIGGAN = Paper("Brock et al. 2019", "Large Scale GAN Training for High Fidelity "
               "Natural Image Synthesis", "1809.11096")
STYLEGAN2_ADA = Paper("Karras et al. 2020",
                      "Training Generative Adversarial Networks with Limited Data",
                      "2006.06676")

_LE = {"nll_bpd": "<="}
# DDPM's appendix B: "On LSUN, we calculated FID scores on 50000 samples using code from
# the StyleGAN2 repository."
_LSUN_FID = "FID: 50k samples, StyleGAN2's FID code, against the LSUN training images."
_LE_NATS = {"nll_nats": "<="}
R = PublishedResult

# --------------------------------------------------------------- rows by config
PUBLISHED: dict[str, tuple[PublishedResult, ...]] = {
    # CIFAR-10, diffusion and score-based (unconditional unless noted).
    "ddpm_cifar": (
        R("DDPM, L_simple", DDPM, "cifar10",
          {"fid": "3.17", "is": "9.46", "nll_bpd": "3.75"},
          source="Table 1", bounds=_LE,
          notes="35.7M U-Net, T=1000, 800k steps, EMA 0.9999"),
        R("DDIM, eta=0, 10 steps", DDIM, "cifar10", {"fid": "13.36"},
          notes="DDIM sampler on the DDPM model"),
        R("DDIM, eta=0, 100 steps", DDIM, "cifar10", {"fid": "4.16"},
          notes="quadratic step spacing"),
    ),
    "iddpm_cifar": (
        R("Improved DDPM, L_hybrid", IDDPM, "cifar10", {"fid": "2.9"},
          display={"fid": "~2.9"}, notes="cosine schedule, learned variance"),
        R("Improved DDPM, L_vlb", IDDPM, "cifar10", {"nll_bpd": "2.94"},
          notes="cosine schedule, learned variance"),
    ),
    "ncsnpp_deep_cifar": (
        R("NCSN++ cont., VE, deep", SCORE_SDE, "cifar10", {"fid": "2.20", "is": "9.89"},
          notes="PC sampler"),
    ),
    "ncsnpp_cifar": (
        R("NCSN++ cont., VE", SCORE_SDE, "cifar10", {"fid": "2.38", "is": "9.83"}),
    ),
    "ddpmpp_vp_deep_cifar": (
        R("DDPM++ cont., VP, deep", SCORE_SDE, "cifar10",
          {"fid": "2.41", "is": "9.68", "nll_bpd": "3.13"}, notes="FID(ODE) 3.08"),
    ),
    "ddpmpp_subvp_deep_cifar": (
        R("DDPM++ cont., sub-VP, deep", SCORE_SDE, "cifar10",
          {"fid": "2.41", "is": "9.57", "nll_bpd": "2.99"}, notes="FID(ODE) 2.92"),
    ),
    "score_sde_ddpm_cifar": (
        R("DDPM (score_sde's vp/ddpm)", SCORE_SDE, "cifar10",
          {"fid": "3.24", "nll_bpd": "3.28"}),
    ),
    "vdm_cifar": (
        R("VDM", VDM, "cifar10", {"nll_bpd": "2.65"}, notes="no data augmentation"),
    ),
    "edm_ddpmpp_cifar": (
        R("EDM, VP, unconditional", EDM, "cifar10", {"fid": "1.97"},
          notes="35 NFE Heun; minimum of 3 seeds"),
    ),
    "edm_ddpmpp_cond_cifar": (
        R("EDM, VP, conditional", EDM, "cifar10", {"fid": "1.79"},
          notes="35 NFE Heun; minimum of 3 seeds"),
    ),
    "dpm_solver_cifar": (
        R("DPM-Solver, 10 NFE", DPM_SOLVER, "cifar10", {"fid": "4.70"}),
        R("DPM-Solver, 20 NFE", DPM_SOLVER, "cifar10", {"fid": "2.87"}),
    ),
    # CIFAR-10, autoregressive.
    "pixelcnn_cifar": (
        R("PixelCNN", PIXEL_RNN, "cifar10", {"nll_bpd": "3.14"}, source="Table 5"),
    ),
    "row_lstm_cifar": (
        R("PixelRNN, Row LSTM", PIXEL_RNN, "cifar10", {"nll_bpd": "3.07"},
          source="Table 5"),
    ),
    "diagonal_bilstm_cifar": (
        R("PixelRNN, Diagonal BiLSTM", PIXEL_RNN, "cifar10", {"nll_bpd": "3.00"},
          source="Table 5"),
    ),
    "gated_pixelcnn_cifar": (
        R("Gated PixelCNN", GATED_PIXELCNN, "cifar10", {"nll_bpd": "3.03"},
          source="Table 1"),
    ),
    "pixelcnnpp_cifar": (
        R("PixelCNN++", PIXELCNNPP, "cifar10", {"nll_bpd": "2.92"}),
    ),
    "pixelsnail_cifar": (
        R("PixelSNAIL", PIXELSNAIL, "cifar10", {"nll_bpd": "2.85"}),
    ),
    "sparse_transformer_cifar": (
        R("Sparse Transformer", SPARSE_TRANSFORMER, "cifar10", {"nll_bpd": "2.80"}),
    ),
    # CIFAR-10, VAEs.
    "iaf_vae_cifar": (
        R("IAF-VAE", IAF, "cifar10", {"nll_bpd": "3.11"}, bounds=_LE),
    ),
    "nvae_cifar": (
        R("NVAE", NVAE, "cifar10", {"nll_bpd": "2.91"}, bounds=_LE),
    ),
    "vdvae_cifar": (
        R("Very Deep VAE", VDVAE, "cifar10", {"nll_bpd": "2.87"}, bounds=_LE),
    ),
    # CIFAR-10, GANs.
    "dcgan_cifar": (
        R("DCGAN", DCGAN, "cifar10", {}, display={"is": "~6.2-6.7"},
          notes="IS as re-measured by later papers"),
    ),
    "wgangp_cifar": (
        R("WGAN-GP, ResNet, unconditional", WGAN_GP, "cifar10", {"is": "7.86"}),
    ),
    "wgangp_cond_cifar": (
        R("WGAN-GP, ResNet, conditional", WGAN_GP, "cifar10", {"is": "8.42"}),
    ),
    "sngan_cnn_cifar": (
        R("SNGAN, standard CNN", SNGAN, "cifar10", {"fid": "29.3", "is": "7.42"}),
    ),
    "sngan_resnet_cifar": (
        R("SNGAN, ResNet", SNGAN, "cifar10", {"fid": "21.7", "is": "8.22"}),
    ),
    "biggan_cifar": (
        R("BigGAN, conditional", BIGGAN, "cifar10", {"fid": "14.73", "is": "9.22"}),
    ),
    "stylegan2_cifar": (
        R("StyleGAN2-ADA, conditional (official release)", STYLEGAN2_ADA, "cifar10",
          {"fid": "2.42"}),
        R("StyleGAN2-ADA, paper v1, conditional", STYLEGAN2_ADA, "cifar10",
          {"fid": "2.67", "is": "10.06"}),
    ),
    "stylegan2_uncond_cifar": (
        R("StyleGAN2-ADA, paper v1, unconditional", STYLEGAN2_ADA, "cifar10",
          {"fid": "3.26", "is": "9.74"}),
    ),
    # Binarized MNIST (nats). Static and dynamic binarization are not comparable.
    "pixelcnn_binarized_mnist": (
        R("PixelCNN, binarized", PIXEL_RNN, "mnist", {"nll_nats": "81.30"},
          source="Table 4"),
        R("Diagonal BiLSTM PixelRNN, binarized", PIXEL_RNN, "mnist",
          {"nll_nats": "79.20"}, source="Table 4"),
    ),
    "vae_binarized_mnist": (
        R("VAE, 1 stochastic layer, k=5000 estimate", IWAE, "mnist",
          {"nll_nats": "86.76"},
          source="Table 1 (quoted in configs/vae_binarized_mnist.py)"),
        R("VAE, 2 stochastic layers, k=5000 estimate", IWAE, "mnist",
          {"nll_nats": "85.33"}, notes="needs the two-layer model"),
    ),
    # LSUN 256x256 (DDPM Table 3).
    "ddpm_church256": (
        R("DDPM, L_simple", DDPM, "lsun/church_outdoor", {"fid": "7.89"},
          source="Table 3", notes="114M U-Net", protocol=_LSUN_FID),
    ),
    "ddpm_bedroom256": (
        R("DDPM, L_simple", DDPM, "lsun/bedroom", {"fid": "6.36"}, source="Table 3",
          notes="114M U-Net", protocol=_LSUN_FID),
        R("DDPM, L_simple, large", DDPM, "lsun/bedroom", {"fid": "4.90"},
          source="Table 3", notes="needs the 256M-parameter variant",
          protocol=_LSUN_FID),
    ),
    "ddpm_cat256": (
        R("DDPM, L_simple", DDPM, "lsun/cat", {"fid": "19.75"}, source="Table 3",
          notes="114M U-Net", protocol=_LSUN_FID),
    ),
    "iwae_binarized_mnist": (
        R("IWAE, k=50, 1 stochastic layer", IWAE, "mnist", {"nll_nats": "84.78"},
          source="Table 1 (quoted in configs/vae_binarized_mnist.py)"),
        R("IWAE, k=50, 2 stochastic layers", IWAE, "mnist", {"nll_nats": "82.90"},
          notes="needs the two-layer model"),
    ),
    "nvae_binarized_mnist": (
        R("NVAE, dynamically binarized", NVAE, "mnist", {"nll_nats": "78.01"}),
    ),
}

ALL_RESULTS: tuple[PublishedResult, ...] = tuple(
    row for rows in PUBLISHED.values() for row in rows)


def published_for(config_name: str) -> tuple[PublishedResult, ...]:
  """The published rows a config is compared with (empty if none)."""
  return PUBLISHED.get(config_name, ())
