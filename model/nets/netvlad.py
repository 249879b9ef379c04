"""The NetVLAD family: a backbone with NetVLAD (or global) pooling, and its steps before and after fit.

    network = netvlad(image_size=[480, 640], backbone="vgg16", num_clusters=64, netvlad_dim=4096)

pooling "netvlad" (Arandjelović et al., "NetVLAD", CVPR 2016): images → backbone [B, h, w, D] →
NetVLAD(num_clusters, vladv2), layer "netvlad" [B, K·D] → with netvlad_dim: dense "whitening"
[B, netvlad_dim], not trainable → L2 normalisation. The NetVLAD layer is initialised by k-means before
fit (the cluster step) and the whitening is fitted by PCA after it (the whitening step); the loss sees
the descriptor before the whitening (`descriptor_part`).
pooling "max" / "avg" (pytorch-NetVlad's --pooling): images → backbone → global max / average pooling,
layer "pooling" [B, D] → L2 normalisation; no steps, no whitening.
"""

import os

import keras
from keras import layers, ops

from model.nets.backbones import BACKBONES
from model.nets.family import Step, register_network
from model.nets.layers import L2Normalize
from model.nets.netvlad_fitting import cluster_netvlad, fit_whitening
from model.nets.netvlad_layer import NETVLAD_LAYER, WHITENING_LAYER, NetVLAD, netvlad_layer
from model.registry import BOOL, INT, NONE, STR, Option

# pytorch-NetVlad's --pooling besides NetVLAD: global pooling of the feature map [B, h, w, D] → [B, D], then
# L2 normalisation. Computed in float32, like the NetVLAD layer, under a mixed-precision policy.
GLOBAL_POOLINGS = {"max": layers.GlobalMaxPooling2D, "avg": layers.GlobalAveragePooling2D}
POOLINGS = ("netvlad", *GLOBAL_POOLINGS)


def cluster_step(network, context):
    """Before `fit`: the cluster step on the train split, unless the layer is already initialised
    (a resumed or warm-started run). centroids.npy always ends up holding the layer's initial centres."""
    layer = netvlad_layer(network)
    path = context.run.path("centroids.npy")
    if layer.initialised:
        if not os.path.exists(path):  # warm start: the centres the layer came with
            context.run.save_array("centroids.npy", ops.convert_to_numpy(layer.centroids))
        return None
    centroids = cluster_netvlad(network, context.dataset(context.splits["train"]), seed=context.seed)
    context.run.save_array("centroids.npy", centroids)
    return f"NetVLAD initialised by k-means ({layer.num_clusters} clusters): {path}"


def whitening_step(context, dim):
    """After the last epoch: PCA-whitening to `dim` dimensions fitted on the database (or the train split) with
    each checkpoint's own network, written into best.keras and latest.keras."""
    database = context.splits.get("database", context.splits["train"])
    for checkpoint in ("best", "latest"):
        network = context.run.load_network(checkpoint)
        fit_whitening(network, context.dataset(database), dim)
        context.run.save_network(network, checkpoint)
    return f"whitening to {dim} dimensions fitted on {len(database)} database images: best.keras and latest.keras"


def netvlad_steps(*, pooling="netvlad", netvlad_dim=None, **_):
    """(before fit, after fit): the cluster step with NetVLAD pooling, the whitening step with netvlad_dim."""
    before = (Step("cluster", cluster_step),) if pooling == "netvlad" else ()
    after = (Step("whitening", lambda context: whitening_step(context, netvlad_dim)),) if netvlad_dim else ()
    return before, after


def descriptor_part(network):
    """The part of a NetVLAD network that training optimises: up to the NetVLAD descriptor, whose
    whitening is fitted after training (the loss sees the descriptor, as in the paper)."""
    try:
        network.get_layer(WHITENING_LAYER)
    except ValueError:
        return network
    return keras.Model(network.input, netvlad_layer(network).output, name=f"{network.name}_descriptor")


