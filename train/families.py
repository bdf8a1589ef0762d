"""The one place where a config's `model.family` picks the family.

A family subclasses `train.contract.Family` (init, train_step, sample,
sampler_settings, and sampling_params by default) and may offer the optional
capabilities listed in train/contract.py. `build_family` constructs it and reads its
capabilities once; nothing else asks a family what it can do.
"""

import ml_collections

from train import autoregressive, contract, ddpm, gan, hvae, score, vae, vdm, vqvae

FAMILIES = {
    "autoregressive": autoregressive.Autoregressive,
    "ddpm": ddpm.DDPM,
    "gan": gan.GAN,
    "hvae": hvae.HierarchicalVAE,
    "score": score.ScoreSDE,
    "vae": vae.VAE,
    "vdm": vdm.VDM,
    "vqvae": vqvae.VQVAE,
}


def build_family(config: ml_collections.ConfigDict, image_shape,
                 num_classes: int) -> tuple[contract.Family, contract.Capabilities]:
  """The family of config.model.family and its capabilities (errors before compiling)."""
  name = config.model.family
  if name not in FAMILIES:
    raise ValueError(f"config.model.family={name!r} is not implemented; choose one of "
                     f"{sorted(FAMILIES)}.")
  family = FAMILIES[name](config, tuple(image_shape), num_classes)
  return family, contract.capabilities(family, name)


def get_family(config: ml_collections.ConfigDict, image_shape,
               num_classes: int) -> contract.Family:
  """The family of config.model.family (tests and benchmarks that need no loop)."""
  return build_family(config, image_shape, num_classes)[0]
