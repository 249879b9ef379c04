"""The one adapter from params.json to the library: each function turns validated `Params` into a component's
keyword arguments, or into the component itself.

    source = data_source(params)                    # model.data.load_source(...)
    params = resolve(params, source)                # image size, channels and classes from the data
    network = build_network(params.model, **network_arguments(params))
    experiment = experiment(params)                 # what `model.training.runner.train` trains

Which params.json keys feed which argument is declared with each component (`model.registry.Option`); the
registries' `arguments(name, values)` map them, so adding a component with its own options touches its own
module only. Nothing below this edge sees a `Params`.
"""

import functools
import inspect
import logging

from model.data import TrainingBatches, check_trainable, load_source, make_dataset, steps_per_epoch
from model.data.datasets import DATASETS, pairing_of
from model.evaluation.protocols import PROTOCOLS
from model.losses.base import LOSSES
from model.losses.center import CenterLoss
from model.losses.classification import SoftmaxLoss
from model.losses.miners import MINERS
from model.nets.family import NETWORKS, build_network
from model.params import Params
from model.training.callbacks import Validation
from model.training.distribute import distribute_batches
from model.training.memory import CrossBatchMemory
from model.training.optimization import check_schedule_length, learning_rate, make_optimizer
from model.training.runner import Experiment, TrainingPlan

logger = logging.getLogger(__name__)

# What may change between the starts of a run without changing what its epochs mean: how long it trains,
# the learning rate (lowered after a divergence), and what it logs or evaluates.
RESUMABLE_KEYS = ("num_epochs", "learning_rate", "lr_schedule", "stop_on_collapse", "save_summary_steps",
                  "eval_size", "num_parallel_calls")


def data_source(params, class_names=None):
    """The DataSource of params: the dataset with its validation hold-out and train_size cut; `class_names`,
    the mapping of an earlier start of a run, is kept."""
    return load_source(params.dataset, data_dir=params.data_dir, validation_size=params.validation_size,
                       class_names=class_names, seed=params.seed, train_size=params.train_size,
                       **DATASETS.arguments(params.dataset, params.to_dict()))


def resolve(params, source):
    """Params with what they leave to the data and the network filled in: image size, channels, classes."""
    image_size = params.image_size if params.image_size is not None else source.image_size
    if image_size is None:
        raise ValueError(f'dataset "{params.dataset}" has images of many sizes: set "image_size" in params.json')
    if isinstance(image_size, (tuple, list)):
        image_size = [int(v) for v in image_size]
    channels = params.channels
    if channels is None:
        channels = NETWORKS[params.model].channels or source.channels
    # Train labels are 0..n-1 (classes seen only at test time come after them in class_names).
    train_classes = int(source.splits["train"].labels.max()) + 1
    params.check_num_labels(train_classes)
    num_labels = params.num_labels if params.num_labels is not None else train_classes
    return params.replace(image_size=image_size, channels=channels, num_labels=num_labels)


def network_arguments(params):
    """The network builder's keyword arguments (params resolved against the data)."""
    return {"image_size": params.image_size, "channels": params.channels,
            **NETWORKS.arguments(params.model, params.to_dict())}


def network(params):
    """The embedding network of params, freshly initialised."""
    return build_network(params.model, **network_arguments(params))


def _takes(component, name):
    return name in inspect.signature(component).parameters


def loss(params, embedding_size):
    """The loss of params: its registered options, then `loss_options`; a loss with weights gets the
    `embedding_size` of what it sees."""
    entry = LOSSES[params.loss]
    options = {**LOSSES.arguments(params.loss, params.to_dict()), **params.loss_options}
    if _takes(entry.component, "embedding_size"):
        options["embedding_size"] = embedding_size
    try:
        return entry.component(**options)
    except TypeError as error:
        raise ValueError(f'loss_options {params.loss_options} do not fit loss "{params.loss}": {error}') from None


