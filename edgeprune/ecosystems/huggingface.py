"""Hugging Face `save_pretrained()` folders in, a `save_pretrained()` folder out.

In: a folder holding config.json and its weights (model.safetensors). The class its config names
(`config.architectures[0]`) is loaded with eager attention in float32 and run on example inputs of
its kind (_hf_inputs.py: token ids, images or audio, chosen by what its forward takes first).

Out: the pruned model as a folder `from_pretrained` loads without edgeprune. transformers 5 keeps one
MLP width per config (`intermediate_size`; DistilBERT's `hidden_dim`) and derives the head size from
hidden_size / num_attention_heads, so a config can express only the MLP width cut, and only the same
width in every layer: the door constrains the plan to the layers' MLP groups, tied to one width.
Configs that state the MLP as a ratio of each stage's hidden size (`mlp_ratio`: Swin, MobileViT, whose
stages widen) tie the groups to one fraction instead, and the folder records the new ratio.
What a config can also record is how many layers there are (`num_hidden_layers`, or a Swin's
`depths` per stage): under `--depth` the search may remove whole layers of the model's layer list
(of a stage, its last block only), and the folder holds the layers left, renumbered (the convention
of depth-pruned checkpoints such as Minitron's).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.ecosystems._hf_inputs import example_inputs
from edgeprune.ecosystems._transformers import architecture_of, copy_kept, load_pretrained, read_config
from edgeprune.ecosystems.base import Constraint, Ecosystem, TiedSet, register
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.decoder.cut import drop_layers
from edgeprune.pipeline.loaded import LoadedModel, from_module
from edgeprune.pipeline.prune import blocks as blocks_mod

if TYPE_CHECKING:
    from edgeprune.pipeline.prune.plan import Plan

#: config attributes that hold the one MLP width of every layer, in the order they are looked for
WIDTH_ATTRS = ("intermediate_size", "hidden_dim", "ffn_dim", "d_ff")
#: config attributes that hold the MLP width as a ratio of each layer's hidden size (int(ratio * dim))
RATIO_ATTRS = ("mlp_ratio",)


@register
class HuggingFaceEcosystem(Ecosystem):
    name = "huggingface"
    extra = "hf"
    packages = ("transformers",)
    output = "hf_model"

    @classmethod
    def claims_path(cls, path: Path) -> bool:
        return path.is_dir() and (path / "config.json").is_file()

    def load(
        self,
        path: Path | None,
        obj: Any,
        arch: str | None,
        input_shape: tuple[int, ...] | None,
        num_classes: int | None,
    ) -> LoadedModel:
        import transformers

        if path is None or not self.claims_path(path):
            raise EdgepruneError(
                "a Hugging Face model is read from its save_pretrained() folder "
                "(config.json and its weights); pass that folder as MODEL"
            )
        config = read_config(path)
        architecture = architecture_of(config, path)
        width_attr = _width_attr(config, architecture)
        ratio = width_attr in RATIO_ATTRS
        model = load_pretrained(getattr(transformers, architecture), path, architecture)
        model_config: Any = model.config  # transformers' PretrainedConfig (untyped here)
        if getattr(model_config, "use_cache", None):  # a cache object is not a tensor: outputs stay plain tensors
            model_config.use_cache = False
        if num_classes is not None and getattr(config, "num_labels", num_classes) != num_classes:
            raise EdgepruneError(
                f"--num-classes {num_classes} but {path / 'config.json'} has num_labels {config.num_labels}; "
                "drop --num-classes: the folder's config decides"
            )
        given = example_inputs(model, config, path, input_shape, architecture)
        # arch None: plan.json names no architecture to rebuild, so edgeprune.load(out) reads model.pt (hf_model is the
        # library's own way back); the class is in the report (native, and model.source's config.json)
        classes = config.num_labels if architecture.endswith("Classification") else None
        loaded = from_module(model, example_inputs=given.tensors, arch=None, num_classes=classes, source=str(path))
        pairs = _mlp_shapes(loaded.model, config, width_attr)
        mlps = mlp_roots(loaded.model, loaded.example_inputs, pairs)
        roots = tuple(name for mlp in mlps for name in mlp)
        depths = getattr(config, "depths", None)
        layers = sum(depths) if ratio and isinstance(depths, list) else getattr(config, "num_hidden_layers", None)
        if not mlps or (isinstance(layers, int) and len(mlps) != layers):
            found = f"found {len(mlps)}" + (f" for its {layers} layers" if isinstance(layers, int) else "")
            shapes = " or ".join(f"{h}->{w}" for h, w in sorted(pairs)[:3])
            raise EdgepruneError(
                f"{architecture}: edgeprune cannot find each layer's MLP (a Linear {shapes} followed by one back; "
                f"{found}), the only width its config can record after pruning; export it to ONNX or torch.save() "
                "the module to prune it without the Hugging Face output"
            )
        why = (
            f"{type(config).__name__} has one {width_attr} for every layer, and transformers 5 derives the head size "
            "from hidden_size / num_attention_heads: of the widths only the MLP's is cut, "
            + ("one fraction of each stage's hidden size for all layers" if ratio else "one for all layers")
        )
        stacks = _layer_stacks(loaded.model, config, roots)
        if stacks and stacks[0]["stage"] is None:
            why += "; under --depth, whole layers too (num_hidden_layers)"
        elif stacks:
            why += "; under --depth, the last block of a stage too (depths: the others keep their place)"
        blocks = tuple(block for stack in stacks for block in stack["removable"])
        native = {
            "folder": str(path.resolve()),
            "architecture": architecture,
            "config_class": type(config).__name__,
            "config": config.to_dict(),
            "width_attr": width_attr,
            "mlp_roots": list(roots),
            "stacks": [{"list": stack["list"], "stage": stack["stage"]} for stack in stacks],
        }
        return dataclasses.replace(
            loaded,
            ecosystem=self.name,
            native=native,
            input_names=given.names,
            inputs_about=given.what,
            preprocess=given.preprocess,
            constraint=Constraint(why=why, sets=(TiedSet(roots, width_attr),), blocks=blocks),
        )

    def save(self, pruned: nn.Module, loaded: LoadedModel, plan: Plan, dest: Path) -> dict[str, Any]:
        import transformers

        native = loaded.native
        attr = native["width_attr"]
        state = pruned.state_dict()
        config = getattr(transformers, native["config_class"]).from_dict(native["config"])
        changes: dict[str, Any] = {}
        removed: list[str] = []
        for stack in native["stacks"]:
            layers, stage = stack["list"], stack["stage"]
            gone = _removed_layers(pruned, layers)
            if not gone:
                continue
            removed += [f"{layers}.{i}" for i in gone]
            if stage is None:
                state = _renumbered(state, layers, gone, config.num_hidden_layers)
                # the key config.json holds (DistilBERT's n_layers answers to num_hidden_layers)
                key = getattr(config, "attribute_map", {}).get("num_hidden_layers", "num_hidden_layers")
                changes[key] = [config.num_hidden_layers, config.num_hidden_layers - len(gone)]
                drop_layers(config, gone)
            else:
                state = _renumbered(state, layers, gone, config.depths[stage])
                depths = list(config.depths)
                depths[stage] -= len(gone)
                changes.setdefault("depths", [list(config.depths), None])[1] = depths
                config.depths = depths
        roots = [r for r in native["mlp_roots"] if not blocks_mod.inside(r, removed)]
        widths = {root: _out_features(pruned, root) for root in roots}
        if (
            len(set(widths.values())) > 1 and attr not in RATIO_ATTRS
        ):  # a layer's MLP left whole (--unprunable, or its group could not be traced)
            shown = ", ".join(f"{r} {w}" for r, w in widths.items())
            raise EdgepruneError(
                f"the pruned MLP layers kept different widths ({shown}), which one {attr} cannot record: "
                "some were left whole (report.json's left_whole says why); do not name them in --unprunable, "
                "or export model.onnx / model.pt instead of the Hugging Face folder"
            )
        original = getattr(config, attr)
        width: Any = (
            _ratio_of(pruned, roots, attr, original) if attr in RATIO_ATTRS else next(iter(widths.values()), original)
        )
        if width != original:
            changes[attr] = [original, width]
        setattr(config, attr, width)
        own_config = getattr(pruned, "config", None)
        if own_config is not None:  # model.pt's config says the width it has (its layer list keeps its length)
            setattr(own_config, attr, width)
        model = getattr(transformers, native["architecture"])(config)
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
        if missing or unexpected or shapes:
            raise RuntimeError(
                f"internal error: the pruned {native['architecture']} does not fit a fresh one built with "
                f"{changes}: {len(missing)} missing (e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. "
                f"{unexpected[:1]}), {len(shapes)} of another shape (e.g. "
                f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in shapes[:1]]})"
            )
        model.load_state_dict(state, strict=True)
        model.eval()
        dest.mkdir(parents=True)
        model.save_pretrained(str(dest), safe_serialization=True)
        copied = copy_kept(Path(native["folder"]), dest)
        return {
            "format": "Hugging Face save_pretrained folder",
            "load": f"transformers.{native['architecture']}.from_pretrained('{self.output}')",
            "config_changes": changes,
            "removed_layers": removed,
            "copied": copied,
        }


def _layer_stacks(model: nn.Module, config: Any, roots: tuple[str, ...]) -> list[dict[str, Any]]:
    """The layer lists (nn.ModuleList) holding the MLPs, where the config counts their layers, each
    with the layers the door may remove: the one list of `num_hidden_layers` layers (BERT's
    encoder.layer), any of them; or one list per stage whose lengths the config's `depths` holds
    (Swin), only its last block, since a block's place in its stage sets its computation (Swin's
    shifted windows alternate) and only the last leaves the others' places unchanged. None where
    the MLPs are not in such lists: no layer can go."""
    lists = list(dict.fromkeys(_layer_list(model, root) for root in roots))
    if not lists or None in lists:
        return []
    stacks = [model.get_submodule(name) for name in lists if name is not None]
    if not all(isinstance(stack, nn.ModuleList) for stack in stacks):
        return []
    lengths = [len(stack) for stack in stacks if isinstance(stack, nn.ModuleList)]
    depths = getattr(config, "depths", None)
    if isinstance(depths, list) and lengths == depths:
        return [
            {"list": name, "stage": stage, "removable": [f"{name}.{length - 1}"] if length > 1 else []}
            for stage, (name, length) in enumerate(zip(lists, lengths))
        ]
    if len(lists) == 1 and lengths[0] == getattr(config, "num_hidden_layers", None):
        return [{"list": lists[0], "stage": None, "removable": [f"{lists[0]}.{i}" for i in range(lengths[0])]}]
    return []


def _layer_list(model: nn.Module, root: str) -> str | None:
    """The nn.ModuleList holding the layer a module is in (the nearest parent that is one of its
    items), e.g. bert.encoder.layer; None when the module is in no such list."""
    parts = root.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[: i - 1])
        if parts[i - 1].isdigit() and isinstance(model.get_submodule(parent) if parent else model, nn.ModuleList):
            return parent
    return None


def _removed_layers(pruned: nn.Module, layer_list: str) -> list[int]:
    """Indices of the layer list's layers that the plan removed (blocks.Skip in their place)."""
    stack = pruned.get_submodule(layer_list)
    assert isinstance(stack, nn.ModuleList), f"{layer_list} is a {type(stack).__name__}, not the layers' ModuleList"
    return [i for i, layer in enumerate(stack) if isinstance(layer, blocks_mod.Skip)]