def _whitening_needs_netvlad_pooling(values, chosen):
    if values["pooling"] != "netvlad" and values["netvlad_dim"] is not None:
        return (f'"netvlad_dim" ({values["netvlad_dim"]}) whitens NetVLAD descriptors; with "pooling" '
                f'{values["pooling"]!r} (global pooling, no PCA in pytorch-NetVlad) set it to null')
    return None


POOLING = Option("pooling", (STR,), "netvlad",
                 "netvlad: pooling of the backbone's features; max/avg: global pooling, L2", choices=POOLINGS)
NUM_CLUSTERS = Option("num_clusters", (INT,), 64, "netvlad: number of clusters K", positive=True)
VLADV2 = Option("vladv2", (BOOL,), False, "netvlad: the v2 initialisation (with a bias)")
NETVLAD_DIM = Option("netvlad_dim", (INT, NONE), None, "netvlad: whitened output dimension; null = K·D",
                     positive=True)
# Checked whichever model is chosen: netvlad_dim with global pooling means nothing anywhere.
RULES = (_whitening_needs_netvlad_pooling,)


@register_network("netvlad", options=(BACKBONES.selector(), POOLING, NUM_CLUSTERS, VLADV2, NETVLAD_DIM,
                                      *BACKBONES.options()),
                  channels=3, trained_part=descriptor_part, steps=netvlad_steps)
def netvlad(*, image_size=None, channels=3, backbone="vgg16", pooling="netvlad", num_clusters=64, vladv2=False,
            netvlad_dim=None, **backbone_arguments):
    """NetVLAD network, or its backbone with global pooling (see the module docstring).

    Args:
        image_size: int, [h, w], or None for any size.
        channels: 3 (the ImageNet backbones read RGB; the small one takes 1 or 3).
        backbone: a name of `BACKBONES` (vgg16, resnet50, small, alexnet).
        pooling: "netvlad", "max" or "avg".
        num_clusters, vladv2: of the NetVLAD layer.
        netvlad_dim: the whitened dimension (NetVLAD pooling only), or None for the K·D descriptor.
        **backbone_arguments: the backbones' own (weights; num_channels, use_batch_norm, bn_momentum for
            small); those the chosen backbone does not take are not passed to it.

    Returns:
        keras.Model: images → L2-normalised descriptors [B, netvlad_dim or K·D] (NetVLAD), [B, D] (global).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}; valid poolings: {list(POOLINGS)}.")
    if pooling != "netvlad" and netvlad_dim is not None:
        raise ValueError(f"netvlad_dim={netvlad_dim} whitens NetVLAD descriptors; with pooling {pooling!r} set it "
                         "to null.")
    unknown = set(backbone_arguments) - {option.keyword for option in BACKBONES.options()}
    if unknown:
        raise TypeError(f"netvlad() got unexpected keyword arguments {sorted(unknown)}")
    entry = BACKBONES[backbone]
    taken = {option.keyword for option in entry.options}
    features_of = entry.component(image_size=image_size, channels=channels,
                                  **{name: value for name, value in backbone_arguments.items() if name in taken})
    inputs = keras.Input(features_of.input_shape[1:], name="images")
    features = features_of(inputs)
    if pooling != "netvlad":
        pooled = GLOBAL_POOLINGS[pooling](dtype="float32", name="pooling")(features)
        outputs = L2Normalize(name="l2_normalize")(pooled)
        return keras.Model(inputs, outputs, name=f"{pooling}_pooling")
    outputs = NetVLAD(num_clusters, vladv2=vladv2, name=NETVLAD_LAYER)(features)
    if netvlad_dim is not None:
        # Not trained: fitted after training by PCA-whitening (the whitening step).
        outputs = layers.Dense(netvlad_dim, dtype="float32", trainable=False, name=WHITENING_LAYER)(outputs)
        outputs = L2Normalize(name="l2_normalize")(outputs)
    return keras.Model(inputs, outputs, name="netvlad")