def miner(params):
    """The miner of params ("miner", "miner_options"), or None; a miner that draws at random gets params' seed
    unless "miner_options" names one."""
    if params.miner is None:
        return None
    entry = MINERS[params.miner]
    options = dict(params.miner_options)
    if _takes(entry.component, "seed"):
        options.setdefault("seed", params.seed)
    try:
        return entry.component(**options)
    except TypeError as error:
        raise ValueError(f'miner_options {params.miner_options} do not fit miner "{params.miner}": {error}') from None


def memory(params, embedding_size):
    """The cross-batch memory of params, or None."""
    if params.memory is None:
        return None
    return CrossBatchMemory(params.memory["size"], embedding_size, params.memory["warmup_steps"],
                            name="cross_batch_memory")


def classification(params, embedding_size):
    """The softmax head beside the loss, or None."""
    if params.classification is None:
        return None
    head = params.classification
    return SoftmaxLoss(params.num_labels, embedding_size, label_smoothing=head.get("label_smoothing", 0.0),
                       use_bias=head.get("bias", True), name="classification")


def center(params, embedding_size):
    """The center loss beside the loss (on what the loss sees), or None."""
    if params.center_loss is None:
        return None
    return CenterLoss(params.num_labels, embedding_size, rate=params.center_loss.get("rate", 0.5))


def rate(params):
    """The learning rate or schedule of params."""
    return learning_rate(params.learning_rate, params.lr_schedule)


def optimizer(params):
    return make_optimizer(params.optimizer, rate(params), params.weight_decay)


def training_batches(params, groups=None):
    """The training batches of params (shuffled or P×K, augmented, seeded), drawn from `groups` when given."""
    return TrainingBatches(image_size=params.image_size, channels=params.channels, batch_size=params.batch_size,
                           classes_per_batch=params.classes_per_batch, images_per_class=params.images_per_class,
                           augment=params.augment, seed=params.seed, num_parallel_calls=params.num_parallel_calls,
                           groups=groups)


def evaluation_batches(params):
    """`dataset(split)`: the evaluation batches of a Split at params' image size and channels."""
    return lambda split: make_dataset(split, image_size=params.image_size, channels=params.channels, training=False)


def training_pairs(params, split):
    """How training forms pairs on the train `split`: the dataset's pairing (places: by GPS), or None."""
    pipeline = {"image_size": params.image_size, "channels": params.channels, "batch_size": params.batch_size,
                "augment": params.augment, "seed": params.seed, "num_parallel_calls": params.num_parallel_calls}
    return pairing_of(params.dataset)(split, places_training=params.places_training, mining=params.mining,
                                      nontrivial_radius=params.nontrivial_radius,
                                      positive_radius=params.positive_radius, margin=params.margin,
                                      cache_refresh=params.cache_refresh, pipeline=pipeline)


def protocol(params):
    """The evaluation protocol of params' dataset, with its options."""
    name = DATASETS[params.dataset].protocol
    return PROTOCOLS[name].component(**PROTOCOLS.arguments(name, params.to_dict()))


def validation(params, protocol, splits):
    """The protocol's validation after each epoch, or None (with the reason logged) when it cannot be measured."""
    if "validation" not in splits:
        return None
    problem = protocol.validation_problem(splits["validation"])
    if problem:
        logger.warning('%s; "best" follows the training loss (raise validation_size)', problem)
        return None
    return Validation(protocol, splits["validation"], evaluation_batches(params)(splits["validation"]))


def fit_steps(params):
    """(before fit, after fit): the network family's steps for params."""
    return NETWORKS[params.model].steps(**network_arguments(params))


def trainable_problems(params, labels):
    """The problems `model.data.check_trainable` finds (and logs) for training params on the train `labels`."""
    described = "the training split" + (f" (train_size={params.train_size})" if params.train_size else "")
    return check_trainable(labels, classes_per_batch=params.classes_per_batch,
                           images_per_class=params.images_per_class, batch_size=params.batch_size,
                           in_batch=LOSSES[params.loss].component.mines_in_batch, loss=f'loss "{params.loss}"',
                           split=described)