def _renumbered(
    state: dict[str, torch.Tensor], layer_list: str, gone: list[int], count: int
) -> dict[str, torch.Tensor]:
    """The state dict with the kept layers renumbered 0..k-1, as a config with k layers builds them."""
    new_index = {old: new for new, old in enumerate(i for i in range(count) if i not in gone)}
    prefix = layer_list + "."
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix) :].partition(".")
            key = f"{prefix}{new_index[int(index)]}.{rest}"
        out[key] = value
    return out


def _width_attr(config: Any, architecture: str) -> str:
    for attr in WIDTH_ATTRS:
        if isinstance(getattr(config, attr, None), int):
            return attr
    for attr in RATIO_ATTRS:
        if isinstance(getattr(config, attr, None), (int, float)):
            return attr
    raise EdgepruneError(
        f"{architecture}: its config has none of {', '.join(WIDTH_ATTRS + RATIO_ATTRS)}, the one MLP width (or "
        "ratio) a pruned config would record; export it to ONNX or torch.save() the module to prune it without "
        "the Hugging Face output"
    )


def _mlp_shapes(model: nn.Module, config: Any, attr: str) -> set[tuple[int, int]]:
    """The (hidden, width) shapes of an MLP's input Linear that the config's attribute describes: one
    for a width; for a ratio, int(ratio x d) for every input size d a Linear of the model has."""
    if attr in RATIO_ATTRS:
        r = getattr(config, attr)
        return {(m.in_features, int(r * m.in_features)) for m in model.modules() if isinstance(m, nn.Linear)}
    return {(config.hidden_size, getattr(config, attr))}


