"""Published checkpoints -> this project's workdirs.

  python -m convert --from=diffusers --source=ddpm-cifar10-32 \\
      --config=configs/ddpm_cifar.py --workdir=runs/ddpm_cifar_published

`diffusers_unet.py` maps a diffusers UNet2DModel folder onto models/unet.py's
parameters (pure: files in, numpy arrays out); `workdir.py` writes them as the
checkpoint the training loop would have written, so that `main.py --mode=eval` and
`--mode=sample` read it unchanged. Nothing here runs code from a checkpoint.
"""
