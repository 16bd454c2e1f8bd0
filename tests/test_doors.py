"""The doors' floor (ecosystems/): a door is one file (found by the package, its extra and its
library's typing declared where the project declares them, checked here), claims are settled by
priority, and a missing library is one line naming its extra."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import tomllib
import torch

from edgeprune.ecosystems import base as eco_base
from edgeprune.ecosystems.causal_lm import CausalLmEcosystem
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.loaded import Constraint, LoadedModel, TiedSet, from_module

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_every_door_file_is_registered_with_its_extra_and_typing_declared() -> None:
    doors = [eco_base.ECOSYSTEMS.get(n) for n in eco_base.ECOSYSTEMS.names()]
    files = {p.stem for p in Path(eco_base.__file__).parent.glob("*.py") if not p.stem.startswith("_")} - {"base"}
    assert {d.__module__.rsplit(".", 1)[1] for d in doors} == files  # no door file left unimported
    extras = PYPROJECT["project"]["optional-dependencies"]
    untyped = {m for o in PYPROJECT["tool"]["mypy"]["overrides"] for m in o["module"]}
    for door in doors:
        assert door.extra in extras, f"{door.name}: pip extra {door.extra!r} is not in pyproject.toml"
        for package in door.packages:
            assert package in untyped, f"{door.name}: {package} has no mypy override in pyproject.toml"


class _Door(eco_base.Ecosystem):
    name = ""
    extra = "hf"
    priority: ClassVar[int] = 0

    @classmethod
    def claims_path(cls, path: Path) -> bool:
        return (path / "config.json").is_file()

    def load(self, *args: Any) -> Any:
        raise NotImplementedError


@pytest.fixture
def doors() -> Iterator[list[type[eco_base.Ecosystem]]]:
    """Test doors registered for one test, removed from the registry after it."""
    made: list[type[eco_base.Ecosystem]] = []
    yield made
    for door in made:
        eco_base.ECOSYSTEMS._classes.pop(door.name, None)


def test_a_decoder_folder_goes_to_the_decoder_door_and_equal_claims_are_an_error(
    tmp_path: Path, doors: list[type[eco_base.Ecosystem]]
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    assert isinstance(eco_base.for_path(tmp_path), CausalLmEcosystem)  # the Hugging Face door claims it too, lower
    above = CausalLmEcosystem.priority + 1
    for name in ("zz_first", "zz_second"):
        doors.append(eco_base.register(type(name, (_Door,), {"name": name, "priority": above})))
    with pytest.raises(EdgepruneError, match="two doors of equal priority, zz_first and zz_second"):
        eco_base.for_path(tmp_path)
    eco_base.ECOSYSTEMS._classes.pop("zz_second")
    doors.append(eco_base.register(type("zz_third", (_Door,), {"name": "zz_third", "priority": 99})))
    assert type(eco_base.for_path(tmp_path)).__name__ == "zz_third"  # the highest priority wins


def test_a_door_whose_library_is_missing_names_its_extra(doors: list[type[eco_base.Ecosystem]]) -> None:
    door_class = type("zz_absent", (_Door,), {"name": "zz_absent", "packages": ("edgeprune_no_such_library",)})
    doors.append(eco_base.register(door_class))
    with pytest.raises(EdgepruneError) as err:
        eco_base.ECOSYSTEMS.create("zz_absent").require()
    assert "pip install 'edgeprune[hf]'" in str(err.value) and "\n" not in str(err.value)
    assert type(eco_base.for_missing_module("edgeprune_no_such_library.sub")).__name__ == "zz_absent"


class _TwoMlps(torch.nn.Module):
    """Two residual MLPs of width 64 and a head of width 48: what a door may tie (the MLPs, one
    width, as a config's intermediate_size) and cut alone (the head)."""

    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)
        self.b1, self.b2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)
        self.c1, self.c2 = torch.nn.Linear(32, 48), torch.nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.a2(torch.relu(self.a1(x)))
        x = x + self.b2(torch.relu(self.b1(x)))
        return self.c2(torch.relu(self.c1(x)))


class _FileDoor(eco_base.Ecosystem):
    """A door of one file's worth: claims a folder holding door.json, loads `_TwoMlps`, constrains
    the plan to two tied sets and writes the pruned model back as fake_model.pt."""

    name = "zz_file_door"
    extra = "hf"
    output = "fake_model.pt"
    priority: ClassVar[int] = 50

    @classmethod
    def claims_path(cls, path: Path) -> bool:
        return (path / "door.json").is_file()

    def load(self, path: Path | None, obj: Any, arch: Any, input_shape: Any, num_classes: Any) -> LoadedModel:
        torch.manual_seed(0)
        loaded = from_module(_TwoMlps(), torch.randn(1, 32), source=str(path))
        sets = (TiedSet(("a1", "b1"), "mlp_width"), TiedSet(("c1",), "head_width"))
        return dataclasses.replace(
            loaded, ecosystem=self.name, constraint=Constraint("a format of two widths", sets, blocks=())
        )

    def save(self, pruned: torch.nn.Module, loaded: LoadedModel, plan: Any, dest: Path) -> dict[str, Any]:
        torch.save(pruned, dest)
        return {"format": "a whole module", "load": "torch.load('fake_model.pt', weights_only=False)"}


def test_a_door_added_in_one_file_is_claimed_constrained_and_saved(
    tmp_path: Path, doors: list[type[eco_base.Ecosystem]]
) -> None:
    from edgeprune.cli import main

    doors.append(eco_base.register(_FileDoor))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "door.json").write_text("{}")
    out = tmp_path / "out"
    rc = main([str(folder), "--budget", "6kparams", "--warmup", "1", "--repeats", "3", "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["ecosystem"] == "zz_file_door" and len(rep["model"]["constraint"]["sets"]) == 2
    pruned = torch.load(out / "fake_model.pt", weights_only=False)
    assert pruned.a1.out_features == pruned.b1.out_features < 64  # one width for the tied set
    assert pruned.a2.out_features == pruned.b2.out_features == 32  # nothing outside the sets is cut
    assert rep["final"]["params"] <= 6000 and rep["native"]["path"] == "fake_model.pt"
