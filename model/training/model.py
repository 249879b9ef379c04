"""The training model: the embedding network trained with a loss on a batch, its statistics, and what
training on several replicas or workers needs.

    model = EmbeddingModel(network, BatchAllTripletLoss(margin=0.5), memory=CrossBatchMemory(...))
    model.compile(optimizer="adam")
    model.fit(batches_of_images_and_labels, ...)

Keras 3's `fit` under MultiWorkerMirroredStrategy has two upstream bugs (keras-team/keras issue 20585):
they are worked around here, in `EmbeddingModel`, and nowhere else; each workaround is checked by a
test of tests/test_distributed.py that fails once Keras changes the code in question.
"""

import keras
import tensorflow as tf

from model.losses.statistics import embedding_statistics
from model.registry import STR, Option

STATISTICS = ("hardest_positive_distance", "hardest_negative_distance", "mean_distance", "embedding_norm")
# With several replicas: mine the global batch, or each replica's share. "cached" (one device) mines the batches
# themselves in a feature cache (model/data/cached.py); the batch is then mined as under "global".
MINING = ("global", "local", "cached")


def multi_worker(strategy):
    """Whether `strategy` spans several workers (the case of Keras's upstream bugs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    workers = sum(len(tasks) for name, tasks in cluster.items() if name in ("chief", "worker"))
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and workers > 1


class EmbeddingModel(keras.Model):
    """The embedding network trained with a mined loss; tracks mining statistics while it trains.

    `compute_loss` calls the loss's `compute(labels, embeddings)` once per batch and logs, besides
    the loss, the statistics the loss declares (`loss.statistics`, e.g. batch-all's
    `fraction_positive_triplets`) and the batch's `embedding_statistics` (hardest positive and
    negative distances, mean pairwise distance, embedding norm). A loss with learned parameters
    (Proxy-NCA's proxies) is tracked here so that the optimizer trains them and checkpoints hold them.

    Under a tf.distribute strategy with several replicas, `mining="global"` mines the global batch:
    every replica gathers all replicas' embeddings and labels (`ReplicaContext.all_gather`) and
    evaluates the loss of the whole global batch. The gradient of all_gather sums the replicas'
    upstream gradients and hands each replica its own rows' share, so with the loss divided by the number of replicas,
    the gradients Keras sums across replicas are exactly the single-device gradient of the same
    global batch, for every loss and reduction. The loss is O(B²) in the batch,
    cheap next to the network, so computing it on each replica costs little. `mining="local"` mines
    each replica's share of the batch alone (anchors may lose their positives).

    With a `memory` (`model.memory.CrossBatchMemory`), the batch's anchors are mined against the batch
    and the memory (after its warm-up), the statistics describe what the loss saw, `memory_fill` is
    logged, and the batch (the gathered one under global mining) is enqueued after each training step.

    With a `relation_fn(labels, ref_labels) -> [B, R]` (1 positive, -1 negative, 0 neither; places trained
    by GPS, `model.data.TrainingPairs`), the loss and the statistics take their pairs from it, not from
    the equality of labels.

    With a `miner` (`model.losses.miners`), the miner selects pairs or triplets among the batch (the gathered
    one under global mining) and its references (the memory), by labels or by the relation, and the loss is
    computed over its selection (`loss.compute(..., relation=...)` or `triplets=...`); the statistics take
    the mined pairs, and how much was mined is logged (`mined_triplets`, or `mined_positive_pairs` and
    `mined_negative_pairs`). A miner's state (the distance-weighted miner's random stream) is held here, so
    the checkpoints keep it.

    With a `classification` head (a `model.losses.SoftmaxLoss`), `classification_weight` times its
    cross-entropy on the same batch is added to the loss, and `classification_loss` and `train_accuracy`
    are logged; its head is tracked here (trained, in the run's state), not part of the network.

    With a `center` loss (a `model.losses.CenterLoss`), `center_weight` times it on the batch is added to the
    loss and logged as `center_loss`, and its centres are moved by the paper's rule after each training step
    (as the memory is filled); they are tracked here (in the run's state), not trained by the optimizer.
    With a head or a center loss the objective is logged term by term: `metric_loss` (the loss's own term),
    `classification_loss`, `center_loss`; `loss` is their weighted sum (with the network's regularizers).

    The network may output two features (the re-ID strong baseline's BNNeck, `model.nets.bot`): `(f_t, f_i)`,
    f_t for the loss, the center loss, the memory and the statistics, f_i for the classification head.
    """

    def __init__(self, network, loss, mining="global", memory=None, relation_fn=None, classification=None,
                 classification_weight=1.0, center=None, center_weight=1.0, miner=None, **kwargs):
        super().__init__(**kwargs)
        if mining not in MINING:
            raise ValueError(f"mining={mining!r}: expected one of {MINING}")
        if miner is not None and not loss.mines_in_batch:
            raise ValueError(f"miner {type(miner).__name__} picks pairs or triplets of the batch, but loss "
                             f"{type(loss).__name__} compares embeddings with learned weights: it has none to mine")
        self.network = network
        self.mined_loss = loss
        self.mining = mining
        self.memory = memory  # a CrossBatchMemory or None; an attribute, so checkpoints hold it
        self.relation_fn = relation_fn
        self.miner = miner  # a plain object: its state variables are tracked below, under their own names
        for name, variable in (miner.tracked_variables if miner is not None else {}).items():
            setattr(self, name, variable)
        if miner is not None and not miner.supports_jit:  # jit_compile "auto" (GPUs) then resolves to no XLA
            self.supports_jit = False
        self.squared = getattr(loss, "squared", False)
        # A softmax head beside the loss (`classification`) or a loss with weights of its own: attributes under
        # the names the loss gives them, so that they train and the checkpoints hold them (those names are the
        # checkpoints' keys, so keep them).
        self.classification, self.classification_weight = classification, float(classification_weight)
        self.center, self.center_weight = center, float(center_weight)
        for owner in (loss, classification, center):
            for name, layer in (owner.trained_layers if owner is not None else {}).items():
                setattr(self, name, layer)
        head_names = ("classification_loss", *classification.statistics) if classification is not None else ()
        terms = (("metric_loss",) if classification is not None or center is not None else ()) + (
            ("center_loss",) if center is not None else ())
        names = (*loss.statistics, *terms, *head_names, *STATISTICS, *(("memory_fill",) if memory is not None else ()),
                 *(miner.statistics if miner is not None else ()))
        self.statistics = [keras.metrics.Mean(name=name) for name in names]

    def call(self, images, training=False):
        return self.network(images, training=training)

    # --- Keras 3 `fit` under MultiWorkerMirroredStrategy (keras-team/keras issue 20585) -------------
    # Two upstream bugs, worked around here only, each checked by a test of tests/test_distributed.py
    # that fails once Keras changes the code in question (then this workaround can go).

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras builds the model from the first batch reduced across replicas with MEAN, which fails
        on a multi-worker batch ("Attempt to convert a value (PerReplica...) to a Tensor"); this
        model is built before fit, and the first replica's share of the batch is what a build needs."""
        if iterator is not None and multi_worker(self.distribute_strategy):
            local = self.distribute_strategy.experimental_local_results
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(lambda value: local(value)[0], next(batches))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        """Keras reduces each multi-worker log with `strategy.reduce("MEAN", log, axis=0)`, invalid for
        a scalar ("Invalid reduction dimension 0"); a log of shape [1] reduces to the same scalar."""
        logs = super().train_step(data)
        if multi_worker(self.distribute_strategy):
            logs = {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels = y
        two = isinstance(y_pred, (list, tuple))  # (f_t, f_i): the loss's features, then the head's
        embeddings, head_embeddings = (y_pred[0], y_pred[1]) if two else (y_pred, y_pred)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if self.mining == "global" and replicas > 1:
            context = tf.distribute.get_replica_context()
            embeddings = context.all_gather(embeddings, axis=0)  # [R·b, E], replica 0's rows first
            head_embeddings = context.all_gather(head_embeddings, axis=0) if two else embeddings
            # Gathered as float32 (exact below 2^24): all_gather of an int32 tensor fails in a multi-worker
            # Keras train step ("destinations can not be empty", TF 2.21; tests/test_distributed.py notices a fix).
            labels = keras.ops.cast(context.all_gather(keras.ops.cast(labels, "float32"), axis=0), "int32")
        references = {}
        if self.memory is not None:  # the batch against the batch and the memory, then the batch is enqueued
            ref_labels, ref_embeddings = self.memory.references(labels, embeddings)
            references = {"ref_labels": ref_labels, "ref_embeddings": ref_embeddings}
        if self.relation_fn is not None:  # pairs by a relation (places: GPS distances), not by equal labels
            references["relation"] = self.relation_fn(labels, references.get("ref_labels", labels))
        selection, mined = references, None
        if self.miner is not None:  # the loss over the miner's selection, the statistics over its pairs
            mined = self.miner(labels, embeddings, **references)
            others = {key: value for key, value in references.items() if key != "relation"}
            rows, columns = (keras.ops.shape(x)[0] for x in (embeddings, others.get("ref_embeddings", embeddings)))
            selection = {**others, **mined.arguments()}
            references = {**others, "relation": mined.pairs(rows, columns)}
        loss, stats = self.mined_loss.compute(labels, embeddings, **selection)
        if self.classification is not None or self.center is not None:
            stats["metric_loss"] = loss
        if self.classification is not None:  # on the batch alone (gathered under global mining), not the memory
            head_loss, head_stats = self.classification.compute(labels, head_embeddings)
            loss = loss + self.classification_weight * head_loss
            stats.update(head_stats, classification_loss=head_loss)
        if self.center is not None:  # on the batch alone; the centres move after the loss has read them
            center_loss, _ = self.center.compute(labels, embeddings)
            loss = loss + self.center_weight * center_loss
            stats["center_loss"] = center_loss
            if training:
                self.center.update(labels, embeddings)
        stats.update(embedding_statistics(labels, embeddings, self.squared, **references))
        if self.memory is not None:
            if training:
                self.memory.enqueue(labels, embeddings)
            stats["memory_fill"] = self.memory.fill_fraction()
        if mined is not None:
            stats.update(mined.statistics())
        for tracker in self.statistics:
            tracker.update_state(stats[tracker.name])
        if self.losses:  # weight regularizers of the network
            loss = loss + keras.ops.sum(self.losses)
        # Keras sums the replicas' gradients under tf.distribute: each replica's loss (of its own share, or
        # of the whole gathered batch) is divided by the number of replicas (Keras's Loss.__call__ does too).
        return loss / replicas



MINING_OPTION = Option(
    "mining", (STR,), "global", "with several replicas: global (the whole global batch) or local (each replica's "
    "share); places: cached (the NetVLAD reference's tuples from a feature cache)", choices=MINING)
