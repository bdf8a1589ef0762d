"""DDPM on CelebA-HQ 256x256: Ho et al. 2020, "Denoising Diffusion Probabilistic
Models".

configs/ddpm_church256.py's network, forward process, optimizer and protocol (Appendix
B, and the released scripts/run_celebahq.py) on CelebA-HQ, with random flips, for 0.5M
steps. The paper shows CelebA-HQ samples only: it reports no FID or likelihood for it,
so there is no row to compare with; --mode=eval gives FID against all 30,000 images
(the one split) and the bound on the first 300 of them.

Data: tfds `celeb_a_hq/256` (a manual download: see its tfds catalog page; then
`tfds build celeb_a_hq/256 --data_dir=DIR --file_format=array_record`), already
256x256; its one split is `train`.

  huggingface-cli download google/ddpm-celebahq-256 --local-dir ddpm-celebahq-256
  python -m convert --from=diffusers --source=ddpm-celebahq-256 \\
      --config=configs/ddpm_celebahq256.py --workdir=runs/ddpm_celebahq256_published
  python main.py --config=configs/ddpm_celebahq256.py \\
      --workdir=runs/ddpm_celebahq256_published --mode=sample

  python main.py --config=configs/ddpm_celebahq256.py --workdir=runs/ddpm_celebahq256

A diffusion_tf checkpoint of this model converts with --from=ddpm_tf as in
configs/ddpm_church256.py. `:runlocal` is a smoke test that reproduces nothing.
"""

from configs import ddpm_church256


def get_config(arg: str | None = None):
  return ddpm_church256.ddpm_256(
      "configs/ddpm_celebahq256.py", arg, name="ddpm_celebahq256",
      dataset="celeb_a_hq/256", eval_split="train", random_flip=True,
      num_train_steps=500_000, num_reference_examples=None)
