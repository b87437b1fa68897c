"""Test-wide settings: one torch thread (small MLPs run fastest that way on 2 cores)."""

import torch

torch.set_num_threads(1)
