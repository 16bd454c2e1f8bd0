"""Loading a user's model into an nn.Module plus example inputs, with one-line errors.

Accepted: a whole module saved with ``torch.save(model)``; a state dict with ``--arch NAME`` (a
registry name) or ``--arch package.module:factory``; an nn.Module through the Python API. TorchScript
archives are refused: a scripted graph cannot be restructured by the DependencyGraph.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

from edgeprune import ecosystems, modelrun, models
from edgeprune.ecosystems.base import Constraint, Preprocess
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.pipeline.prune.canonical import canonical


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


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' (or commas) -> (1, 3, 224, 224)."""
    try:
        dims = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise EdgepruneError(f"cannot read input shape {text!r}; write it as NxCxHxW, e.g. 1x3x224x224")
    check_allocatable(dims)
    return dims


def parse_example_inputs(text: str) -> tuple[torch.Tensor, ...] | None:
    """Example inputs for a model with several inputs or integer inputs, from --input-shape:
    shapes joined by '+', each optionally ':int' (token ids in [0, 2)) or ':intN' (ids in [0, N)),
    e.g. '1x128:int30522+1x128:int2' for BERT's input_ids and attention_mask. None for one float
    shape (the plain case, drawn as before)."""
    parts = text.split("+")
    if len(parts) == 1 and ":" not in text:
        return None
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for part in parts:
        shape_text, _, kind = part.partition(":")
        shape = parse_input_shape(shape_text)
        if not kind:
            inputs.append(torch.randn(*shape, generator=gen))
            continue
        high = kind[3:] if kind.startswith("int") else "x"
        if not high.isdigit() and high != "":
            raise EdgepruneError(
                f"cannot read input {part!r} of --input-shape; write SHAPE, SHAPE:int or SHAPE:intN "
                "(ids in [0, N)), inputs joined by '+', e.g. 1x128:int30522+1x128:int2"
            )
        inputs.append(torch.randint(0, int(high or 2), shape, generator=gen))
    return tuple(inputs)


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


def build_arch(arch: str, num_classes: int | None) -> nn.Module:
    """Instantiate an architecture from a registry name or 'package.module:factory'."""
    door = ecosystems.for_arch(arch)
    if door is not None:
        door.require()
        return door.build(arch, num_classes)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if ":" not in arch:
        return models.create(arch, **kwargs)
    mod_name, _, fn_name = arch.partition(":")
    fix = (
        "--arch must name a function or class that takes no required arguments "
        "and returns an nn.Module, e.g. mypackage.models:resnet"
    )
    try:
        factory: Callable[..., nn.Module] = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError, ValueError, TypeError) as err:  # ValueError: ":f"; TypeError: ".relative:f"
        raise EdgepruneError(
            f"cannot import --arch {arch!r} ({first_line(err)}); check the module is importable and names a factory"
        ) from None
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # not callable, or a builtin without a signature
        raise EdgepruneError(
            f"--arch {arch}: {type(factory).__name__} {fn_name} is not a model factory; {fix}"
        ) from None
    accepts = "num_classes" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        model = factory(**kwargs) if accepts else factory()
    except Exception as err:  # noqa: BLE001 - the user's code: whatever it raises, say where
        raise EdgepruneError(f"--arch {arch} raised {type(err).__name__}: {first_line(err)}; {fix}") from None
    if not isinstance(model, nn.Module):
        raise EdgepruneError(f"--arch {arch} returned a {type(model).__name__}, not an nn.Module; {fix}")
    return model


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


def load_model(
    path: str | Path | None,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
) -> LoadedModel:
    """A model as its user holds it: a module or state dict file, a library's own checkpoint or
    folder (ecosystems/: ultralytics, Hugging Face), or `--arch timm:NAME` / `torchvision:NAME`
    with a state dict file or, for latency alone, none (random weights)."""
    shape = tuple(input_shape) if input_shape is not None else None
    door = ecosystems.for_arch(arch)
    if path is None:
        if door is None:
            raise EdgepruneError(
                "no model given; pass a model file or folder, or --arch timm:NAME / torchvision:NAME for random weights"
            )
        door.require()
        return door.load(None, None, arch, shape, num_classes)
    path = Path(path)
    if path.is_dir():
        door = door or ecosystems.for_path(path)
        if door is None:
            raise EdgepruneError(
                f"{path} is a folder without config.json; pass a Hugging Face save_pretrained() folder "
                "(config.json and its weights) or a torch.save()d model file"
            )
        door.require()
        return door.load(path, None, arch, shape, num_classes)
    if not path.is_file():
        raise EdgepruneError(f"model file {path} does not exist; pass the path of a torch.save()d model or state dict")
    if _is_torchscript(path):
        raise EdgepruneError(
            f"{path} is a TorchScript archive, which cannot be pruned structurally; "
            "save the nn.Module itself with torch.save(model) or its state_dict with --arch"
        )
    if door is not None:  # a state dict of a library's named architecture
        door.require()
        return door.load(path, None, arch, shape, num_classes)
    obj = _read(path)
    door = ecosystems.for_object(obj)
    if door is not None:
        door.require()
        return door.load(path, obj, arch, shape, num_classes)
    if isinstance(obj, nn.Module):
        model = obj
    else:
        state = _state_dict_of(obj, path)
        if arch is None:
            raise EdgepruneError(
                f"{path} holds a state dict, not a module; pass --arch NAME ({', '.join(models.available())}), "
                "--arch timm:NAME, --arch torchvision:NAME or --arch package.module:factory"
            )
        num_classes = num_classes or _classes_from_state(state)
        model = build_arch(arch, num_classes)
        load_state(model, state, str(path), arch)
    return from_module(model, example_inputs, input_shape=shape, arch=arch, num_classes=num_classes, source=str(path))


def read_state(path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict in a file (also under a checkpoint's state_dict / model key), tensors only."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain state dict: read it the trusting way for a clear message
        obj = _read(path)
    return _state_dict_of(obj, path)


def _read(path: Path) -> Any:
    """torch.load of a model file; a pickle that needs a library not installed here names its extra."""
    try:
        # A full module pickle needs weights_only=False: it runs the pickled class's code, as
        # torch.load always did. Only load model files you trust.
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:
        door = ecosystems.for_missing_module(err.name or "")
        if door is not None:
            raise EdgepruneError(
                f"{path} is a {door.name} model and {err.name} is not installed here; "
                f"pip install 'edgeprune[{door.extra}]'"
            ) from None
        raise EdgepruneError(
            f"{path} was saved with the {err.name} package, which is not installed here; install it, "
            "or save the model's state_dict and pass --arch"
        ) from None
    except Exception as err:  # noqa: BLE001 - pickle, zip and torch errors all mean "unreadable"
        raise EdgepruneError(
            f"cannot read model file {path}: {type(err).__name__}: {first_line(err)}; save it with torch.save()"
        ) from None


def untrained(
    arch: str, num_classes: int | None, input_shape: Sequence[int] | None = None, seed: int = 0
) -> LoadedModel:
    """A randomly initialized --arch, for methods that learn the pruned structure from scratch."""
    torch.manual_seed(seed)
    return from_module(
        build_arch(arch, num_classes),
        input_shape=input_shape,
        arch=arch,
        num_classes=num_classes,
        source=f"{arch} (random initialization, seed {seed})",
    )


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


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _state_dict_of(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
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


def _classes_from_state(state: Mapping[str, torch.Tensor]) -> int | None:
    """The classifier width: the output size of the last 2-D weight (Linear) in the state dict."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None
