"""The `Importance` interface: a pruning method scores every unit of every prunable group.

Criteria (L1, BN scale, ThiNet, LASSO) compute scores from a trained model; learned methods train
gates or masks first and then expose the same scores. Higher means more important. A plan keeps the
top-scoring units of each group, so a method never needs to know about budgets or rounding.

Two optional steps around the scoring let a method be faithful to its paper without the pipeline
knowing it: `prepare` changes the model before it is scored and pruned (Network Slimming's
sparsity training; FLOP's factorization, with `prepared_architecture`), `reconstruct` adjusts the
pruned model's remaining weights (ThiNet's and He et al.'s least-squares reconstruction).
`ranking` says whether scores are comparable across groups ("global": one threshold for all units,
so per-layer widths are discovered) or only within a group ("uniform": every group keeps the same
fraction).

Learned methods (Pruning from Scratch, TAS) learn something besides weights in `prepare` (gates,
width distributions); `state` / `load_state` carry it as JSON through the run directory, so a
resumed run does not learn it again. A method that learns depth as well scores blocks itself
(`block_scores`); when those scores are on its unit scores' scale (`blocks_on_unit_scale`), one
global threshold decides channels and blocks together.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.prune import blocks
from edgeprune.pipeline.prune.space import PruningSpace, Scores
from edgeprune.registry import Registry


@dataclasses.dataclass(frozen=True)
class Goal:
    """What the budget search is after, for methods that search toward it themselves (TAS)."""

    cost_fraction: float | None = None  # the budget as a fraction of the unpruned model's cost
    depth: str = "off"  # whether whole blocks may go too ("on", "only") or not ("off")


class Importance(abc.ABC):
    name: ClassVar[str] = ""
    #: the paper the method implements, shown in `compress --help` and reports
    reference: ClassVar[str] = ""
    #: "uniform" (scores comparable within a group only) or "global" (across all groups)
    ranking: ClassVar[str] = "uniform"
    #: whether the method needs --data (training or calibration samples)
    needs_data: ClassVar[bool] = False
    #: whether it learns the pruned structure from random weights (no trained model needed)
    from_scratch: ClassVar[bool] = False
    #: the recovery its paper uses after pruning, when the user names none (and gives --data)
    default_recovery: ClassVar[str] = "finetune"
    #: whether `block_scores` are comparable with the unit scores under "global" ranking
    blocks_on_unit_scale: ClassVar[bool] = False

    def prepare(
        self,
        model: nn.Module,
        space: PruningSpace,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
        goal: Goal | None = None,
    ) -> nn.Module:
        """The model to score and prune (default: `model` itself, unchanged)."""
        return model

    def prepared_architecture(self, model: nn.Module) -> nn.Module:
        """`model` (the original architecture) rebuilt into the architecture `prepare` returns, its
        weights to be replaced by the prepared ones (default: `model` itself). A method whose
        `prepare` changes the architecture (FLOP factorizes Linears) overrides it, so a resumed run
        can load the prepared weights; the pipeline then discovers the pruning space again on the
        prepared model."""
        return model

    def state(self) -> dict[str, Any]:
        """What `prepare` learned besides the model's weights, as JSON (default: nothing)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional: most methods keep no state
        """Restore what `state` returned, when `prepare` is resumed instead of run."""

    def block_scores(self, model: nn.Module, found: Sequence[blocks.Block], data: Any) -> dict[str, float]:
        """Importance of each removable residual block (higher = keep); default: how much bypassing
        it alone changes the outputs on calibration data (blocks.py)."""
        return blocks.block_scores(model, found, data.calibration())

    @abc.abstractmethod
    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        """Score every unit of every group in `space`; `data` is the DataBundle when a method needs it."""

    def reconstruct(  # noqa: B027 - optional: only reconstructing methods override it
        self,
        model: nn.Module,
        pruned: nn.Module,
        space: PruningSpace,
        plan: Any,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
    ) -> None:
        """Adjust `pruned` (made from `model` by `plan`) in place; default: nothing."""


class LearnedImportance(Importance):
    """A method whose `prepare` learns one JSON result (searched widths, masks, statistics) that its
    scores are read from; `state`/`load_state` carry it through the run directory."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}

    def state(self) -> dict[str, Any]:
        return self.result

    def load_state(self, state: dict[str, Any]) -> None:
        self.result = state

    def learned(self) -> dict[str, Any]:
        """The result of `prepare`, which scoring needs."""
        if not self.result:
            raise EdgepruneError(
                f"--method {self.name} scores come from what its prepare step learns: run prepare first"
            )
        return self.result


class History:
    """About `points` snapshots of a learned method's training (every total/points steps and the
    last), kept in its state so the report shows how the learning went."""

    def __init__(self, total: int, points: int = 20) -> None:
        self.total = total
        self.every = max(total // points, 1)
        self.step = 0
        self.rows: list[dict[str, float]] = []

    def tick(self, snapshot: Callable[[], dict[str, float]]) -> None:
        """Count one training step; take `snapshot()` when this step is due one."""
        if self.step % self.every == 0 or self.step == self.total - 1:
            self.rows.append({"step": self.step, **snapshot()})
        self.step += 1


METHODS: Registry[Importance] = Registry("pruning method")
register = METHODS.register
get_method = METHODS.create
method_names = METHODS.names
