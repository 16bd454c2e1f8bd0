"""The zoo benchmark's sample: public architectures as users bring them, built with random weights.

Runs only in the zoo environment (`../shared/zoo/make-zoo-venv.sh .venv-zoo`), where timm,
torchvision's models, Hugging Face transformers and ultralytics import; nothing here is a
dependency of edgeprune. A model is named by a spec, `FAMILY:NAME`:

- `tv:NAME`       every torchvision classification model (`torchvision.models.list_models`), 224x224
- `tvseg:NAME`    every torchvision segmentation model, 224x224
- `tvdet:NAME`    the backbone (with its FPN or extra layers) of the torchvision detection models,
                  320x320; keypoint and mask R-CNN share fasterrcnn_resnet50_fpn(_v2)'s backbone and
                  are not repeated. Detection post-processing needs torchvision's compiled ops,
                  which do not load against the CPU torch here.
- `timm:NAME`     every k-th name of `timm.list_models()` among the models of at most 100 M
                  parameters (counted on the meta device), k chosen so that at least 60 are drawn
                  (`TIMM_SAMPLE`, drawn with timm 1.0.31: 1,371 models, 1,069 of them <= 100 M,
                  k = 17: 63 models; `--redraw` draws again); at the model's default input size, capped at 256
                  where timm lets `img_size` change
- `hf:NAME`       Hugging Face BERT, DistilBERT, RoBERTa, GPT-2 (sequence classification, 128
                  tokens; GPT-2 with use_cache=False, as a classifier is run: its key/value cache
                  is not a tensor output) and ViT, DeiT, Swin (image classification, 224x224), from
                  small configs
- `yolo:NAME`     ultralytics YOLOv8n, YOLO11n, YOLOv8n-seg (DetectionModel / SegmentationModel), 320x320
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: timm models above this many parameters are not drawn (the analysis time bound is stated for <= 100 M)
TIMM_MAX_PARAMS = 100e6
TIMM_MIN_SAMPLE = 60
TIMM_MAX_SIDE = 256
DET_SKIP = ("keypointrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
HF_MODELS = ("bert", "distilbert", "roberta", "gpt2", "vit", "deit", "swin")
YOLO_MODELS = ("yolov8n", "yolo11n", "yolov8n-seg")
SEQ_LEN = 128
NUM_LABELS = 10


#: the timm draw recorded (timm_sample() with timm 1.0.31), so the sample does not move with timm's list
TIMM_SAMPLE = (
    "bat_resnext26ts",
    "cait_xxs36_224",
    "coatnet_nano_cc_224",
    "convmixer_768_32",
    "convnext_zepto_rms_ols",
    "crossvit_9_240",
    "cs3darknet_x",
    "cspresnext50",
    "deit_base_patch16_384",
    "dla60x",
    "eca_nfnet_l1",
    "edgenext_small",
    "efficientnet_b2",
    "efficientnet_em",
    "efficientvim_m1_dist",
    "efficientvit_m4",
    "fasternet_m",
    "fbnetv3_d",
    "gcvit_tiny",
    "gmixer_24_224",
    "hgnet_tiny",
    "hrnet_w18_small_v2",
    "inception_next_atto",
    "lcnetv2_large",
    "levit_384_s8",
    "lowformer_b3",
    "maxvit_rmlp_pico_rw_256",
    "mixer_b16_224",
    "mobilenet_edgetpu_v2_s",
    "mobilenetv3_small_075",
    "mobileone_s2",
    "mvitv2_tiny",
    "nf_ecaresnet26",
    "pit_b_224",
    "poolformerv2_s24",
    "regnetx_004_tv",
    "regnety_040",
    "regnetz_e8",
    "repvgg_b3g4",
    "res2next50",
    "resnet26t",
    "resnet61q",
    "resnetblur18",
    "resnetv2_50t",
    "rexnet_300",
    "selecsls60b",
    "seresnet200d",
    "skresnet50",
    "swin_s3_base_224",
    "swinv2_cr_tiny_384",
    "test_nfnet",
    "tf_efficientnet_cc_b0_8e",
    "tf_mixnet_m",
    "tinynet_e",
    "vit_base_patch8_224",
    "vit_base_patch16_rope_ape_224",
    "vit_base_patch32_clip_256",
    "vit_little_patch16_reg1_gap_256",
    "vit_pe_spatial_small_patch16_512",
    "vit_small_patch16_224",
    "vit_srelpos_medium_patch16_224",
    "vovnet39a",
    "xcit_small_12_p8_384",
)


def sample(redraw: bool = False) -> list[str]:
    """Every spec of the benchmark, in a fixed order."""
    import torchvision.models as tvm

    specs = [f"tv:{n}" for n in tvm.list_models(module=tvm)]
    specs += [f"tvseg:{n}" for n in tvm.list_models(module=tvm.segmentation)]
    specs += [f"tvdet:{n}" for n in tvm.list_models(module=tvm.detection) if n not in DET_SKIP]
    specs += [f"timm:{n}" for n in (timm_sample() if redraw else TIMM_SAMPLE)]
    specs += [f"hf:{n}" for n in HF_MODELS]
    specs += [f"yolo:{n}" for n in YOLO_MODELS]
    return specs


def timm_sample() -> list[str]:
    """Every k-th timm model of at most `TIMM_MAX_PARAMS` parameters, at least `TIMM_MIN_SAMPLE` of them."""
    import timm

    small = [n for n in timm.list_models() if _meta_params(n) <= TIMM_MAX_PARAMS]
    k = max(1, len(small) // TIMM_MIN_SAMPLE)
    return small[::k]


def _meta_params(name: str) -> float:
    """Parameter count without allocating weights; a model that cannot be built this way counts as too big."""
    import timm

    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False)
        return sum(p.numel() for p in m.parameters())
    except Exception:  # noqa: BLE001 - some timm entries need options or downloads; they are not drawn
        return math.inf


def build(spec: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The model of `spec` in eval mode (random weights, seed 0) and its example inputs."""
    family, _, name = spec.partition(":")
    torch.manual_seed(0)
    model, inputs = _BUILDERS[family](name)
    return model.eval(), inputs


