"""The losses: plain functions of `(labels, embeddings, ...)`, thin Keras `Loss` classes, and the registry.

    from model.losses import BatchHardTripletLoss, batch_hard_triplet_loss, get_loss
    model.compile(optimizer="adam", loss=BatchHardTripletLoss(margin=0.3))
    loss = get_loss("batch_hard", margin=0.3)           # by its params.json name

Every loss is registered by name in `LOSSES` (`LOSSES.names()`; the table of them all, with their modules, is
docs/losses/index.md, generated from this registry): batch_all, batch_hard and batch_semihard in triplet.py,
contrastive and lifted in pair.py, proxy_nca in proxy.py, multi_similarity, softmax in classification.py, and
every other loss in a module of its own name.

Each class is registered for Keras serialization, round-trips through `get_config` and works in
`model.compile(loss=...)`; `compute(labels, embeddings, ref_labels, ref_embeddings)` gives the loss and
its statistics against references (a cross-batch memory), and `compute(..., relation=..., triplets=...)`
over a miner's selection (`miners.py`: pytorch-metric-learning's miners, registry MINERS, params.json
"miner"). The shared machinery: `distances.py` (pairwise distances), `masks.py` (positive and negative
pairs), `reductions.py` (masked reductions and means), `inputs.py` (shape checks, float32, NaN), `base.py`
(the base class and the registry).
"""

import importlib
import pkgutil

# The classic losses register first, in this order: the order of their names in messages and in the params
# reference. Every other module of the package registers when it is imported by the loop below, so a new loss
# is its module alone: nothing here names it.
from model.losses import base, triplet  # noqa: F401

# isort: split
from model.losses import pair  # noqa: F401

# isort: split
from model.losses import proxy  # noqa: F401

# isort: split
from model.losses import multi_similarity  # noqa: F401

# isort: split
from model.losses import center, classification, miners

_MODULES = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]

# The params.json keys of the losses, and the rules across them (`model.params` reads these).
OPTIONS = (base.LOSSES.selector(), *base.LOSSES.options(), base.LOSS_OPTIONS, classification.CLASSIFICATION,
           center.CENTER_LOSS, miners.MINER, miners.MINER_OPTIONS)
RULES = (*base.RULES, *center.RULES, *miners.RULES)

# The public names of the loss modules (their `__all__`) are the package's: `from model.losses import ArcFaceLoss`.
# The shared machinery (distances, inputs, masks, reductions) is imported from its own module.
__all__ = ["OPTIONS", "RULES"]
for _module in _MODULES:
    globals().update({name: getattr(_module, name) for name in getattr(_module, "__all__", ())})
    __all__ += getattr(_module, "__all__", [])
