"""Audio models through the Hugging Face door (ecosystems/_hf_inputs.py): a Wav2Vec2 keyword-spotting
style classifier (raw waveform, weight-normed positional convolution) and an Audio Spectrogram
Transformer (mel frames x bins), as save_pretrained() folders with random weights; what a user of an
edge audio model runs, with the waveform calibration data in an .npz keyed by the input's name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests_zoo.test_huggingface import CHECK, FAST, one_line_error, run_cli  # noqa: E402

#: the feature extractor's sampling rate: one second of audio is the example input
RATE = 8000


def wav2vec2(folder: Path) -> None:
    """A 4-layer Wav2Vec2ForSequenceClassification (hidden 64, MLP 256, 5 labels) and its feature
    extractor at 8 kHz, as `save_pretrained` writes them."""
    cfg = transformers.Wav2Vec2Config(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        conv_dim=(32, 32, 32),
        conv_kernel=(10, 3, 3),
        conv_stride=(5, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_labels=5,
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2ForSequenceClassification(cfg).save_pretrained(str(folder))
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=RATE, return_attention_mask=False).save_pretrained(str(folder))


def ast(folder: Path) -> None:
    """A 2-layer ASTForAudioClassification on 128 frames x 32 mel bins."""
    cfg = transformers.ASTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_length=128,
        num_mel_bins=32,
        num_labels=5,
        frequency_stride=10,
        time_stride=10,
    )
    torch.manual_seed(0)
    transformers.ASTForAudioClassification(cfg).save_pretrained(str(folder))


def _calibration(path: Path, n: int = 48) -> None:
    """Tones with noise, one second each at RATE, keyed by the model's input name."""
    rng = np.random.default_rng(0)
    t = np.arange(RATE) / RATE
    tones = [np.sin(2 * np.pi * (200 + 40 * i) * t) * 0.5 + 0.05 * rng.standard_normal(RATE) for i in range(n)]
    np.savez(path, input_values=np.stack(tones).astype(np.float32))


def _check_without_edgeprune(out: Path) -> dict[str, float]:
    """hf_model/ loaded by transformers alone, its logits against model.onnx's."""
    job = [["m", str(out / "hf_model"), str(out / "model.onnx"), "AutoModelForAudioClassification"]]
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(job)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    checked = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not checked["edgeprune"]
    return dict(checked["results"]["m"])


def test_a_wav2vec2_classifier_is_cut_recovered_on_waveforms_and_written_back(tmp_path: Path) -> None:
    """One second at the feature extractor's rate is the example input; label-free distillation on
    an .npz of waveforms; the folder written holds the narrower MLP, loads in transformers alone and
    gives model.onnx's logits; model.pt (the weight-normed convolution folded) loads in edgeprune."""
    folder, out, data = tmp_path / "w2v", tmp_path / "out", tmp_path / "calib.npz"
    wav2vec2(folder)
    _calibration(data)
    params = sum(p.numel() for p in transformers.Wav2Vec2ForSequenceClassification.from_pretrained(folder).parameters())
    budget = f"{int(params * 0.7)}params"
    rc, _, err = run_cli(folder, "--budget", budget, "--data", data, "--epochs", "1", "--out", out, *FAST)
    assert rc == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["input_names"] == ["input_values"] and report["model"]["input_shape"] == [1, RATE]
    assert report["model"]["inputs"] == f"audio waveform, {RATE} samples (1 s at {RATE} Hz)"
    assert report["recovery"]["method"] == "distill" and report["data"]["labelled"] is False
    before, after = report["native"]["config_changes"]["intermediate_size"]
    assert before == 256 and 0 < after < before

    got = _check_without_edgeprune(out)
    assert got["diff"] <= 1e-4 and got["width"] == after and got["shape"] == [1, 5], got

    import edgeprune

    reloaded = edgeprune.load(out)
    x = torch.randn(1, RATE)
    with torch.no_grad():
        want = transformers.Wav2Vec2ForSequenceClassification.from_pretrained(out / "hf_model").eval()(x).logits
        assert torch.allclose(reloaded(x).logits, want, atol=1e-4)


def test_default_flags_reach_half_a_wav2vec2s_latency(tmp_path: Path) -> None:
    """`compress FOLDER --budget 50%` and nothing else: the MLP width alone cannot get there, so whole
    layers go (scored on the example waveform), and the folder counts them."""
    folder, out = tmp_path / "w2v", tmp_path / "out"
    wav2vec2(folder)
    rc, _, err = run_cli(folder, "--budget", "50%", "--out", out)
    assert rc == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["budget"]["met"]
    written = json.loads((out / "hf_model" / "config.json").read_text())
    assert written["num_hidden_layers"] == 4 - len(report["native"]["removed_layers"]) < 4
    reloaded = transformers.AutoModelForAudioClassification.from_pretrained(out / "hf_model")
    assert reloaded(torch.randn(1, RATE)).logits.shape == (1, 5)


def test_a_spectrogram_transformer_takes_frames_by_mel_bins(tmp_path: Path) -> None:
    folder, out = tmp_path / "ast", tmp_path / "out"
    ast(folder)
    params = sum(p.numel() for p in transformers.ASTForAudioClassification.from_pretrained(folder).parameters())
    rc, _, err = run_cli(folder, "--budget", f"{int(params * 0.8)}params", "--out", out, *FAST)
    assert rc == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["input_shape"] == [1, 128, 32]
    assert report["model"]["inputs"] == "audio spectrogram, 128 frames x 32 mel bins"
    got = _check_without_edgeprune(out)
    assert got["diff"] <= 1e-4 and got["shape"] == [1, 5], got


def test_audio_refusals_are_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "w2v"
    wav2vec2(folder)
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    (wavs / "a.wav").write_bytes(b"RIFF")
    line = one_line_error(*run_cli(folder, "--budget", "50%", "--data", wavs, "--out", tmp_path / "o1")[::2])
    assert "input_values" in line and ".npz" in line and f"1x{RATE}" in line, line
    line = one_line_error(
        *run_cli(folder, "--budget", "50%", "--input-shape", "1x3x8x8", "--out", tmp_path / "o2")[::2]
    )
    assert "BATCHxSAMPLES" in line and f"1x{RATE}" in line, line
