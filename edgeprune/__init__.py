"""edgeprune: physically smaller models that meet a latency budget measured on the target runtime.

Python API (what the `compress` CLI calls):

    pruned = edgeprune.prune(model, example_inputs, ratio=0.5, method="l1")
    result = edgeprune.compress(model, budget="20ms", example_inputs=x, runtime="ort-cpu", out_dir="out")
    result.final_ms, result.speedup, result.met, result.report   # the figures of report.json
    model = edgeprune.load("out")   # the pruned model of a finished run, rebuilt from plan.json + state_dict.pt
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

# torch is imported where it is used, so `import edgeprune` stays free of it: the measuring agent
# (`compress agent`, runtime_bench/agent.py) runs on an edge host that has ONNX Runtime alone.
if TYPE_CHECKING:
    import torch
    from torch import nn

__version__ = "0.1.0"

_F = TypeVar("_F", bound=Callable[..., Any])


def with_autograd(fn: _F) -> _F:
    """`modelrun.with_autograd` (autograd on, even under torch.inference_mode()), imported when `fn` runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from edgeprune.modelrun import with_autograd as autograd

        return autograd(fn)(*args, **kwargs)

    return cast(_F, wrapper)


@with_autograd
def prune(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    ratio: float = 0.5,
    method: str = "l1",
    round_to: int = 16,
    unprunable: Sequence[str] = (),
    time_limit_s: float = 60.0,
) -> nn.Module:
    """A physically pruned copy of `model`: every prunable group keeps about (1 - ratio) of its units.

    No budget and no measurement: the global level is `ratio`. Groups that cannot be pruned safely,
    or are not analysed within `time_limit_s` seconds, are left whole (`edgeprune.pipeline.prune.
    oneshot.prune_to_ratio` returns the space too, with the reason for each).
    """
    from edgeprune.pipeline.loading import from_module
    from edgeprune.pipeline.oneshot import prune_to_ratio

    return prune_to_ratio(from_module(model, example_inputs), ratio, method, round_to, unprunable, time_limit_s).model


@with_autograd
def compress(
    model: nn.Module,
    budget: str,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    runtime: str = "ort-cpu",
    out_dir: str | Path = "out",
    arch: str | None = None,
    progress: Any = None,
    **settings: Any,
) -> Any:
    """Run the whole pipeline on an nn.Module; returns a `CompressResult` (report figures as attributes).

    `settings` are those of `edgeprune.pipeline.compress.Settings` (threads, method, round_to, tol, ...).
    """
    from edgeprune.pipeline.compress import Settings
    from edgeprune.pipeline.compress import compress as run
    from edgeprune.pipeline.loading import from_module

    loaded = from_module(model, example_inputs, arch=arch)
    return run(loaded, Settings(budget=budget, runtime=runtime, **settings), out_dir, progress or (lambda line: None))


@with_autograd
def load_pruned(
    arch: str, plan_path: str | Path, state_dict_path: str | Path, num_classes: int | None = None
) -> nn.Module:
    """Rebuild a pruned model from the original architecture, its plan.json and state_dict.pt.

    Unlike the whole-module pickle (model.pt), this survives `weights_only` loading and code changes.
    """
    import torch

    from edgeprune.errors import EdgepruneError, first_line
    from edgeprune.pipeline.loading import build_arch, from_module, load_state
    from edgeprune.pipeline.prune.apply import apply
    from edgeprune.pipeline.prune.plan import Plan

    plan = Plan.load(plan_path)
    num_classes = num_classes or plan.meta.get("num_classes")
    shape = plan.meta.get("input_shape")
    loaded = from_module(build_arch(arch, num_classes), input_shape=shape, arch=arch)
    model = apply(loaded.model, plan, loaded.example_inputs)
    try:
        state = torch.load(state_dict_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise EdgepruneError(
            f"cannot read {state_dict_path}: {first_line(err)}; pass the state_dict.pt of the same run as the plan"
        ) from None
    load_state(model, state, str(state_dict_path), f"{arch} pruned by {plan_path}")
    return model


@with_autograd
def load(out_dir: str | Path) -> nn.Module:
    """The pruned model of a finished run in `out_dir`, rebuilt from the architecture its plan.json
    names (a registry name, `timm:NAME`, `torchvision:NAME`, `module:factory`) and its
    state_dict.pt; a run whose model had no such name (a torch.save()d module) is read from its
    model.pt pickle instead. (Ultralytics and Hugging Face runs also write their own format:
    report.json's `native` says where.)"""
    import torch

    from edgeprune.errors import EdgepruneError
    from edgeprune.pipeline.prune.plan import Plan

    out = Path(out_dir)
    plan_path = out / "plan.json"
    if not plan_path.is_file():
        raise EdgepruneError(f"{out} holds no plan.json; pass the --out folder of a finished compress run")
    arch = Plan.load(plan_path).meta.get("arch")
    if arch:
        return load_pruned(arch, plan_path, out / "state_dict.pt")
    return torch.load(out / "model.pt", map_location="cpu", weights_only=False)
