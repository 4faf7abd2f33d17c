"""The suite's ANNs: VGG and ResNet variants of each conversion lineage.

``create_model(name, num_classes=10, act_layer='qcfs', L=4)`` builds one of
``list_models()``; the same names work with ``timm.create_model``. Every
activation site holds its own ``nn.ReLU``, :class:`QCFS` or :class:`ClipReLU`
instance, pooling is average pooling only, and the final classifier is
``model.fc``.
"""

from . import resnet, vgg  # noqa: F401  (importing the families registers them)
from ._factory import create_model, list_models
from .activations import ACTIVATIONS, ClipReLU, QCFS, get_act_layer, is_activation

__all__ = ["ACTIVATIONS", "QCFS", "ClipReLU", "create_model", "get_act_layer", "is_activation", "list_models"]