def _image(side: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0)),)


def _tv(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import torchvision.models as tvm

    return tvm.get_model(name, weights=None), _image(224)


def _tvseg(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import torchvision.models as tvm

    return tvm.get_model(name, weights=None, weights_backbone=None), _image(224)


def _tvdet(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import torchvision.models as tvm

    return tvm.get_model(name, weights=None, weights_backbone=None).backbone, _image(320)


def _timm(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import timm

    model = timm.create_model(name, pretrained=False)
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    if max(size[1:]) > TIMM_MAX_SIDE:
        try:
            model = timm.create_model(name, pretrained=False, img_size=TIMM_MAX_SIDE)
            size = (size[0], TIMM_MAX_SIDE, TIMM_MAX_SIDE)
        except TypeError:  # the family has no img_size: its default size it is
            pass
    return model, (torch.randn(1, *size, generator=torch.Generator().manual_seed(0)),)


def _hf(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import transformers as tf

    small = {
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "num_labels": NUM_LABELS,
    }
    text: dict[str, Callable[[], Any]] = {
        "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(**small)),
        "roberta": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(**small)),
        "distilbert": lambda: tf.DistilBertForSequenceClassification(
            tf.DistilBertConfig(n_layers=4, dim=256, n_heads=4, hidden_dim=1024, num_labels=NUM_LABELS)
        ),
        "gpt2": lambda: tf.GPT2ForSequenceClassification(
            tf.GPT2Config(n_layer=4, n_embd=256, n_head=4, num_labels=NUM_LABELS, pad_token_id=0, use_cache=False)
        ),
    }
    vision: dict[str, Callable[[], Any]] = {
        "vit": lambda: tf.ViTForImageClassification(tf.ViTConfig(**small, image_size=224, patch_size=16)),
        "deit": lambda: tf.DeiTForImageClassification(tf.DeiTConfig(**small, image_size=224, patch_size=16)),
        "swin": lambda: tf.SwinForImageClassification(
            tf.SwinConfig(
                image_size=224, embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], num_labels=NUM_LABELS
            )
        ),
    }
    if name in text:
        model = text[name]()
        ids = torch.randint(0, model.config.vocab_size, (1, SEQ_LEN), generator=torch.Generator().manual_seed(0))
        return model, (ids,)
    return vision[name](), _image(224)


def _yolo(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    cls = SegmentationModel if name.endswith("-seg") else DetectionModel
    return cls(f"{name}.yaml", nc=80, verbose=False), _image(320)


_BUILDERS: dict[str, Callable[[str], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "tv": _tv,
    "tvseg": _tvseg,
    "tvdet": _tvdet,
    "timm": _timm,
    "hf": _hf,
    "yolo": _yolo,
}
