"""Bundled model architectures, built by name: `create("resnet20", num_classes=10)`.

Importing this package imports every architecture module, each of which registers its variants.
"""

from edgeprune.models import char_lm, mobilenetv2, resnet, resnet_cifar, vgg, vit  # noqa: F401  (registration)
from edgeprune.models.registry import available, create, default_input_shape, register, takes_tokens

__all__ = ["available", "create", "default_input_shape", "register", "takes_tokens"]
