"""Set up once for every test module.

Without CUDA, Triton kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1). Triton reads
the variable when it is first imported (its own standard library is @triton.jit-decorated then) and when
each kernel is decorated, so it is set here, before any test module imports triton. (torch itself does
not import triton.) Code that picks a kernel by device still sends CPU tensors to the PyTorch references.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
