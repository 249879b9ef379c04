"""Model families: each network of `model.nets` with the steps of a run that belong to it.

    family = FAMILIES[params.model]
    network = family.build(params)
    trained = family.trained_part(network)          # what the loss sees
    for step in family.before_fit: step(network, context)
    ... fit ...
    for step in family.after_fit: step.run(context)  # recorded in the run folder (steps.json)

Training names no model family: whatever a family needs besides `fit` is declared here.
  mnist_convnet, trinet   nothing besides fit
  netvlad                 before fit: the k-means cluster step (`netvlad_fitting.cluster_step`);
                          after fit, with netvlad_dim: PCA-whitening of both checkpoints
                          (`netvlad_fitting.whitening_step`); the loss sees the NetVLAD descriptor
"""

import dataclasses
from collections.abc import Callable

from model import netvlad_fitting
from model.data import make_dataset
from model.nets import MODELS


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
    before_fit: tuple = ()  # `step(network, context) -> str or None`, on the network about to train
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


FAMILIES = {name: ModelFamily(build) for name, build in MODELS.items()}
FAMILIES["trinet"] = ModelFamily(MODELS["trinet"], channels=3)  # ImageNet backbones read RGB
FAMILIES["netvlad"] = ModelFamily(
    MODELS["netvlad"],
    channels=3,
    before_fit=(netvlad_fitting.cluster_step,),
    after_fit=(
        AfterFitStep("whitening", netvlad_fitting.whitening_step, applies=lambda params: bool(params.netvlad_dim)),
    ),
    trained_part=netvlad_fitting.trained_part,
)
