"""The Hugging Face door (edgeprune/ecosystems/huggingface.py): a save_pretrained() folder in, a
save_pretrained() folder out that transformers loads without edgeprune, with model.onnx's logits.

Small configs with random weights (nothing downloaded); budgets in parameters, counted, so the
search is deterministic and quick (the baseline and final models are still timed, briefly).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from edgeprune.cli import main  # noqa: E402

#: the share of the original parameters the written folder may keep
MAX_PARAMS = 0.6
#: the budget asked for, as a share of the original parameters
BUDGET_SHARE = 0.55
FAST = ("--precision", "fp32", "--warmup", "2", "--repeats", "10")

#: run in a fresh interpreter that cannot import edgeprune: load each written folder as a user would,
#: run it and its model.onnx on the same inputs (text: a padded batch, so the mask matters)
CHECK = r"""
import json, os, sys
sys.modules["edgeprune"] = None  # the editable install would make it importable: block it
import numpy as np, onnxruntime as ort, torch, transformers
results = {}
for name, folder, onnx_path, auto in json.loads(sys.argv[1]):
    model = getattr(transformers, auto).from_pretrained(folder).eval()
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    feeds = sess.get_inputs()
    gen = torch.Generator().manual_seed(1)
    if feeds[0].type == "tensor(int64)":
        shape = feeds[0].shape
        ids = torch.randint(0, model.config.vocab_size, shape, generator=gen)
        mask = torch.ones(shape, dtype=torch.long)
        mask[:, shape[1] * 3 // 4:] = 0
        args = (ids, mask)[:len(feeds)]
    else:
        args = (torch.randn(*feeds[0].shape, generator=gen),)
    with torch.no_grad():
        want = model(*args).logits.numpy()
    got = sess.run(None, {f.name: a.numpy() for f, a in zip(feeds, args)})[0]
    tokenizer = None
    if any(p.startswith("tokenizer") for p in os.listdir(folder)):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)("w1 w2")["input_ids"]
    results[name] = {"diff": float(np.abs(got - want).max()), "params": sum(p.numel() for p in model.parameters()),
                     "shape": list(want.shape), "tokenizer": tokenizer,
                     "width": getattr(model.config, "intermediate_size", None)
                     or getattr(model.config, "hidden_dim", None)}
print(json.dumps({"edgeprune": sys.modules.get("edgeprune") is not None, "results": results}))
"""


def run_cli(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    return lines[0]


def _tokenizer(folder: Path) -> None:
    vocab = folder / "vocab.src.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(995)]) + "\n")
    transformers.BertTokenizer(str(vocab)).save_pretrained(str(folder))
    vocab.unlink()


def _encoder(folder: Path, family: str, layers: int, mlp: int, positions: int = 128, **config: Any) -> None:
    """A small random-weight `{family}ForSequenceClassification` (hidden 128, 4 heads, 3 labels) saved;
    `config` adds or overrides fields of its config."""
    cfg = getattr(transformers, f"{family}Config")(
        **{
            "vocab_size": 1000,
            "hidden_size": 128,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "intermediate_size": mlp,
            "num_labels": 3,
            "max_position_embeddings": positions,
        }
        | config
    )
    getattr(transformers, f"{family}ForSequenceClassification")(cfg).save_pretrained(str(folder))


def bert(folder: Path) -> None:
    _encoder(folder, "Bert", layers=2, mlp=1024)
    _tokenizer(folder)


def distilbert(folder: Path) -> None:
    cfg = transformers.DistilBertConfig(
        vocab_size=1000, dim=128, n_layers=2, n_heads=4, hidden_dim=1024, num_labels=3, max_position_embeddings=128
    )
    transformers.DistilBertForSequenceClassification(cfg).save_pretrained(str(folder))


def vit(folder: Path) -> None:
    cfg = transformers.ViTConfig(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=1024,
        image_size=64,
        patch_size=16,
        num_labels=3,
    )
    transformers.ViTForImageClassification(cfg).save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "size": {"height": 64, "width": 64},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            }
        )
    )


CASES: dict[str, tuple[Callable[[Path], None], str, str, tuple[str, ...], list[int]]] = {
    # name: (builder, the Auto class a user loads it with, config width attribute, extra CLI args, ONNX input shape)
    "bert": (bert, "AutoModelForSequenceClassification", "intermediate_size", ("--input-shape", "1x64"), [1, 64]),
    "distilbert": (distilbert, "AutoModelForSequenceClassification", "hidden_dim", (), [1, 128]),
    "vit": (vit, "AutoModelForImageClassification", "intermediate_size", (), [1, 3, 64, 64]),
}


def _params(folder: Path) -> int:
    config = transformers.AutoConfig.from_pretrained(str(folder))
    model = getattr(transformers, config.architectures[0])(config)
    return sum(p.numel() for p in model.parameters())


def _onnx_input_shapes(path: Path) -> list[list[int]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    return [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input if i.name not in init]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each case compressed by the CLI, then all written folders checked in one interpreter without edgeprune."""
    done: dict[str, Any] = {}
    for name, (build, auto, _, extra, _) in CASES.items():
        root = tmp_path_factory.mktemp(name)
        folder, out = root / name, root / "out"
        build(folder)
        params = _params(folder)
        rc, _, err = run_cli(folder, "--budget", f"{int(params * BUDGET_SHARE)}params", "--out", out, *FAST, *extra)
        done[name] = {"folder": folder, "out": out, "params": params, "rc": rc, "err": err, "auto": auto}
    written = [
        [n, str(r["out"] / "hf_model"), str(r["out"] / "model.onnx"), r["auto"]]
        for n, r in done.items()
        if r["rc"] == 0
    ]
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(written)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    checked = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not checked["edgeprune"]
    for name, result in checked["results"].items():
        done[name]["check"] = result
    return done


