"""The floor every door and stage stands on: a loaded model (`LoadedModel`: the module, its example
inputs, what its format can express) and the plumbing that makes one (`from_module`, `load_state`,
`read_state`, `check_allocatable`). It imports no door (ecosystems/) and no stage: the doors build
on it, and `loading.py`, above the doors, dispatches to them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

from edgeprune import modelrun, models
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.pipeline.prune.canonical import canonical


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How the model's own ecosystem prepares an image for it: resize (keeping the aspect) so the
    shorter side is size / crop_pct, centre-crop to size, scale to [0, 1], normalise by mean/std.
    `source` names where these came from, for the report."""

    size: tuple[int, int]  # (H, W) the model takes
    mean: tuple[float, ...] | None  # None: no normalisation beyond [0, 1] (ultralytics)
    std: tuple[float, ...] | None
    source: str
    crop_pct: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TiedSet:
    """Groups the output format gives one width (or one fraction of their sizes) between them: a
    config's `intermediate_size` for every layer's MLP; a set of one is a group cut on its own.
    `means` says what that width is in the format, for the report."""

    roots: tuple[str, ...]
    means: str


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What the output format can express, imposed on the plan: only the groups rooted in one of
    `sets` may be cut, each set's to one width (or one fraction, for groups of different sizes:
    select.py). A decoder language model has several (its MLP width, its query heads, its key/value
    groups); a Hugging Face encoder one. With any set of more than one the search runs at one
    global level (`uniform`), which keeps each set's width one. Under `--depth`, only the residual
    blocks named in `blocks` may be removed (None: any; a config records a layer count, not which)."""

    why: str  # one line for the report
    sets: tuple[TiedSet, ...]
    blocks: tuple[str, ...] | None = None

    @property
    def prunable(self) -> tuple[str, ...]:
        return tuple(root for s in self.sets for root in s.roots)

    @property
    def tied(self) -> bool:
        return any(len(s.roots) > 1 for s in self.sets)

    def allows_block(self, name: str) -> bool:
        return self.blocks is None or name in self.blocks

    def to_dict(self) -> dict[str, Any]:
        return {
            "why": self.why,
            "prunable": list(self.prunable),
            "tied": self.tied,
            "sets": [{"roots": list(s.roots), "means": s.means} for s in self.sets],
            "blocks": None if self.blocks is None else list(self.blocks),
        }


@dataclasses.dataclass
class LoadedModel:
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    arch: str | None  # how to rebuild the architecture: registry name or module:factory
    num_classes: int | None
    source: str
    #: layers swapped for equivalent ones edgeprune can cut (pipeline/prune/canonical.py), one line each
    swapped: tuple[str, ...] = ()
    #: the library the model came from (ecosystems/): how it is written back out, None for a plain module
    ecosystem: str | None = None
    #: JSON the ecosystem keeps to write the pruned model back (its config, training arguments)
    native: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the forward's argument names, parallel to example_inputs (what --data arrays are keyed by)
    input_names: tuple[str, ...] = ()
    #: what the example inputs are, in words, where the door says (token ids, images, audio)
    inputs_about: str | None = None
    #: the model's own image preprocessing, where its ecosystem records one
    preprocess: Preprocess | None = None
    #: what the output format can express (ecosystems/base.py), imposed on the plan
    constraint: Constraint | None = None
    #: a pipeline of its own where one forward is not what the model costs (pipeline/decoder/: a
    #: language model's time per generated token); None: the channel pipeline (compress.py)
    pipeline: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example_inputs[0].shape)


#: an example input may take at most this share of the memory available: the model's activations
#: on it take many times more, and an input that cannot be allocated would fail deep inside torch
INPUT_MEMORY_SHARE = 1 / 8


def check_allocatable(shape: Sequence[int], itemsize: int = 8) -> None:
    """Refuse an input shape whose tensor would not fit in memory (beside the model's activations)."""
    need = math.prod(shape) * itemsize
    available = psutil.virtual_memory().available
    if need > available * INPUT_MEMORY_SHARE:
        text = "x".join(map(str, shape))
        raise EdgepruneError(
            f"input shape {text} needs {need / 2**30:.3g} GiB for the input tensor alone and its activations many "
            f"times more; this machine has {available / 2**30:.3g} GiB available: pass a smaller --input-shape"
        )


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, arch: str) -> None:
    """`model.load_state_dict(state)`, with a mismatch summarised in one line: how many keys are
    missing, unexpected or of another shape, one example of each, and what to try."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(shapes)} of another shape (e.g. {shapes[0]}: file {_dims(state[shapes[0]])}, "
            f"{arch} {_dims(own[shapes[0]])})"
            if shapes
            else "",
        ]
        fix = (
            "check --arch names the architecture it was saved from"
            if missing or unexpected
            else "check --arch and --num-classes (the file's classifier width is read from its last Linear)"
        )
        raise EdgepruneError(
            f"the state dict in {source} does not fit --arch {arch}: keys {', '.join(p for p in parts if p)}; {fix}"
        )
    model.load_state_dict(state)


def _dims(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def from_module(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    source: str = "python",
) -> LoadedModel:
    """Wrap an nn.Module, checking it runs on the example inputs."""
    if example_inputs is None:
        registered = arch if arch is not None and ":" not in arch else None  # a name in edgeprune.models
        if input_shape is None and registered is not None:
            input_shape = models.default_input_shape(registered)
        if input_shape is None:
            raise EdgepruneError("the model's input shape is unknown; pass --input-shape, e.g. 1x3x224x224")
        check_allocatable(input_shape)
        gen = torch.Generator().manual_seed(0)
        # a language model: ids 0/1, as runtime_bench/inputs.py draws them
        tokens = registered is not None and models.takes_tokens(registered)
        example_inputs = (
            torch.randint(0, 2, tuple(input_shape), generator=gen)
            if tokens
            else torch.randn(*input_shape, generator=gen),
        )
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    # Tensors made under torch.inference_mode() cannot be traced or trained: normal copies instead.
    example_inputs = tuple(t.clone() if t.is_inference() else t for t in example_inputs)
    model = _without_inference_tensors(model).cpu().eval()
    try:
        outs = modelrun.run(model, example_inputs)
    except EdgepruneError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here is a shape/model mismatch to report
        shapes = "x".join(str(d) for d in example_inputs[0].shape)
        if isinstance(err, MemoryError) or "allocate" in str(err):
            raise EdgepruneError(
                f"the model's activations on input shape {shapes} do not fit in memory "
                f"({type(err).__name__}); pass a smaller --input-shape"
            ) from None
        raise EdgepruneError(
            f"the model does not run on input shape {shapes} ({type(err).__name__}: {first_line(err)}); "
            "pass the shape it expects with --input-shape"
        ) from None
    if not outs:
        raise EdgepruneError("the model returned no tensor; edgeprune needs a model whose forward returns tensors")
    model, swapped = canonical(model, example_inputs)
    return LoadedModel(model, example_inputs, arch, num_classes, source, tuple(swapped))


def _without_inference_tensors(model: nn.Module) -> nn.Module:
    """`model`, or where it was built or loaded under torch.inference_mode() (its tensors then cannot
    be traced through autograd, nor trained) a copy whose parameters and buffers are normal tensors;
    the caller's model is never changed."""
    if not any(t.is_inference() for t in (*model.parameters(), *model.buffers())):
        return model
    with torch.inference_mode(False):  # deepcopy clones each tensor, outside inference mode: normal ones
        return copy.deepcopy(model)


