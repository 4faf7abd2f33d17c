"""The datasets the suite knows: class count, normalisation, input size and names.

One home for these facts: the models read their normalisation here, the CLI and the
workflow their dataset names. Normalisation constants follow docs/methods.md section 7.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftbc.errors import DataError

__all__ = ["DatasetInfo", "DATASETS", "DATASET_NAMES", "DATASET_NAMES_TEXT", "CIFAR_CLASSES", "dataset_info"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset needs downstream: class count, normalisation and input size."""

    name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 32),
    "cifar100": DatasetInfo("cifar100", 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 32),
    "imagenet": DatasetInfo("imagenet", 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224),
}
# The dataset names (the single list: CLI help, workflow wildcards; the config schema's enums are tested
# against it), and as the CLI help words them.
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
DATASET_NAMES_TEXT = ", ".join(DATASET_NAMES[:-1]) + " or " + DATASET_NAMES[-1]

# CIFAR label order (alphabetical, as torchvision's CIFAR10/CIFAR100 ``classes``). A
# checkpoint trained on either copy expects label i = class i, so folders must match.
CIFAR_CLASSES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "cifar100": tuple("""
        apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
        cabbage camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
        dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
        leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
        otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
        rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
        sweet_pepper table tank telephone television tiger tractor train tulip turtle wardrobe whale
        willow_tree wolf woman worm""".split()),
}


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset ('cifar10', 'CIFAR-10', ...); an unknown name raises DataError."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
    return DATASETS[key]
