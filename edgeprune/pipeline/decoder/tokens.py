"""Unlabelled text for a decoder: what it is distilled on and measured on.

`--data` is an `.npz` holding `input_ids` (sequences x tokens, already tokenised), or text: a `.txt`
file or a folder of text files (.txt, .md, .py, .rst, .json), tokenised with the model folder's own
tokenizer. The token stream is cut into sequences of `seq_len`; one in ten (at least one, at most
`MAX_HELD`) is held out for the metric (perplexity and next-token agreement) and the search's KL,
the rest train.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from edgeprune.errors import EdgepruneError, first_line

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json")
#: what a folder holds when its tokenizer was saved with it (tokenizer.save_pretrained)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
#: tokens per training and held-out sequence
SEQ_LEN = 128
#: the most text read from a folder (characters): enough for a recovery on this machine
MAX_CHARS = 20_000_000
#: the most sequences held out (8 k tokens): perplexity is evaluated on them before recovery and
#: four times an epoch, beside the teacher's agreement; a tenth of 3 M tokens took 230 s each time
MAX_HELD = 64


@dataclasses.dataclass
class Tokens:
    train: torch.Tensor  # (n, seq_len) int64
    val: torch.Tensor
    source: str

    def describe(self) -> dict[str, object]:
        return {
            "source": self.source,
            "seq_len": int(self.train.shape[1]),
            "train_sequences": int(self.train.shape[0]),
            "val_sequences": int(self.val.shape[0]),
            "train_tokens": int(self.train.numel()),
            "val_tokens": int(self.val.numel()),
        }


def load_tokens(data: str, folder: Path, vocab: int, seq_len: int = SEQ_LEN) -> Tokens:
    """The tokens of `--data` (module docstring), checked against the model's vocabulary."""
    path = Path(data)
    if not path.exists():
        raise EdgepruneError(f"--data {data}: no such file or folder; give an .npz of input_ids, a .txt or a folder")
    stream = _npz_ids(path) if path.suffix == ".npz" else _tokenised(_text(path), folder, data)
    if stream.size and (stream.min() < 0 or stream.max() >= vocab):
        raise EdgepruneError(
            f"--data {data}: token ids run {stream.min()}..{stream.max()}, outside the model's vocabulary of {vocab}; "
            "tokenise with this model's tokenizer"
        )
    n = stream.size // seq_len
    if n < 2:
        raise EdgepruneError(
            f"--data {data}: {stream.size} tokens make {n} sequence(s) of {seq_len}; give at least {2 * seq_len} tokens"
        )
    seqs = torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len).astype(np.int64))
    held = min(MAX_HELD, max(1, n // 10))
    return Tokens(train=seqs[: n - held], val=seqs[n - held :], source=str(path))


def _npz_ids(path: Path) -> np.ndarray:
    try:
        with np.load(path) as z:
            if "input_ids" not in z:
                raise EdgepruneError(
                    f"--data {path}: holds {', '.join(z.files) or 'nothing'}, not input_ids; save the token ids as "
                    "np.savez(path, input_ids=ids)"
                )
            ids = np.asarray(z["input_ids"])
    except (OSError, ValueError) as err:
        raise EdgepruneError(f"--data {path}: cannot read it as .npz ({first_line(err)})") from None
    if not np.issubdtype(ids.dtype, np.integer):
        raise EdgepruneError(f"--data {path}: input_ids are {ids.dtype}, not integer token ids")
    return ids.reshape(-1)


def _text(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
    if not files:
        raise EdgepruneError(f"--data {path}: no text files ({', '.join(TEXT_SUFFIXES)}) in it")
    parts, size = [], 0
    for f in files:
        if size >= MAX_CHARS:
            break
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a binary or unreadable file among the text: skipped
        parts.append(text)
        size += len(text)
    return "\n".join(parts)[:MAX_CHARS]


def _tokenised(text: str, folder: Path, data: str) -> np.ndarray:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise EdgepruneError(
            f"--data {data} is text, and {folder} has no tokenizer ({', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer into the model folder (tokenizer.save_pretrained) or give an .npz of input_ids"
        )
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 - no tokenizer files, or ones transformers cannot read: one line
        raise EdgepruneError(
            f"--data {data} is text, and {folder} has no tokenizer transformers can load ({first_line(err)}); "
            "save the tokenizer into the model folder (tokenizer.save_pretrained) or give an .npz of input_ids"
        ) from None
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
