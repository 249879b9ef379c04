"""Model families: each network of `model.nets` with the steps of a run that belong to it.

    family = FAMILIES[params.model]
    network = family.build(params)
    trained = family.trained_part(network)          # what the loss sees
    for step in family.before_fit: step(network, context)   # a step that does not apply returns None
    ... fit ...
    for step in family.after_fit: step.run(context)  # recorded in the run folder (steps.json)

Training names no model family: whatever a family needs besides `fit` is declared here.
  mnist_convnet, trinet   nothing besides fit
  netvlad                 before fit, with NetVLAD pooling: the k-means cluster step
                          (`netvlad_fitting.cluster_step`); after fit, with netvlad_dim: PCA-whitening
                          of both checkpoints (`netvlad_fitting.whitening_step`); the loss sees the
                          NetVLAD descriptor. With pooling "max" or "avg" (no NetVLAD layer, no
                          netvlad_dim) nothing besides fit.
Whether a step applies is the step's own predicate on the params (`applies`), so training asks no
model or pooling name. `resolve_params` fills in what params leave to the data and the family (image
size, channels, number of classes): training and the evaluation of an untrained run both use it.
"""

import dataclasses
from collections.abc import Callable

from model import netvlad_fitting
from model.data import make_dataset
from model.nets import MODELS


@dataclasses.dataclass(frozen=True)
class BeforeFitStep:
    """A step on the network about to train, before `fit` (called as `step(network, context)`).

    Attributes:
        name: its name in messages.
        run: `run(network, context) -> str or None`, a one-line summary.
        applies: `applies(params) -> bool`; where it is False, calling the step does nothing (returns None).
    """

    name: str
    run: Callable
    applies: Callable = lambda params: True

    def __call__(self, network, context):
        return self.run(network, context) if self.applies(context.params) else None


@dataclasses.dataclass(frozen=True)
class AfterFitStep:
    """A step that runs once the last epoch is done, on the saved checkpoints; the run folder records
    it with the epoch it followed, so an interrupted step is run again by the next start.

    Attributes:
        name: its name in steps.json.
        run: `run(context) -> str`, a one-line summary.
        applies: `applies(params) -> bool`.
    """

    name: str
    run: Callable
    applies: Callable = lambda params: True


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """A network builder and the steps of a run that belong to it (see the module docstring)."""

    build: Callable
    channels: int | None = None  # the input channels it needs; None: the data's own
    before_fit: tuple = ()  # BeforeFitStep (or any `step(network, context) -> str or None`)
    after_fit: tuple = ()  # AfterFitStep
    trained_part: Callable = lambda network: network


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a step of a run may use: the effective params, the RunFolder, the splits trained on."""

    params: object
    run: object
    splits: dict

    def dataset(self, split):
        """The evaluation batches of a Split (in order, no augmentation)."""
        return make_dataset(split, image_size=self.params.image_size, channels=self.params.channels, training=False)


def resolve_params(params, source):
    """Fill in what params leave to the data: image size, channels, number of classes."""
    image_size = params.image_size if params.image_size is not None else source.image_size
    if image_size is None:
        raise ValueError(f'dataset "{params.dataset}" has images of many sizes: set "image_size" in params.json')
    if isinstance(image_size, (tuple, list)):
        image_size = [int(v) for v in image_size]
    channels = params.channels
    if channels is None:
        channels = FAMILIES[params.model].channels or source.channels
    # Train labels are 0..n-1 (classes seen only at test time come after them in class_names).
    train_classes = int(source.splits["train"].labels.max()) + 1
    params.check_num_labels(train_classes)
    num_labels = params.num_labels if params.num_labels is not None else train_classes
    return params.replace(image_size=image_size, channels=channels, num_labels=num_labels)


FAMILIES = {name: ModelFamily(build) for name, build in MODELS.items()}
FAMILIES["trinet"] = ModelFamily(MODELS["trinet"], channels=3)  # ImageNet backbones read RGB
FAMILIES["netvlad"] = ModelFamily(
    MODELS["netvlad"],
    channels=3,
    before_fit=(
        BeforeFitStep("cluster", netvlad_fitting.cluster_step, applies=lambda params: params.pooling == "netvlad"),
    ),
    after_fit=(
        AfterFitStep("whitening", netvlad_fitting.whitening_step, applies=lambda params: bool(params.netvlad_dim)),
    ),
    trained_part=netvlad_fitting.trained_part,
)
