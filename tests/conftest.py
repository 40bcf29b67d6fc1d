"""Test-session settings.

Without a CUDA device, Triton's kernels are tested through its interpreter, which has to be
switched on before Triton is first imported (``triton.language`` is built for the mode it is
imported in); a GPU run leaves ``TRITON_INTERPRET`` as it is and compiles the kernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