def _ratio_of(pruned: nn.Module, roots: list[str], attr: str, original: float) -> float:
    """The ratio a config records for the pruned MLPs: their width over their hidden size, one for
    all (select.py keeps tied groups at one fraction), checked as transformers rebuilds it."""
    shapes = [(_in_features(pruned, r), _out_features(pruned, r)) for r in roots]
    if not shapes:
        return original
    hidden, width = min(shapes)
    ratio = width / hidden
    wrong = [(h, w) for h, w in shapes if int(ratio * h) != w]
    if wrong:
        raise EdgepruneError(
            f"the pruned MLP layers keep widths {sorted(set(shapes))} (hidden, width) that one {attr} cannot record "
            f"(int({ratio:g} x {wrong[0][0]}) is not {wrong[0][1]}); export model.onnx / model.pt instead of the "
            "Hugging Face folder"
        )
    return ratio


def mlp_roots(model: nn.Module, inputs: tuple[torch.Tensor, ...], pairs: set[tuple[int, int]]) -> list[list[str]]:
    """Each layer's MLP input Linears (hidden -> width, one of `pairs`; two in a gated MLP, gate and
    up, called in a row) whose next Linear called maps width -> hidden back: the layers one
    intermediate width (or ratio) describes, found by one forward. A gated MLP's group is rooted at
    either of its inputs, so both count."""
    calls: list[str] = []
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    hooks = [m.register_forward_hook(lambda *_, n=name: calls.append(n)) for name, m in linears.items()]
    try:
        modelrun.run(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    mlps: list[list[str]] = []
    run: list[str] = []  # the hidden -> width Linears of one shape called in a row so far
    opened: tuple[int, int] | None = None  # their shape
    for name in calls:
        shape = (linears[name].in_features, linears[name].out_features)
        if opened is not None and shape == opened[::-1] and run and run not in mlps:
            mlps.append(run)
        if shape in pairs and (not run or shape == opened):
            run, opened = [*run, name], shape
        else:
            run, opened = ([name], shape) if shape in pairs else ([], None)
    return mlps


def _in_features(model: nn.Module, name: str) -> int:
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear), f"{name} is a {type(layer).__name__}, not the MLP's Linear"
    return layer.in_features


def _out_features(model: nn.Module, name: str) -> int:
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear), f"{name} is a {type(layer).__name__}, not the MLP Linear it was when loaded"
    return layer.out_features
