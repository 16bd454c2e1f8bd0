"""Suite-wide settings.

One intra-op thread for PyTorch: on the shared 2-core machines, two OpenMP threads competing with
a busy core run the suite's tiny training steps ~30x slower than one thread does. (Latency
measurements set their runtime's threads themselves.)
"""
import torch

torch.set_num_threads(1)
