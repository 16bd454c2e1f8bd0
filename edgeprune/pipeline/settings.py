"""`Settings`: everything a compression run is told, checked when it is built.

The CLI builds one from its options and the Python API from keyword arguments; both get the same
checks here, before a model is loaded or a file is written: every number in its range
(`BOUNDS`, which the CLI also uses to parse and to print the ranges in --help), the budget
readable, and the combinations that cannot work (a method or recovery that trains, without
--data) refused with one line naming the option and the fix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgeprune import bounds
from edgeprune.bounds import Bound
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.budget import parse_budget
from edgeprune.pipeline.search.objective import LatencyObjective

#: a field's CLI option and its allowed range. The tolerance must leave room above the latency
#: objective's drift allowance: a candidate counts only when decided that far under the budget
BOUNDS: dict[str, tuple[str, Bound]] = {
    "threads": ("--threads", bounds.THREADS),
    "round_to": ("--round-to", bounds.count(1024)),
    "tol": ("--tol", Bound(float, LatencyObjective.drift, 1, lo_open=True, hi_open=True)),
    "warmup": ("--warmup", bounds.WARMUP),
    "repeats": ("--repeats", bounds.REPEATS),
    "max_candidates": ("--max-candidates", bounds.count(100)),
    "epochs": ("--epochs", bounds.count()),
    "steps": ("--steps", bounds.count()),
    "lr": ("--lr", bounds.POSITIVE),
    "batch_size": ("--batch-size", bounds.count(65536)),
    "temperature": ("--temperature", bounds.POSITIVE),
    "alpha": ("--alpha", bounds.FRACTION),
    "pgd_steps": ("--pgd-steps", bounds.count()),
    "analysis_time_s": ("--analysis-time", bounds.POSITIVE),
    "max_accuracy_drop": ("--max-accuracy-drop", bounds.FRACTION),
    "context": ("--context", bounds.count(1 << 20)),
    "prompt_tokens": ("--prompt-tokens", bounds.count(1 << 20)),
}
RECOVERIES = ("finetune", "distill", "scratch", "adversarial", "none")
DEPTHS = ("auto", "off", "on", "only")
PRECISIONS = ("fp32", "int8", "auto")


@dataclasses.dataclass
class Settings:
    budget: str
    runtime: str = "ort-cpu"
    threads: int = 1
    method: str = "l1"
    round_to: int = 16
    tol: float = 0.05  # stop at a candidate decided 2% (the drift allowance) to 5% under the budget
    warmup: int = 10
    repeats: int = 50
    max_candidates: int = 8
    unprunable: tuple[str, ...] = ()
    # accuracy and recovery (with --data)
    data: str | None = None
    recover: str | None = (
        None  # finetune | distill | scratch | adversarial | none; None: the method's default with data
    )
    epochs: int | None = None
    steps: int | None = None
    lr: float | None = None  # default: the recovery method's own
    batch_size: int = 128
    temperature: float = 4.0
    alpha: float = 0.9
    pgd_steps: int = 7  # the attack of adversarial fine-tuning (eps 8/255, step 2/255)
    metric: str | None = None  # module:function for models that are not classifiers
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. slimming's lambda
    #: "on": remove residual blocks as well as channels; "only": blocks alone; "auto": channels, and
    #: blocks too where channels alone cannot reach the budget (compress.Pipeline._search_with)
    depth: str = "auto"
    search: str = "guided"  # a registered Search (search/__init__.py): guided (the default), uniform, layerwise
    analysis_time_s: float = 60.0  # discovering the pruning space; what is not analysed by then is left whole
    precision: str | None = None  # fp32 | int8 | auto (pipeline/precision.py); None: the default, `precision_mode`
    max_accuracy_drop: float | None = (
        None  # refuse a plan whose accuracy on the runtime falls more than this below the baseline
    )
    #: a language model's budget is per generated token with a cache of this many tokens (None: the
    #: decoder pipeline's default, pipeline/decoder/run.py), and its prefill is timed on a prompt of
    #: `prompt_tokens`
    context: int | None = None
    prompt_tokens: int = 128

    def __post_init__(self) -> None:
        """Refuse what cannot run, before anything is loaded or written (one line, exit 2 in the CLI)."""
        from edgeprune.pipeline.methods import METHODS
        from edgeprune.pipeline.search import SEARCHES

        parse_budget(self.budget)
        for name, (option, bound) in BOUNDS.items():
            bound.check(option, getattr(self, name))
        self.unprunable = tuple(self.unprunable)
        for option, value, allowed in (
            ("--recover", self.recover, RECOVERIES),
            ("--search", self.search, tuple(SEARCHES.names())),
            ("--depth", self.depth, DEPTHS),
            ("--precision", self.precision, PRECISIONS),
        ):
            if value is not None and value not in allowed:
                raise EdgepruneError(f"{option} {value!r}: use one of {', '.join(allowed)}")
        method = METHODS.get(self.method)
        if method.needs_data and self.data is None:
            raise EdgepruneError(f"--method {self.method} needs training data; pass --data or use --method l1")
        if self.recovery != "none" and self.data is None:
            raise EdgepruneError(f"--recover {self.recovery} needs training data; pass --data or --recover none")
        refused = SEARCHES.get(self.search).refuse(self)
        if refused:
            raise EdgepruneError(refused)
        if self.data is None and self.metric is not None:
            raise EdgepruneError("--metric needs --data to evaluate on")
        if self.precision in ("int8", "auto") and self.data is None:
            raise EdgepruneError(
                f"--precision {self.precision} needs --data: int8 is calibrated on training images and checked on "
                "validation images, never on random inputs; pass --data or use --precision fp32"
            )
        if self.max_accuracy_drop is not None and (
            self.data is None or (self.metric is not None and not self.metric.startswith("ultralytics"))
        ):
            raise EdgepruneError(
                "--max-accuracy-drop needs --data and top-1, fidelity or ultralytics' mAP (no --metric "
                "module:function): it compares the metric measured on the runtime with the baseline's, and a "
                "function of yours may be better when lower"
            )

    @property
    def recovery(self) -> str:
        """The recovery that runs with labelled data: --recover, else the method's own with --data, else none."""
        from edgeprune.pipeline.methods import METHODS

        if self.recover is not None:
            return self.recover
        return METHODS.get(self.method).default_recovery if self.data is not None else "none"

    def recovery_for(self, labelled: bool) -> str:
        """The recovery that runs on this data: without labels, distillation from the unpruned model
        (the default) or none; a recovery or method that needs labels is refused in one line."""
        from edgeprune.pipeline.methods import METHODS

        if labelled:
            return self.recovery
        if METHODS.get(self.method).needs_data:
            raise EdgepruneError(
                f"--method {self.method} trains on labels and --data {self.data} has none; "
                "use --method l1 (label-free distillation then recovers the model), or give labelled data"
            )
        if self.recover not in (None, "distill", "none"):
            raise EdgepruneError(
                f"--recover {self.recover} trains on labels and --data {self.data} has none; use --recover distill "
                "(the default without labels: it learns from the unpruned model's outputs) or give labelled data"
            )
        return self.recover or "distill"

    @property
    def precision_mode(self) -> str:
        """The precision policy that runs: --precision, else `auto` with --data (int8 searched beside
        float32: on the trained CIFAR ResNets it met 50 % budgets with 3-5 points more top-1 than
        float32 pruning, and at 25 % chose float32 pruning where int8 could not reach the budget,
        bench/README.md "precision"), else fp32: int8 is
        never calibrated on random inputs."""
        return self.precision or ("auto" if self.data is not None else "fp32")

    @property
    def precision_why(self) -> str:
        """Why the policy is float32 when it is (for the report)."""
        return "--precision fp32" if self.precision == "fp32" else "no --data to calibrate int8 on: float32"

    def recovery_options(self, name: str) -> dict[str, Any]:
        """The options of recovery `name` that Settings carries (distillation's, PGD's)."""
        options: dict[str, dict[str, Any]] = {
            "distill": {"temperature": self.temperature, "alpha": self.alpha},
            "adversarial": {"pgd_steps": self.pgd_steps},
        }
        return options.get(name, {})