def experiment(params):
    """The `Experiment` of params: its data, and its plan once the data is read (`training_plan`)."""
    return Experiment(data=functools.partial(_data_source_keeping, params),
                      plan=functools.partial(training_plan, params), distribute=params.distribute,
                      classes_per_batch=params.classes_per_batch, mining=params.mining, seed=params.seed,
                      mixed_precision=params.mixed_precision)


def _data_source_keeping(params, class_names):
    return data_source(params, class_names=class_names)


def training_plan(params, source, strategy, run):
    """The `TrainingPlan` of params for the run folder `run` under `strategy`, once the data `source` is read:
    params are resolved against it, and what can never form a pair or triplet on it is logged."""
    params = resolve(params, source)
    trainable_problems(params, source.splits["train"].labels)
    splits = source.splits
    pairs = training_pairs(params, splits["train"])
    batches = training_batches(params, groups=pairs.groups if pairs is not None else None)
    if pairs is not None and pairs.batches is not None:  # batches mined by the dataset (cached mining)
        make_batches = pairs.batches
    else:
        def make_batches(start_step):
            return distribute_batches(strategy, batches, splits["train"], start_step)
    protocol_ = protocol(params)
    before, after = fit_steps(params)
    steps = params.steps_per_epoch or steps_per_epoch(splits["train"], batches.size)
    check_schedule_length(params.lr_schedule, params.num_epochs * steps, params.source)
    return TrainingPlan(
        network=lambda: network(params),
        trained_part=NETWORKS[params.model].trained_part,
        loss=lambda dimension: loss(params, dimension),
        optimizer=lambda: optimizer(params),
        batches=make_batches,
        steps_per_epoch=steps,
        num_epochs=params.num_epochs,
        splits=splits,
        dataset=evaluation_batches(params),
        config=params.to_dict(),
        resumable=RESUMABLE_KEYS,
        complete=lambda older: Params.from_dict(older).to_dict(),
        class_names=list(source.class_names),
        report=source.report,
        learning_rate=rate(params),
        mining=params.mining,
        memory=(lambda dimension: memory(params, dimension)) if params.memory is not None else None,
        classification=(lambda dimension: classification(params, dimension)) if params.classification else None,
        classification_weight=(params.classification or {}).get("weight", 1.0),
        center=(lambda dimension: center(params, dimension)) if params.center_loss else None,
        center_weight=(params.center_loss or {}).get("weight", 1.0),
        miner=(lambda: miner(params)) if params.miner is not None else None,
        relation_fn=pairs.relation_fn if pairs is not None else None,
        cache=pairs.cache if pairs is not None else None,
        validation=validation(params, protocol_, splits),
        before_fit=before,
        after_fit=after,
        seed=params.seed,
        save_summary_steps=params.save_summary_steps,
        stop_on_collapse=params.stop_on_collapse,
        advice=divergence_advice(params, run.params_path),
    )


def divergence_advice(params, where):
    """What to look at when training on params diverges: the keys that scale the loss or its steps, the
    suspicious one first (a classification weight above 1 multiplies the cross-entropy's gradients)."""
    keys = [f"learning_rate ({params.learning_rate}; the usual cure is a lower one)",
            f"lr_schedule ({params.lr_schedule})"]
    if any(option.key == "margin" for option in LOSSES[params.loss].options):  # not the proxy and softmax losses
        keys.append(f"margin ({params.margin})")
    if params.classification is not None:
        weight = params.classification.get("weight", 1.0)
        named = f"classification.weight ({weight:g}: it multiplies the cross-entropy added to the loss)"
        keys.insert(0 if weight > 1 else len(keys), named)
    return f"Look at {', '.join(keys[:-1])} and {keys[-1]} in {where}"
