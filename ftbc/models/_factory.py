"""The suite's model registry, on top of timm's.

Entry points decorated with :func:`register_model` land in timm's registry (so
``timm.create_model('resnet20_qcfs', num_classes=10, act_layer='qcfs', L=4)``
works) and in this module's list, so :func:`list_models` names only the
suite's networks. :func:`build_model` turns the activation keywords
(``act_layer``, ``L``, ``init_lambda``, ``y_th``) into an activation factory
and hands the rest to ``timm.models.build_model_with_cfg``, which attaches the
``pretrained_cfg`` / ``default_cfg`` dict.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, TypeVar

import timm
from timm.models import build_model_with_cfg
from timm.models import register_model as _timm_register_model
from torch import nn

from ftbc.data.catalog import DATASETS

from .activations import ACT_KWARGS, get_act_layer

__all__ = ["register_model", "list_models", "create_model", "build_model", "cifar_cfg", "imagenet_cfg"]

F = TypeVar("F", bound=Callable[..., nn.Module])

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_ACT_KEYS = tuple(sorted({k for keys in ACT_KWARGS.values() for k in keys}))

# Normalisation of the releases (docs/methods.md section 7), from the dataset table
# (ftbc.data.catalog.DATASETS, its single home); CIFAR-100 recipes override it.
CIFAR10_MEAN, CIFAR10_STD = DATASETS["cifar10"].mean, DATASETS["cifar10"].std
IMAGENET_MEAN, IMAGENET_STD = DATASETS["imagenet"].mean, DATASETS["imagenet"].std


def cifar_cfg(**kwargs: Any) -> dict[str, Any]:
    """Default cfg of a CIFAR network: 3x32x32 input, 10 classes, head ``fc``."""
    cfg = dict(num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0,
               interpolation="bilinear", mean=CIFAR10_MEAN, std=CIFAR10_STD, classifier="fc")
    return dict(cfg, **kwargs)


def imagenet_cfg(**kwargs: Any) -> dict[str, Any]:
    """Default cfg of an ImageNet network: 3x224x224 input, 1000 classes, head ``fc``."""
    cfg = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.875,
               interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="fc")
    return dict(cfg, **kwargs)


def register_model(fn: F) -> F:
    """Register an entry point with timm and with the suite; a clash is an error."""
    name = fn.__name__
    previous = _ENTRYPOINTS.get(name)
    if previous is not None and previous.__module__ != fn.__module__:
        raise ValueError(f"model {name!r} is already registered by {previous.__module__}")
    if previous is None and timm.is_model(name):
        raise ValueError(f"model {name!r} is a timm model; name lineage-specific nets arch_lineage")
    _ENTRYPOINTS[name] = fn
    return _timm_register_model(fn)


def list_models(filter: str = "") -> list[str]:
    """Sorted names of the suite's models, optionally matching an fnmatch pattern."""
    names = sorted(_ENTRYPOINTS)
    return fnmatch.filter(names, filter) if filter else names


def build_model(model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build ``model_cls`` for a registered ``variant``; the ``_create_*`` helpers call this.

    Args:
        model_cls: the model class; it takes ``act_layer`` (a factory),
            ``num_classes`` and ``in_chans``.
        variant: the registered name; its default cfg fills ``num_classes``
            and ``in_chans`` when they are not given.
        pretrained: must be False: the suite registers no weights.
        **kwargs: model arguments, plus ``act_layer`` (a name or factory,
            default ``'relu'``) and its settings ``L``, ``init_lambda``, ``y_th``.

    Raises:
        ValueError: ``pretrained=True``, an unknown activation or a setting
            the activation does not take.
    """
    if pretrained:
        raise ValueError(f"no pretrained weights are registered for {variant!r}; train the ANN and load its checkpoint")
    act_kwargs = {k: kwargs.pop(k) for k in _ACT_KEYS if k in kwargs}
    kwargs["act_layer"] = get_act_layer(kwargs.pop("act_layer", "relu"), **act_kwargs)
    return build_model_with_cfg(model_cls, variant, pretrained=False, **kwargs)


def create_model(name: str, *, num_classes: int = 10, act_layer: str = "relu", **act_kwargs: Any) -> nn.Module:
    """Create one of the suite's models through timm.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classifier outputs (10 by default, also for ImageNet nets).
        act_layer: ``'relu'``, ``'qcfs'`` or ``'clip'``.
        **act_kwargs: the activation's settings (``L``, ``init_lambda`` for
            QCFS; ``y_th`` for the clipped ReLU); other model keywords
            (``drop_rate``, ``in_chans``) pass through to the model.

    Returns:
        The model, randomly initialised, in training mode.

    Raises:
        ValueError: an unknown name (the message lists the suite's models), an
            unknown activation or a setting it does not take.
    """
    if name not in _ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return timm.create_model(name, num_classes=num_classes, act_layer=act_layer, **act_kwargs)
