"""Set up once for every test module.

Without CUDA, Triton kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1). Triton reads
the variable when it is first imported (its own standard library is @triton.jit-decorated then) and when
each kernel is decorated, so it is set here, before any test module imports triton. (torch itself does
not import triton.) Code that picks a kernel by device still sends CPU tensors to the PyTorch references.

CPU ops run on one thread unless REPRISE_TEST_THREADS says otherwise: on the shared 2-core machines the
tests' many small ops spent most of their time in OpenMP barriers waiting for a descheduled second
thread (a 1-token model step took 1.4 s on 2 threads under load, 0.1 s on 1).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(int(os.environ.get("REPRISE_TEST_THREADS", "1")))
