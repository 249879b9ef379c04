"""Embedding networks, built by name with keyword arguments: images → embeddings.

    from model.nets import build_network
    network = build_network("mnist_convnet", image_size=28, channels=1, embedding_size=64)
    from model.nets.convnet import mnist_convnet          # or the builder itself

Every network maps images `[B, H, W, C]`, float32 in [0, 255], channels-last, to embeddings `[B, E]`
(float32 even under a mixed-precision policy). Each does its own input preprocessing inside the graph,
so a saved `.keras` file is self-contained; importing this package registers the custom layers, so
`keras.models.load_model(path)` needs no `custom_objects`.

  name            builder                         module
  mnist_convnet   mnist_convnet                   convnet.py   the classic TensorFlow triplet-loss convnet
  trinet          trinet                          trinet.py    Hermans et al. 2017, ResNet-50 + head
  netvlad         netvlad                         netvlad.py   a backbone (backbones.py) + NetVLAD or global pooling
  bot             bot                             bot.py       Luo et al. 2019, the re-ID strong baseline: ResNet-50
                                                               (last stride 1) + BNNeck

A family registers its builder with the params.json options it takes and what a run needs of it
besides `fit` (`family.py`): the input channels, the part the loss sees, its steps before and after fit.
"""

# The registration order of the networks is the order of their names in messages and in the params reference.
from model.nets.family import NETWORKS, Step, build_network

# isort: split
from model.nets import convnet, trinet  # noqa: F401  (register mnist_convnet, then trinet)

# isort: split
from model.nets import netvlad  # noqa: F401  (registers netvlad)

# isort: split
from model.nets import bot  # noqa: F401  (registers bot)
from model.nets.backbones import BACKBONES
from model.nets.batch_norm import FusedBatchNormalization
from model.nets.layers import ImageNetPreprocessing, L2Normalize
from model.nets.netvlad import POOLINGS
from model.nets.netvlad_layer import NetVLAD

# The params.json keys of the networks, and the rules across them (`model.params` reads these).
OPTIONS = (NETWORKS.selector(), *NETWORKS.options())
RULES = netvlad.RULES

__all__ = ["BACKBONES", "NETWORKS", "OPTIONS", "POOLINGS", "RULES", "FusedBatchNormalization", "ImageNetPreprocessing",
           "L2Normalize", "NetVLAD", "Step", "build_network"]
