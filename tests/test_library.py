"""The library stands on its own: components built from keyword arguments, no params object below the edge.

`model.params` (the params.json schema) and `model.app` (the adapter and the commands' bodies) are the
application edge; everything else is the library, usable from plain Keras code.
"""

import ast
import os
import subprocess
import sys
import textwrap

import pytest

from model.registry import FLOAT, INT, NONE, Option, OptionError, Registry, merge_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDGE = ("model/params.py", "model/app/")


def _library_files():
    for folder, _, files in os.walk(os.path.join(ROOT, "model")):
        for name in files:
            path = os.path.relpath(os.path.join(folder, name), ROOT)
            if name.endswith(".py") and not path.startswith(EDGE):
                yield path


def test_no_library_module_imports_the_application_edge():
    offenders = []
    for path in _library_files():
        with open(os.path.join(ROOT, path)) as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            offenders += [(path, name) for name in names if name == "model.params" or name.startswith("model.app")]
    assert offenders == []


def test_no_library_function_takes_a_params_argument():
    taking = []
    for path in _library_files():
        with open(os.path.join(ROOT, path)) as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                taking += [(path, getattr(node, "name", "lambda")) for argument in arguments
                           if argument.arg == "params"]
    assert taking == []


def test_a_network_batches_a_loss_and_an_evaluator_from_keyword_arguments_without_params():
    """In a fresh process: digits, a P×K dataset, the MNIST convnet, batch-all in `model.compile`, a few
    hundred steps of plain Keras `fit`, then the labels protocol's evaluation: far above chance, and neither
    `model.params` nor `model.app` was imported."""
    script = textwrap.dedent("""
        import sys
        import keras
        from model.data import TrainingBatches, load_source
        from model.evaluation.protocols import PROTOCOLS
        from model.losses import BatchAllTripletLoss
        from model.nets.convnet import mnist_convnet
        from model.retrieval.embed import embed_split

        keras.utils.set_random_seed(0)
        source = load_source("digits", validation_size=100, seed=0)
        batches = TrainingBatches(image_size=8, channels=1, classes_per_batch=10, images_per_class=8, seed=0)
        network = mnist_convnet(image_size=8, channels=1, embedding_size=16, num_channels=8)
        network.compile(optimizer=keras.optimizers.Adam(3e-3), loss=BatchAllTripletLoss(margin=0.5))
        network.fit(batches.dataset(source.splits["train"]), steps_per_epoch=150, epochs=1, verbose=0)
        protocol = PROTOCOLS["labels"].component()
        results = protocol.evaluate(source.splits, "test",
                                    lambda split: embed_split(network, split, image_size=8, channels=1, verbose=False))
        edge = sorted(name for name in sys.modules if name == "model.params" or name.startswith("model.app"))
        print("RESULT", results["vs_train"]["precision_at_1"], edge)
    """)
    finished = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    line = next(line for line in finished.stdout.splitlines() if line.startswith("RESULT"))
    _, precision, edge = line.split(" ", 2)
    assert edge == "[]"
    assert float(precision) > 0.8  # chance is 0.1 for ten balanced digits


def test_an_option_checks_type_choices_bounds_and_its_own_rule():
    def even(value):
        if value % 2:
            raise OptionError("size", value, "an even number")

    option = Option("size", (INT, NONE), None, "a size", positive=True, check=even)
    for value in (None, 2, 4):
        option.validate(value)
    for value, expected in ((1.5, "integer or null"), (True, "integer or null"), (0, "a number > 0"),
                            (3, "an even number"), (float("nan"), "a finite number")):
        with pytest.raises(OptionError, match=f'key "size" has value .*; expected {expected}'):
            option.validate(value)
    choice = Option("kind", (str,), "a", "a kind", choices=("alpha", "beta"))
    with pytest.raises(OptionError, match=r'expected one of alpha, beta \(did you mean "alpha"\?\)'):
        choice.validate("alpah")
    with pytest.raises(OptionError, match=r'"rate" has value inf; expected a finite number'):
        Option("rate", (FLOAT,), 1.0, "").validate(float("inf"))


def test_a_registry_names_its_components_suggests_and_maps_options_to_arguments():
    things = Registry("thing", key="thing", default="cube", meaning="a thing")
    side = Option("side", (INT,), 1, "side length", argument="length")

    @things.register("cube", options=(side,), corners=8)
    def cube(length=1):
        return length**3

    assert things.names() == ("cube",) and "cube" in things and things["cube"].corners == 8
    assert things.arguments("cube", {"side": 3, "other": 0}) == {"length": 3}
    assert things["cube"].component(**things.arguments("cube", {"side": 3})) == 27
    with pytest.raises(ValueError, match=r"Unknown thing 'cueb'. Valid things: cube. Did you mean \"cube\"\?"):
        things["cueb"]
    with pytest.raises(ValueError, match="registered twice"):
        things.register("cube")(cube)
    assert things.selector().valid_choices() == ("cube",)


def test_a_key_declared_twice_must_be_declared_alike():
    first = Option("margin", (FLOAT,), 0.5, "margin")
    assert merge_options([first, Option("margin", (FLOAT,), 0.5, "margin")]) == (first,)
    with pytest.raises(ValueError, match='key "margin" is declared twice, differently'):
        merge_options([first, Option("margin", (FLOAT,), 1.0, "margin")])


def test_the_params_choices_are_the_registries_names():
    from model.data import DATASETS
    from model.losses import LOSSES
    from model.nets import BACKBONES, NETWORKS, POOLINGS
    from model.params import SCHEMA
    from model.training import MINING
    from model.training.distribute import STRATEGIES
    from model.training.optimization import OPTIMIZERS

    for key, names in (("model", NETWORKS.names()), ("loss", LOSSES.names()), ("dataset", DATASETS.names()),
                       ("optimizer", OPTIMIZERS.names()), ("backbone", BACKBONES.names()), ("pooling", POOLINGS),
                       ("mining", MINING), ("distribute", tuple(STRATEGIES))):
        assert SCHEMA[key].valid_choices() == tuple(names), key
