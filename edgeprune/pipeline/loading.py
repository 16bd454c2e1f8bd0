"""Loading a user's model into an nn.Module plus example inputs, with one-line errors.

Accepted: a whole module saved with ``torch.save(model)``; a state dict with ``--arch NAME`` (a
registry name) or ``--arch package.module:factory``; an nn.Module through the Python API. TorchScript
archives are refused: a scripted graph cannot be restructured by the DependencyGraph.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from edgeprune import modelrun, models
from edgeprune.errors import EdgepruneError, first_line


@dataclasses.dataclass
class LoadedModel:
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    arch: str | None  # how to rebuild the architecture: registry name or module:factory
    num_classes: int | None
    source: str

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
    return dims


def build_arch(arch: str, num_classes: int | None) -> nn.Module:
    """Instantiate an architecture from a registry name or 'package.module:factory'."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if ":" in arch:
        mod_name, _, fn_name = arch.partition(":")
        try:
            factory: Callable[..., nn.Module] = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError, ValueError, TypeError) as err:  # ValueError: ":f"; TypeError: ".relative:f"
            raise EdgepruneError(f"cannot import --arch {arch!r} ({err}); check the module is importable and names a factory") from None
        accepts = "num_classes" in inspect.signature(factory).parameters or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(factory).parameters.values()
        )
        return factory(**kwargs) if accepts else factory()
    return models.create(arch, **kwargs)


def load_model(
    path: str | Path,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise EdgepruneError(f"model file {path} does not exist; pass the path of a torch.save()d model or state dict")
    if _is_torchscript(path):
        raise EdgepruneError(
            f"{path} is a TorchScript archive, which cannot be pruned structurally; "
            "save the nn.Module itself with torch.save(model) or its state_dict with --arch"
        )
    try:
        # A full module pickle needs weights_only=False: it runs the pickled class's code, as
        # torch.load always did. Only load model files you trust.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - pickle, zip and torch errors all mean "unreadable"
        raise EdgepruneError(f"cannot read model file {path}: {type(err).__name__}: {first_line(err)}; save it with torch.save()") from None
    if isinstance(obj, nn.Module):
        model = obj
    else:
        state = _state_dict_of(obj, path)
        if arch is None:
            raise EdgepruneError(
                f"{path} holds a state dict, not a module; pass --arch NAME ({', '.join(models.available())}) "
                "or --arch package.module:factory"
            )
        num_classes = num_classes or _classes_from_state(state)
        model = build_arch(arch, num_classes)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise EdgepruneError(f"state dict in {path} does not fit --arch {arch}: {first_line(err)}") from None
    return from_module(model, input_shape=input_shape, arch=arch, num_classes=num_classes, source=str(path))


def untrained(arch: str, num_classes: int, input_shape: Sequence[int] | None = None, seed: int = 0) -> LoadedModel:
    """A randomly initialized --arch, for methods that learn the pruned structure from scratch."""
    torch.manual_seed(seed)
    return from_module(build_arch(arch, num_classes), input_shape=input_shape, arch=arch, num_classes=num_classes,
                       source=f"{arch} (random initialization, seed {seed})")


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
        registered = arch is not None and ":" not in arch
        if input_shape is None and registered:
            input_shape = models.default_input_shape(arch)
        if input_shape is None:
            raise EdgepruneError("the model's input shape is unknown; pass --input-shape, e.g. 1x3x224x224")
        gen = torch.Generator().manual_seed(0)
        tokens = registered and models.takes_tokens(arch)  # a language model: ids 0/1, as runtime_bench/inputs.py draws them
        example_inputs = (torch.randint(0, 2, tuple(input_shape), generator=gen) if tokens else torch.randn(*input_shape, generator=gen),)
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    model = model.cpu().eval()
    try:
        outs = modelrun.run(model, example_inputs)
    except EdgepruneError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here is a shape/model mismatch to report
        shapes = "x".join(str(d) for d in example_inputs[0].shape)
        raise EdgepruneError(
            f"the model does not run on input shape {shapes} ({type(err).__name__}: {first_line(err)}); "
            "pass the shape it expects with --input-shape"
        ) from None
    if not outs:
        raise EdgepruneError("the model returned no tensor; edgeprune needs a model whose forward returns tensors")
    return LoadedModel(model, example_inputs, arch, num_classes, source)


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
    raise EdgepruneError(f"{path} holds a {type(obj).__name__}, neither an nn.Module nor a state dict; save the model with torch.save(model)")


def _classes_from_state(state: Mapping[str, torch.Tensor]) -> int | None:
    """The classifier width: the output size of the last 2-D weight (Linear) in the state dict."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None
