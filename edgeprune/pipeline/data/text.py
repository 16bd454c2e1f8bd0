"""A character corpus from text that ships with edgeprune: its own source code and documentation.

FLOP's language-model setting is enwik8 (bits per character); no corpus can be downloaded here, so
the char LM (models/char_lm.py) trains on the package's own .py and .md files, concatenated in
sorted path order (deterministic for a given checkout), encoded as 7-bit ASCII (any other
character becomes id 0). The last `val_fraction` of the characters is held out for validation.

Batches are (tokens (B, T), next characters (B·T,)), the flattened targets matching the LM's
flattened logits. Training windows start at random offsets, a fresh draw each epoch (`set_epoch`,
seeded, so a resumed run sees the same batches); validation windows tile the held-out text.

    --data edgeprune.pipeline.data.text:char_corpus --metric edgeprune.pipeline.recovery.evaluate:bits_per_char
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch

from edgeprune.errors import EdgepruneError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the edgeprune package
VOCAB = 128


def project_text(root: Path = PACKAGE_ROOT) -> str:
    """Every .py and .md file under `root`, in sorted relative-path order, joined by newlines."""
    files = sorted(
        (p for p in root.rglob("*") if p.suffix in (".py", ".md") and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def encode(text: str) -> torch.Tensor:
    """Character ids: the code point below 128, else 0."""
    return torch.tensor([o if o < VOCAB else 0 for o in map(ord, text)], dtype=torch.long)


class CharBatches:
    """(tokens, flattened next-character targets) batches of `context`-character windows of `ids`."""

    def __init__(self, ids: torch.Tensor, context: int, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        if len(ids) < context + 1:
            raise EdgepruneError(
                f"the text has {len(ids)} characters, fewer than one window of {context + 1}; use a shorter context"
            )
        self.ids, self.context, self.batch_size, self.shuffle, self.seed = ids, context, batch_size, shuffle, seed
        self.windows = (len(ids) - 1) // context
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.windows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            starts = torch.randint(0, len(self.ids) - self.context, (self.windows,), generator=gen)
        else:
            starts = torch.arange(self.windows) * self.context
        offsets = torch.arange(self.context + 1)
        for i in range(0, self.windows, self.batch_size):
            chunk = self.ids[starts[i : i + self.batch_size, None] + offsets]
            yield chunk[:, :-1], chunk[:, 1:].reshape(-1)


def char_corpus(
    context: int = 128, batch_size: int = 32, val_fraction: float = 0.1, seed: int = 0
) -> tuple[CharBatches, CharBatches]:
    """(train, val) over the project's own text; the last `val_fraction` is validation."""
    ids = encode(project_text())
    cut = int(len(ids) * (1 - val_fraction))
    return CharBatches(ids[:cut], context, batch_size, shuffle=True, seed=seed), CharBatches(
        ids[cut:], context, batch_size, shuffle=False
    )


def describe(root: Path = PACKAGE_ROOT) -> dict[str, object]:
    """Size and SHA-256 of the corpus, so a result names the exact text it was measured on."""
    text = project_text(root)
    return {
        "source": "edgeprune package .py and .md files, sorted by path",
        "characters": len(text),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
