"""The `Ecosystem` interface: a model library's files in (front door) and the pruned model back out
in that library's own format (back door).

A user holds what their library saved: an ultralytics checkpoint, a Hugging Face `save_pretrained`
folder, a timm or torchvision state dict. Each library is one file here that registers an
`Ecosystem`: which inputs it claims (cheaply, without importing the library), how it loads them
into a `LoadedModel` (module, example inputs, the model's own preprocessing, what its format can
express), and how it writes the pruned model back (`save`) so the user's next step (`yolo train`,
`from_pretrained`, `edgeprune.load`) works on it. The libraries stay optional: `require` imports
them only when such an input arrives, and names the pip extra when one is missing.
"""

from __future__ import annotations

import abc
import importlib
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.loaded import Constraint, LoadedModel, Preprocess, TiedSet
from edgeprune.registry import Registry

__all__ = ["ECOSYSTEMS", "Constraint", "Ecosystem", "LoadedModel", "Preprocess", "TiedSet", "register"]


class Ecosystem(abc.ABC):
    """One model library's door in and out."""

    name: ClassVar[str] = ""
    #: the pip extra that installs the library: pip install 'edgeprune[EXTRA]'
    extra: ClassVar[str] = ""
    #: the modules that must import for this door
    packages: ClassVar[tuple[str, ...]] = ()
    #: what `save` writes in --out (a file or a folder name), None when the ecosystem has no own format
    output: ClassVar[str | None] = None
    #: which door takes an input two doors claim: the higher (a decoder LM folder is also a Hugging
    #: Face folder; its own door goes first); equal priorities claiming one input is an error
    priority: ClassVar[int] = 0

    def require(self) -> None:
        """Import the library or say, in one line, which extra installs it."""
        for package in self.packages:
            try:
                importlib.import_module(package)
            except ImportError as err:
                raise EdgepruneError(
                    f"this {self.name} model needs the {package} package, which is not installed here "
                    f"({err.name or package}); pip install 'edgeprune[{self.extra}]'"
                ) from None

    @classmethod
    def claims_path(cls, path: Path) -> bool:  # most doors claim by what a file holds, not its name
        """Whether the input at `path` is this ecosystem's, decided without importing the library."""
        return False

    @classmethod
    def claims_arch(cls, arch: str | None) -> bool:
        """Whether --arch names this ecosystem's model (`timm:NAME`)."""
        return arch is not None and arch.startswith(cls.name + ":")

    @classmethod
    def claims_object(cls, obj: Any) -> bool:
        """Whether an object torch.load read from a file is this ecosystem's checkpoint."""
        return False

    @abc.abstractmethod
    def load(
        self,
        path: Path | None,
        obj: Any,
        arch: str | None,
        input_shape: tuple[int, ...] | None,
        num_classes: int | None,
    ) -> LoadedModel:
        """The model ready to prune: float32, eval mode, example inputs, preprocessing, constraint.
        `obj` is what torch.load read from `path` when the door claimed it by content."""

    def build(self, arch: str, num_classes: int | None) -> nn.Module:
        """A fresh model of `arch` (random weights), for `edgeprune.load` to rebuild a pruned one."""
        raise EdgepruneError(
            f"{self.name} models are rebuilt from their own output ({self.output}), not from plan.json"
        )

    def save(self, pruned: nn.Module, loaded: LoadedModel, plan: Any, dest: Path) -> dict[str, Any]:
        """Write the pruned model in the ecosystem's format at `dest` (a file or folder that does not
        exist yet) as `plan` (a `Plan`; a decoder's plan dict, pipeline/decoder/) cut it; returns
        what report.json says of it (format, how to load it)."""
        raise NotImplementedError

    def data_source(self, data: str) -> str:
        """Where the inputs of `--data DATA` are, when DATA names one of the library's own dataset
        files (ultralytics' data.yaml: its training images); DATA itself otherwise."""
        return data

    def metric(self, name: str | None, data: str | None, loaded: LoadedModel) -> Any:
        """The library's own metric (a `Metric`: model, loader -> float, higher is better) for
        `--metric NAME`, or for a dataset file given as `--data` with no --metric; None when it has
        none for them."""
        return None


ECOSYSTEMS: Registry[Ecosystem] = Registry("ecosystem")
register = ECOSYSTEMS.register


def ecosystem(name: str | None) -> Ecosystem | None:
    return ECOSYSTEMS.create(name) if name else None


def for_arch(arch: str | None) -> Ecosystem | None:
    """The door --arch names (`timm:resnet50`), if any."""
    return next((ECOSYSTEMS.create(n) for n in ECOSYSTEMS.names() if ECOSYSTEMS.get(n).claims_arch(arch)), None)


def for_path(path: Path) -> Ecosystem | None:
    """The door that claims a path by its layout (a Hugging Face folder), if any: of several, the
    one of highest `priority`; two of the same priority is an error naming both."""
    claims = sorted(
        (ECOSYSTEMS.get(n) for n in ECOSYSTEMS.names() if ECOSYSTEMS.get(n).claims_path(path)),
        key=lambda door: -door.priority,
    )
    if len(claims) > 1 and claims[0].priority == claims[1].priority:
        raise EdgepruneError(
            f"{path} is claimed by two doors of equal priority, {claims[0].name} and {claims[1].name}; "
            "give one a higher Ecosystem.priority"
        )
    return ECOSYSTEMS.create(claims[0].name) if claims else None


def for_object(obj: Any) -> Ecosystem | None:
    """The door that claims what torch.load read (an ultralytics checkpoint dict), if any."""
    return next((ECOSYSTEMS.create(n) for n in ECOSYSTEMS.names() if ECOSYSTEMS.get(n).claims_object(obj)), None)


def for_missing_module(module: str) -> Ecosystem | None:
    """The door whose library a pickled file needs when torch.load cannot import `module`."""
    top = module.split(".")[0]
    return next((ECOSYSTEMS.create(n) for n in ECOSYSTEMS.names() if top in ECOSYSTEMS.get(n).packages), None)