@pytest.mark.parametrize("name", list(CASES))
def test_folder_in_save_pretrained_folder_out(name: str, runs: dict[str, Any]) -> None:
    _, _, attr, _, shape = CASES[name]
    run = runs[name]
    folder, out, params = run["folder"], run["out"], run["params"]
    assert run["rc"] == 0, run["err"][-3000:]
    original = json.loads((folder / "config.json").read_text())

    report = json.loads((out / "report.json").read_text())
    model = report["model"]
    assert model["ecosystem"] == "huggingface" and model["input_shape"] == shape
    assert model["constraint"]["tied"] and len(model["constraint"]["prunable"]) == 2
    assert f"has one {attr} for every layer" in model["constraint"]["why"]
    reach = model["constraint"]["reach"]  # what the constraint cost: the FLOPs its narrowest plan keeps, and without it
    assert 0 < reach["unconstrained_flops_floor"] < reach["flops_floor"] < 1
    assert f"keeps {reach['flops_floor']:.2f} of the FLOPs" in (out / "report.md").read_text()
    assert _onnx_input_shapes(out / "model.onnx") == [shape] * len(model["input_names"])
    native = report["native"]
    assert native["path"] == "hf_model" and native["format"] == "Hugging Face save_pretrained folder"
    before, after = native["config_changes"][attr]
    assert before == original[attr] and 0 < after < before

    hf = out / "hf_model"
    assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()
    written = json.loads((hf / "config.json").read_text())
    assert written[attr] == after
    assert {k: v for k, v in written.items() if k != attr} == {k: v for k, v in original.items() if k != attr}
    if name == "bert":
        assert model["input_names"] == ["input_ids", "attention_mask"]
        assert (hf / "tokenizer.json").is_file() and "tokenizer.json" in native["copied"]
    if name == "vit":
        assert model["input_names"] == ["pixel_values"]
        assert model["preprocess"]["size"] == [64, 64] and model["preprocess"]["mean"] == [0.485, 0.456, 0.406]
        assert (hf / "preprocessor_config.json").is_file()

    import edgeprune

    reloaded = edgeprune.load(out)  # plan.json names no architecture: model.pt, the pruned transformers module
    assert type(reloaded).__name__ == written["architectures"][0]
    assert getattr(reloaded.config, attr) == after  # model.pt's config says the width it has

    got = run["check"]  # transformers alone, in a process that cannot import edgeprune
    assert got["diff"] <= 1e-4, got
    assert got["params"] <= MAX_PARAMS * params, (got["params"], params)
    assert got["width"] == after and got["shape"] == [1, 3]
    if name == "bert":
        assert got["tokenizer"] == [2, 6, 7, 3]


