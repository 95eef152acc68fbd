from __future__ import annotations

import torch

# Small tensors on a shared 2-core machine: one torch thread per test process is both faster
# (no OpenMP spin-waiting against other processes) and steadier. Tests that need more set it.
torch.set_num_threads(1)
