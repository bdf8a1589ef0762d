"""DDPM on LSUN Bedroom 256x256: Ho et al. 2020, "Denoising Diffusion Probabilistic
Models".

configs/ddpm_church256.py's network, forward process, optimizer and protocol (Appendix
B) on LSUN Bedroom, with the paper's differences: no random flips ("We also used random
horizontal flips for all other datasets except LSUN Bedroom"; the released
scripts/run_lsun.py keeps its default randflip=1 for bedroom) and 2.4M steps.

Paper's row (Table 3, evaluation/paper_tables.py): LSUN Bedroom FID 6.36 for this
114M-parameter model; the 4.90 of "Ours (L_simple, large)" is a 256M-parameter variant
with more filters (about 1.15M steps), whose width the paper does not give.

Data: tfds `lsun/bedroom` (`tfds build lsun/bedroom --data_dir=DIR
--file_format=array_record`), centre-cropped and resized to 256x256.

  huggingface-cli download google/ddpm-bedroom-256 --local-dir ddpm-bedroom-256
  python -m convert --from=diffusers --source=ddpm-bedroom-256 \\
      --config=configs/ddpm_bedroom256.py --workdir=runs/ddpm_bedroom256_published
  python -m convert --from=ddpm_tf \\
      --source=diffusion_lsun_bedroom_model/model.ckpt-2388000 \\
      --config=configs/ddpm_bedroom256.py --workdir=runs/ddpm_bedroom256_tf
  python main.py --config=configs/ddpm_bedroom256.py \\
      --workdir=runs/ddpm_bedroom256_published --mode=eval

  python main.py --config=configs/ddpm_bedroom256.py --workdir=runs/ddpm_bedroom256

`:runlocal` is a smoke test that reproduces nothing (configs/ddpm_church256.py).
"""

from configs import ddpm_church256


def get_config(arg: str | None = None):
  return ddpm_church256.ddpm_256(
      "configs/ddpm_bedroom256.py", arg, name="ddpm_bedroom256", dataset="lsun/bedroom",
      eval_split="validation", random_flip=False, num_train_steps=2_400_000)
