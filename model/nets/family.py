"""Network families: each builder registered with its options and what a run needs of it besides `fit`.

    @register_network("mnist_convnet", options=(EMBEDDING_SIZE, ...))
    def mnist_convnet(*, image_size, channels=1, embedding_size=64, ...): ...

    network = build_network("mnist_convnet", image_size=28, channels=1, embedding_size=64)
    family = NETWORKS["netvlad"]
    family.channels                      # the input channels it needs (None: the data's own)
    family.trained_part(network)         # the part the loss sees (NetVLAD: the descriptor before whitening)
    before, after = family.steps(**arguments)   # its steps before and after fit (NetVLAD: k-means, whitening)

Training names no family: whatever a network needs besides `fit` is declared with it.
"""

import dataclasses
from collections.abc import Callable

from model.registry import BOOL, FLOAT, INT, NONE, STR, Option, OptionError, Registry


@dataclasses.dataclass(frozen=True)
class Step:
    """A step of a run besides its epochs.

    Before fit: `run(network, context) -> str or None` (a one-line summary). After fit: `run(context) -> str`,
    on the saved checkpoints; the run folder records it with the epoch it followed, so an interrupted step
    runs again at the next start. `context` (`model.training.steps.StepContext`) gives the run folder, the
    splits, their evaluation batches and the seed.
    """

    name: str
    run: Callable


def _identity(network):
    return network


def _no_steps(**arguments):
    return (), ()


NETWORKS = Registry("network", key="model", default="mnist_convnet", meaning="embedding network")


def register_network(name, options=(), rules=(), channels=None, trained_part=_identity, steps=_no_steps):
    """Decorator: register a builder `builder(*, image_size, channels, **options) -> keras.Model` under `name`.

    Args:
        options: the `Option`s of the params.json keys its keyword arguments come from.
        rules: its cross-option rules (see `model.registry.Rule`), checked when it is chosen.
        channels: the input channels it needs (ImageNet backbones read RGB), or None for the data's own.
        trained_part: `trained_part(network)`, the part of the network that the loss sees and training optimises.
        steps: `steps(**arguments) -> (before fit, after fit)`, tuples of `Step`, from the builder's arguments.
    """
    return NETWORKS.register(name, options=options, rules=rules, channels=channels, trained_part=trained_part,
                             steps=steps)


def build_network(name, **arguments):
    """The network registered under `name`, built with keyword `arguments` (see each builder).

    Returns:
        keras.Model: images [B, H, W, C] in [0, 255] → embeddings [B, E], float32.

    Raises:
        ValueError: an unknown name (the message lists the valid ones and the closest), or bad arguments.
    """
    return NETWORKS[name].component(**arguments)


def _check_momentum(value):
    # The moving statistics are momentum · old + (1 - momentum) · batch: outside [0, 1) they diverge.
    if not 0 <= value < 1:
        raise OptionError("bn_momentum", value, "a number in [0, 1), e.g. 0.9 or 0.99")


# The options several networks (or backbones) take, declared once.
EMBEDDING_SIZE = Option("embedding_size", (INT,), 64, "embedding dimension", positive=True)
L2_NORMALIZE = Option("l2_normalize", (BOOL,), False,
                      "L2-normalise the network's embeddings (what loss, statistics and evaluation see)")
BN_MOMENTUM = Option("bn_momentum", (FLOAT,), 0.9, "batch normalisation momentum, in [0, 1)", minimum=0,
                     check=_check_momentum)
USE_BATCH_NORM = Option("use_batch_norm", (BOOL,), False, "mnist_convnet: batch normalisation after each conv")
NUM_CHANNELS = Option("num_channels", (INT,), 32, "mnist_convnet: width of the first conv block", positive=True)
WEIGHTS = Option("weights", (STR, NONE), "imagenet",
                 'backbone weights: "imagenet" (not for alexnet), null, or a weights file')
