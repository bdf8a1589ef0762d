"""Published checkpoints -> this project's workdirs.

  python -m convert --from=diffusers --source=ddpm-cifar10-32 \\
      --config=configs/ddpm_cifar.py --workdir=runs/ddpm_cifar_published

One module per format, each exporting a `common.Format` (the families it converts
into, what --source is, and a pure reader: files in, numpy parameter trees out):
`diffusers_unet` (diffusers UNet2DModel folders), `ddpm_tf` (the DDPM authors'
TensorFlow checkpoints), `diffusers_ncsnpp` (diffusers NCSN++ folders), `score_sde`
(score_sde's PyTorch and Flax checkpoints), `improved_diffusion`, `edm` (state dicts
exported with EDM's code), `pixelcnnpp_tf` and `vdvae`. `common.py` holds what they
share (reading without running code, SHA-256 records, name- and shape-checked
assembly); `workdir.py` lists the formats and writes the converted weights as the
checkpoint the training loop would have written, so that `main.py --mode=eval` and
`--mode=sample` read it unchanged. Nothing here runs code from a checkpoint.
"""
