"""Running a model on example inputs: the one place that knows how inputs are passed and outputs
flattened, shared by pruning (probes, checks), export (verification) and loading."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import nn

from edgeprune.errors import EdgepruneError


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm statistics, no dropout), then every submodule's own mode back, so running
    a model mid-training does not silently end training mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def trainable(model: nn.Module) -> Iterator[None]:
    """Every parameter requires grad while open, each flag restored afterwards. Checkpoints are often
    saved frozen (ultralytics strips requires_grad for inference, as deployment exports do), and
    both the dependency graph (traced through autograd) and training need gradients."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


F = TypeVar("F", bound=Callable[..., Any])


def with_autograd(fn: F) -> F:
    """Run `fn` with autograd on, even when called under torch.inference_mode() or torch.no_grad():
    pruning traces the model through autograd and recovery trains it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)

    return cast(F, wrapper)


@torch.no_grad()
def run(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Forward in eval mode without autograd; outputs flattened to a list of tensors."""
    return flatten_outputs(run_raw(model, example_inputs))


@torch.no_grad()
def run_raw(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> Any:
    """Forward in eval mode without autograd; the outputs as the model returns them."""
    with eval_mode(model):
        return model(*example_inputs)


def call(model: nn.Module, x: torch.Tensor | Sequence[torch.Tensor]) -> Any:
    """`model` on one batch of inputs: a tensor, or a tuple of them in the forward's argument order."""
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


def arguments(x: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """One batch of inputs (a tensor, or a tuple of them) as the tuple of the forward's arguments."""
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def batch_len(x: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """The number of samples in a batch of inputs (one tensor or a tuple of them)."""
    return len(x[0]) if isinstance(x, (tuple, list)) else len(x)


def named_outputs(out: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """`flatten_outputs` with each tensor's path: a dict's or ModelOutput's key ("logits"), a
    tuple's position ("1.0"); what distillation and fidelity use to tell class logits from the rest."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "0", out)]
    if isinstance(out, (list, tuple)):
        return [
            pair for i, item in enumerate(out) for pair in named_outputs(item, f"{prefix}.{i}" if prefix else str(i))
        ]
    if isinstance(out, dict):
        return [pair for k, item in out.items() for pair in named_outputs(item, f"{prefix}.{k}" if prefix else str(k))]
    flatten_outputs(out)  # raises the one-line error for what is not a tensor
    return []


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """Output tensors in the order the ONNX exporters emit them (nested tuples/lists/dicts flattened)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in flatten_outputs(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in flatten_outputs(item)]
    hint = "; build it with use_cache=False (its config's use_cache)" if "Cache" in type(out).__name__ else ""
    raise EdgepruneError(
        f"the model returns a {type(out).__name__}; edgeprune needs tensors (or tuples/lists/dicts of them){hint}"
    )


def first_output(out: Any) -> torch.Tensor:
    """The first output tensor: a classifier's logits, also inside a structured output (a Hugging
    Face ModelOutput's `logits`), where top-1 and labelled training read them."""
    return flatten_outputs(out)[0]


def output_shapes(outputs: Sequence[torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in outputs]


#: hooks libraries attach as local functions, which pickle cannot save: torch's weight_norm renames
#: its old-style keys on loading; transformers 5 captures outputs (hidden states, attentions) with
#: forward hooks it installs at the first forward and installs again when its flag says none are
UNPICKLABLE_HOOKS = ("weight_norm.<locals>.", "install_output_capuring_hook.<locals>.")


def picklable(model: nn.Module) -> nn.Module:
    """`model`, or where `torch.save(model)` would fail on it a copy that computes the same
    function and saves: parametrized weights (weight_norm: Wav2Vec2's positional convolution)
    folded into plain ones (torch pickles a parametrized module only through its state dict), and
    the library hooks of `UNPICKLABLE_HOOKS` left out (transformers re-installs its own)."""
    from torch.nn.utils import parametrize

    def hooks(module: nn.Module) -> list[tuple[dict[Any, Any], Any]]:
        return [
            (table, key)
            for table in (module._forward_hooks, module._load_state_dict_pre_hooks)
            for key, hook in table.items()
            if getattr(getattr(hook, "hook", hook), "__qualname__", "").startswith(UNPICKLABLE_HOOKS)
        ]

    if not any(parametrize.is_parametrized(m) or hooks(m) for m in model.modules()):
        return model
    plain = copy.deepcopy(model)
    for module in list(plain.modules()):
        if parametrize.is_parametrized(module):
            # folded by hand: torch's remove_parametrizations deletes the property from the module's
            # parametrized class, which the copy shares with `model`, and would break the original
            names = list(cast(nn.ModuleDict, module.parametrizations))
            values = {name: getattr(module, name).detach().clone() for name in names}
            module.__class__ = module.__class__.__bases__[0]
            del module._modules["parametrizations"]
            for name, value in values.items():
                module.register_parameter(name, nn.Parameter(value))
        for table, key in hooks(module):
            del table[key]
        if getattr(module, "_output_capturing_hooks_installed", False):
            module._output_capturing_hooks_installed = False  # type: ignore[assignment]
    return plain