def test_depth_removes_whole_layers_and_the_config_counts_them(tmp_path: Path) -> None:
    """--depth only on a 4-layer DistilBERT: whole layers go, the folder holds the rest renumbered
    with n_layers (DistilBERT's name for num_hidden_layers) lowered, and transformers alone loads it
    with model.onnx's logits."""
    import numpy as np

    folder, out = tmp_path / "distil4", tmp_path / "out"
    cfg = transformers.DistilBertConfig(
        vocab_size=1000, dim=128, n_layers=4, n_heads=4, hidden_dim=512, num_labels=3, max_position_embeddings=128
    )
    transformers.DistilBertForSequenceClassification(cfg).save_pretrained(str(folder))
    ids = tmp_path / "ids.npz"
    np.savez(ids, input_ids=np.random.default_rng(0).integers(0, 1000, (64, 32)))
    params = _params(folder)
    rc, _, err = run_cli(
        folder, "--budget", f"{int(params * BUDGET_SHARE)}params", "--depth", "only", "--data", ids,
        "--input-shape", "1x32", "--epochs", "1", "--out", out, *FAST,
    )  # fmt: skip
    assert rc == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    blocks = report["model"]["constraint"]["blocks"]
    assert blocks == [f"distilbert.transformer.layer.{i}" for i in range(4)]
    native = report["native"]
    before, after = native["config_changes"]["n_layers"]
    assert before == 4 and 0 < after < 4 and "hidden_dim" not in native["config_changes"]
    assert len(native["removed_layers"]) == 4 - after and set(native["removed_layers"]) <= set(blocks)
    written = json.loads((out / "hf_model" / "config.json").read_text())
    original = json.loads((folder / "config.json").read_text())
    assert written["n_layers"] == after
    assert {k: v for k, v in written.items() if k != "n_layers"} == {
        k: v for k, v in original.items() if k != "n_layers"
    }

    import edgeprune

    stack = edgeprune.load(out).distilbert.transformer.layer
    assert sum(type(layer).__name__ == "TransformerBlock" for layer in stack) == after
    job = [["distil4", str(out / "hf_model"), str(out / "model.onnx"), "AutoModelForSequenceClassification"]]
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(job)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])["results"]["distil4"]
    assert got["diff"] <= 1e-4 and got["params"] <= MAX_PARAMS * params, (got, params)


def test_label_free_recovery_from_input_ids_alone(tmp_path: Path) -> None:
    """Issue 32's front: a BERT folder with an .npz of input_ids only (the mask is the example
    input's ones) is distilled from the unpruned model by default, and its agreement rises."""
    import numpy as np
    import torch

    folder, out = tmp_path / "bert", tmp_path / "out"
    bert(folder)
    model = transformers.BertForSequenceClassification.from_pretrained(str(folder))
    with torch.no_grad():  # logits apart, as a trained head's are (random ones differ by ~0.01: argmax is noise)
        model.classifier.weight.mul_(50)
    model.save_pretrained(str(folder))
    ids = tmp_path / "ids.npz"
    np.savez(ids, input_ids=np.random.default_rng(0).integers(5, 1000, (640, 32)))
    params = _params(folder)
    rc, _, err = run_cli(
        folder,
        "--budget",
        f"{int(params * BUDGET_SHARE)}params",
        "--data",
        ids,
        "--input-shape",
        "1x32",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--out",
        out,
        *FAST,
    )  # fmt: skip (the default optimiser for attention models, AdamW 1e-4: SGD 0.01 diverged here)
    assert rc == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["recovery"]["method"] == "distill" and report["data"]["labelled"] is False
    assert "attention_mask" in report["data"]["inputs"]
    accuracy = report["accuracy"]
    assert accuracy["metric"] == "agreement" and accuracy["recovered"] > accuracy["pruned"], accuracy
    assert (out / "hf_model" / "config.json").is_file()


