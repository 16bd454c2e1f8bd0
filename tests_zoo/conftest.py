"""The ecosystem door tests: they run in the zoo environment (`make zoo-test`), where timm,
torchvision, transformers and ultralytics import; small configs, random weights, nothing downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
