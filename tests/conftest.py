"""Suite-wide settings.

One intra-op thread for PyTorch: on the shared 2-core machines, two OpenMP threads competing with
a busy core run the suite's tiny training steps ~30x slower than one thread does. (Latency
measurements set their runtime's threads themselves.)

The per-layer latency table's cross-run cache goes to a temporary folder, not the user's home.
"""
import os
import tempfile

import torch

os.environ.setdefault("EDGEPRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="edgeprune_test_cache_"))

torch.set_num_threads(1)
