"""Loading a user's model into an nn.Module plus example inputs, with one-line errors: the
dispatcher above the doors (ecosystems/), which decides which door takes an input; what a door
builds on is the floor below them (loaded.py).

Accepted: a whole module saved with ``torch.save(model)``; a state dict with ``--arch NAME`` (a
registry name) or ``--arch package.module:factory``; an nn.Module through the Python API. TorchScript
archives are refused: a scripted graph cannot be restructured by the DependencyGraph.
"""

from __future__ import annotations

import importlib
import inspect
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from edgeprune import ecosystems, models
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.pipeline.loaded import (  # the floor the doors stand on; re-exported for loading's callers
    LoadedModel,
    MissingPackage,
    check_allocatable,
    classes_from_state,
    from_module,
    load_state,
    state_dict_of,
    trusted_load,
)


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


def load_model(
    path: str | Path | None,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
) -> LoadedModel:
    """A model as its user holds it: a module or state dict file, a library's own checkpoint or
    folder (ecosystems/: ultralytics, Hugging Face), or `--arch timm:NAME` / `torchvision:NAME`
    with a state dict file or, for latency alone, none (random weights). A pickle that needs a
    library not installed here names the pip extra of the door whose library it is."""
    try:
        return _loaded(path, arch, input_shape, num_classes, example_inputs)
    except MissingPackage as err:
        door = ecosystems.for_missing_module(err.package)
        if door is None:
            raise
        raise EdgepruneError(
            f"{err.path} is a {door.name} model and {err.package} is not installed here; "
            f"pip install 'edgeprune[{door.extra}]'"
        ) from None


def _loaded(
    path: str | Path | None,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
) -> LoadedModel:
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
    obj = trusted_load(path)
    door = ecosystems.for_object(obj)
    if door is not None:
        door.require()
        return door.load(path, obj, arch, shape, num_classes)
    if isinstance(obj, nn.Module):
        model = obj
    else:
        state = state_dict_of(obj, path)
        if arch is None:
            raise EdgepruneError(
                f"{path} holds a state dict, not a module; pass --arch NAME ({', '.join(models.available())}), "
                "--arch timm:NAME, --arch torchvision:NAME or --arch package.module:factory"
            )
        num_classes = num_classes or classes_from_state(state)
        model = build_arch(arch, num_classes)
        load_state(model, state, str(path), arch)
    return from_module(model, example_inputs, input_shape=shape, arch=arch, num_classes=num_classes, source=str(path))


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


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
