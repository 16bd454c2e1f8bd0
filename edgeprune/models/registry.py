"""Name -> model factory, so the CLI and tests can build any bundled architecture by name.

The architectures are written in this package rather than imported from torchvision or timm:
those are not installed on the edge build machines, and owning the code lets every module be
shaped for physical pruning (no hidden channel couplings, no hard-coded head sizes).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from edgeprune.errors import EdgepruneError

# A model constructor `(num_classes: int = 10, **kw) -> nn.Module`: `num_classes` sizes the head,
# other keywords are architecture options (width_mult, depth, ...).
Factory = Callable[..., nn.Module]

_FACTORIES: dict[str, Factory] = {}
_INPUT_SHAPES: dict[str, tuple[int, ...]] = {}
_TAKES_TOKENS: set[str] = set()

CIFAR_INPUT: tuple[int, ...] = (1, 3, 32, 32)
IMAGENET_INPUT: tuple[int, ...] = (1, 3, 224, 224)


def register(
    name: str, input_shape: tuple[int, ...] = CIFAR_INPUT, tokens: bool = False
) -> Callable[[Factory], Factory]:
    """Register a factory under `name`; `input_shape` is the example input used for tracing and export,
    `tokens` says it is integer token ids rather than floats (a language model).

    A name may be registered once only, so two modules cannot silently shadow each other.
    """

    def decorator(factory: Factory) -> Factory:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is registered twice")
        _FACTORIES[name] = factory
        _INPUT_SHAPES[name] = tuple(input_shape)
        if tokens:
            _TAKES_TOKENS.add(name)
        return factory

    return decorator


def _lookup(name: str) -> str:
    if name not in _FACTORIES:
        raise EdgepruneError(f"unknown model {name!r}; available models: {', '.join(available())}")
    return name


def create(name: str, num_classes: int = 10, **kw: object) -> nn.Module:
    """Build a freshly initialised model `name` with a `num_classes`-way head."""
    return _FACTORIES[_lookup(name)](num_classes=num_classes, **kw)


def available() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_FACTORIES)


def default_input_shape(name: str) -> tuple[int, ...]:
    """The (batch 1) input shape model `name` was designed for, e.g. (1, 3, 32, 32) for CIFAR nets."""
    return _INPUT_SHAPES[_lookup(name)]


def takes_tokens(name: str) -> bool:
    """Whether model `name` reads integer token ids (its example input is int64, not float)."""
    return _lookup(name) in _TAKES_TOKENS
