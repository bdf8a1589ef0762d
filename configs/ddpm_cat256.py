"""DDPM on LSUN Cat 256x256: Ho et al. 2020, "Denoising Diffusion Probabilistic Models".

configs/ddpm_church256.py's network, forward process, optimizer and protocol (Appendix
B) on LSUN Cat, trained for 1.8M steps with random flips as the paper states (the
released scripts/run_lsun.py's command for cat passes --randflip 0 instead).

Paper's row (Table 3, evaluation/paper_tables.py): LSUN Cat FID 19.75. LSUN's object
categories have no validation split: bits/dim is the bound on the first 300 training
images.

Data: tfds `lsun/cat` (`tfds build lsun/cat --data_dir=DIR --file_format=array_record`),
centre-cropped and resized to 256x256.

  huggingface-cli download google/ddpm-cat-256 --local-dir ddpm-cat-256
  python -m convert --from=diffusers --source=ddpm-cat-256 \\
      --config=configs/ddpm_cat256.py --workdir=runs/ddpm_cat256_published
  python -m convert --from=ddpm_tf \\
      --source=diffusion_lsun_cat_model/model.ckpt-1761000 \\
      --config=configs/ddpm_cat256.py --workdir=runs/ddpm_cat256_tf
  python main.py --config=configs/ddpm_cat256.py --workdir=runs/ddpm_cat256_published \\
      --mode=eval

  python main.py --config=configs/ddpm_cat256.py --workdir=runs/ddpm_cat256

`:runlocal` is a smoke test that reproduces nothing (configs/ddpm_church256.py).
"""

from configs import ddpm_church256


def get_config(arg: str | None = None):
  return ddpm_church256.ddpm_256(
      "configs/ddpm_cat256.py", arg, name="ddpm_cat256", dataset="lsun/cat",
      eval_split="train", random_flip=True, num_train_steps=1_800_000)
