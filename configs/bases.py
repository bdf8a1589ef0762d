"""Each family's base config: `base_config(family)`.

A base (`configs/<family>_base.py`) is configs/default.py plus every field its family
reads, each with its default and a comment; it is itself a runnable small config.
Experiment configs start from their family's base. main.py passes the base's values
to the workdir guard, so that a field added after a run started, at its default,
does not block the run's resume.
"""

import ml_collections

from configs import (autoregressive_base, ddpm_base, gan_base, hvae_base, score_base,
                     vae_base, vdm_base, vqvae_base)

BASES = {
    "autoregressive": autoregressive_base,
    "ddpm": ddpm_base,
    "gan": gan_base,
    "hvae": hvae_base,
    "score": score_base,
    "vae": vae_base,
    "vdm": vdm_base,
    "vqvae": vqvae_base,
}


def base_config(family: str) -> ml_collections.ConfigDict:
  """The base config of `family` (every field it reads, at its default)."""
  if family not in BASES:
    raise ValueError(f"config.model.family={family!r} has no base config; choose one of "
                     f"{sorted(BASES)}.")
  return BASES[family].get_config()