def test_folder_without_config_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    line = one_line_error(*run_cli(tmp_path, "--budget", "50%", "--out", tmp_path / "out")[::2])
    assert "config.json" in line


def test_config_without_architectures_is_one_line(tmp_path: Path) -> None:
    bert(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    line = one_line_error(*run_cli(tmp_path / "m", "--budget", "50%", "--out", tmp_path / "out")[::2])
    assert "architectures" in line


def test_model_without_mlp_width_is_refused(tmp_path: Path) -> None:
    """GPT-2's config has no MLP width field (n_inner None, its MLP in Conv1D layers); MobileBERT's
    intermediate_size is not the width of a hidden -> width -> hidden pair (its bottlenecks): the
    door cannot write such models back and says so in one line."""
    cfg = transformers.GPT2Config(
        vocab_size=1000,
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    transformers.GPT2ForSequenceClassification(cfg).save_pretrained(str(tmp_path / "gpt2"))
    line = one_line_error(*run_cli(tmp_path / "gpt2", "--budget", "50%", "--out", tmp_path / "out")[::2])
    assert "GPT2ForSequenceClassification" in line and "intermediate_size" in line
    cfg = transformers.MobileBertConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        intra_bottleneck_size=64,
        true_hidden_size=64,
        embedding_size=64,
        num_labels=3,
        max_position_embeddings=128,
    )
    transformers.MobileBertForSequenceClassification(cfg).save_pretrained(str(tmp_path / "mobilebert"))
    line = one_line_error(*run_cli(tmp_path / "mobilebert", "--budget", "50%", "--out", tmp_path / "out")[::2])
    assert "cannot find each layer's MLP" in line and "found 0 for its 2 layers" in line


def test_text_input_shape_is_checked(tmp_path: Path) -> None:
    distilbert(tmp_path / "m")
    line = one_line_error(
        *run_cli(tmp_path / "m", "--budget", "50%", "--input-shape", "1x512", "--out", tmp_path / "out")[::2]
    )
    assert "128 tokens" in line
    line = one_line_error(
        *run_cli(tmp_path / "m", "--budget", "50%", "--input-shape", "1x3x64x64", "--out", tmp_path / "out")[::2]
    )
    assert "BATCHxTOKENS" in line


def test_without_transformers_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    config = {"architectures": ["BertForSequenceClassification"], "model_type": "bert"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails as if not installed
    line = one_line_error(*run_cli(tmp_path / "m", "--budget", "50%", "--out", tmp_path / "out")[::2])
    assert "pip install 'edgeprune[hf]'" in line and "transformers" in line


def roberta(folder: Path) -> None:
    _encoder(folder, "Roberta", layers=3, mlp=512, positions=160)  # RoBERTa offsets positions by 2


def bert4(folder: Path) -> None:
    _encoder(folder, "Bert", layers=4, mlp=512)


def deberta2(folder: Path) -> None:
    """A DeBERTa-v3-like config (relative attention, p2c/c2p, shared keys): its layers take a
    required mask and return (hidden states, attention weights), which its encoder unpacks."""
    _encoder(
        folder,
        "DebertaV2",
        layers=2,
        mlp=512,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        position_buckets=64,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        type_vocab_size=0,
    )


@pytest.mark.parametrize("build", [roberta, bert4, deberta2], ids=["roberta-3", "bert-4", "deberta-v2-2"])
def test_default_flags_reach_half_the_latency_by_removing_layers(build: Callable[[Path], None], tmp_path: Path) -> None:
    """`compress FOLDER --budget 50%` and nothing else: the MLP width alone cannot get there on these
    encoders (attention and embeddings stay), so --depth auto removes whole layers, scored on the
    example inputs, and the folder written counts them."""
    folder, out = tmp_path / "m", tmp_path / "out"
    build(folder)
    rc, _, err = run_cli(folder, "--budget", "50%", "--out", out)
    assert rc == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["depth"].startswith("on (--depth auto"), report["search"]["depth"]
    assert report["final"]["latency_ms"]["median"] < report["baseline"]["latency_ms"]["median"]
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    written = json.loads((out / "hf_model" / "config.json").read_text())
    assert written["num_hidden_layers"] == layers - len(report["native"]["removed_layers"]) < layers
    reloaded = getattr(transformers, written["architectures"][0]).from_pretrained(str(out / "hf_model"))
    assert reloaded(input_ids=torch.ones(1, 8, dtype=torch.long)).logits.shape == (1, 3)


def swin(folder: Path) -> None:
    cfg = transformers.SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=32,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        mlp_ratio=4.0,
        num_labels=3,
    )
    transformers.SwinForImageClassification(cfg).save_pretrained(str(folder))


def test_an_mlp_ratio_config_is_cut_to_one_ratio_across_stages(tmp_path: Path) -> None:
    """Swin states its MLP as `mlp_ratio` of each stage's hidden size (32 then 64 here): the MLPs of
    both stages keep one fraction, the folder records the new ratio, and transformers rebuilds the
    same model from it (logits equal to model.onnx's)."""
    import onnxruntime as ort

    folder, out = tmp_path / "swin", tmp_path / "out"
    swin(folder)
    params = _params(folder)
    rc, _, err = run_cli(folder, "--budget", f"{int(params * 0.7)}params", "--out", out, *FAST)
    assert rc == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert len(report["model"]["constraint"]["prunable"]) == 4  # one MLP per block, 2 + 2
    assert "one fraction of each stage's hidden size" in report["model"]["constraint"]["why"]
    before, after = report["native"]["config_changes"]["mlp_ratio"]
    written = json.loads((out / "hf_model" / "config.json").read_text())
    assert before == 4.0 and 0 < after < 4.0 and written["mlp_ratio"] == after and written["depths"] == [2, 2]
    model = transformers.SwinForImageClassification.from_pretrained(str(out / "hf_model")).eval()
    widths = sorted({m.out_features for n, m in model.named_modules() if n.endswith("mlp.fc1")})
    assert widths == [int(after * 32), int(after * 64)] and widths[1] == 2 * widths[0]
    assert sum(p.numel() for p in model.parameters()) <= 0.7 * params
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(pixel_values=x).logits.numpy()
    onnx = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = onnx.run(None, {onnx.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - logits).max() <= 1e-4


def test_default_flags_reach_half_a_swin_by_its_stages_last_blocks(tmp_path: Path) -> None:
    """This 64-pixel Swin's MLPs at their narrowest leave about 0.8 of its latency (window attention,
    patch merging): the default flags remove blocks too, only the last of a stage (a block's place
    sets whether its windows shift), and the folder's `depths` count what is left; transformers
    rebuilds from it the model model.onnx computes. 20 % is out of the format's reach, said in one
    line that names what it allows."""
    import onnxruntime as ort

    folder, out = tmp_path / "swin", tmp_path / "out"
    swin(folder)
    rc, _, err = run_cli(folder, "--budget", "50%", "--out", out)
    assert rc == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["depth"].startswith("on (--depth auto"), report["search"]["depth"]
    removed = report["native"]["removed_layers"]
    assert removed and all(name.endswith("blocks.1") for name in removed)
    written = json.loads((out / "hf_model" / "config.json").read_text())
    assert written["depths"] == [2 - any(n.startswith(f"swin.encoder.layers.{s}.") for n in removed) for s in (0, 1)]
    model = transformers.SwinForImageClassification.from_pretrained(str(out / "hf_model")).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(pixel_values=x).logits.numpy()
    onnx = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert abs(onnx.run(None, {onnx.get_inputs()[0].name: x.numpy()})[0] - logits).max() <= 1e-4

    rc, _, err = run_cli(folder, "--budget", "20%", "--out", tmp_path / "out20")
    line = err.strip().splitlines()[-1]  # after the progress lines
    assert rc == 2 and line.startswith("error:") and "Traceback" not in err
    assert "is infeasible" in line and "the most pruning it allows keeps" in line
    assert "only 2 whole blocks can be removed" in line
