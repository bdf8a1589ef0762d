"""The edits `--mode=sample` offers and their options, as names and defaults only.

Kept free of JAX and the models, so that main.py can define its flags and check the
workdir lock within seconds, before the heavy imports (a second writer fails at once).
"""

EDIT_KINDS = ('inpaint', 'colorize', 'sdedit', 'interpolate', 'superres')
MASK_KINDS = ('center', 'left', 'right', 'top', 'bottom')

# The keys of `edit`'s options (main.py fills them from its flags) and their defaults.
EDIT_DEFAULTS = dict(
    edit=None,              # one of EDIT_KINDS; None: sample a condition
    input=None,             # images to edit: PNG/JPEG (one image) or .npz arr_0 / .npy
    input_b=None,           # 'interpolate': the second image of each pair
    mask="center",          # 'inpaint': a mask kind (MASK_KINDS) or a mask image
    strength=0.5,           # 'sdedit': t0 in [0, 1]
    num_resample=1,         # 'inpaint', 'colorize': RePaint resampling U (1 = none)
    num_points=8,           # 'interpolate': images per pair, ends included
    ddim_steps=50,          # 'interpolate': DDIM steps of the inversion and decoding
    fixed_point_iterations=0,   # 'interpolate': fixed-point DDIM inversion iterations
    prompt=None,            # a caption ('a blue square at bottom right') or 'all'
    label=None,             # a class id of a class-conditional model
    num_samples=None,       # prompted/labelled sampling: images (default 64; 'all': 216)
    shape_classifier=True,  # score the prompted shape with the shapes classifier
)