def read_state(path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict in a file (also under a checkpoint's state_dict / model key), tensors only."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain state dict: read it the trusting way for a clear message
        obj = trusted_load(path)
    return state_dict_of(obj, path)


class MissingPackage(EdgepruneError):
    """A pickle that needs a package not installed here. `package` names it, so that the dispatcher
    above the doors (loading.py) can name the pip extra of the door whose library it is."""

    def __init__(self, path: Path, package: str) -> None:
        super().__init__(
            f"{path} was saved with the {package} package, which is not installed here; install it, "
            "or save the model's state_dict and pass --arch"
        )
        self.path, self.package = path, package


def trusted_load(path: Path) -> Any:
    """torch.load of a model file that is more than tensors. A full module pickle needs
    weights_only=False: it runs the pickled class's code, as torch.load always did; only load model
    files you trust."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:
        raise MissingPackage(path, err.name or "") from None
    except Exception as err:  # noqa: BLE001 - pickle, zip and torch errors all mean "unreadable"
        raise EdgepruneError(
            f"cannot read model file {path}: {type(err).__name__}: {first_line(err)}; save it with torch.save()"
        ) from None


def state_dict_of(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise EdgepruneError(
        f"{path} holds a {type(obj).__name__}, neither an nn.Module nor a "
        "state dict; save the model with torch.save(model)"
    )


def classes_from_state(state: Mapping[str, torch.Tensor]) -> int | None:
    """The classifier width: the output size of the last 2-D weight (Linear) in the state dict."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None
