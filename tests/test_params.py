"""params.json schema: defaults, validation errors that name the key, value and expectation."""

import json

import pytest

from model.params import SCHEMA, Params, describe


def test_defaults_fill_every_key_and_save_round_trips(tmp_path):
    params = Params.from_dict({"learning_rate": 0.01})
    assert params.learning_rate == 0.01
    assert params.margin == SCHEMA["margin"].default
    assert set(params.to_dict()) == set(SCHEMA) - {"triplet_strategy"}
    path = tmp_path / "effective.json"
    params.save(str(path))
    assert Params.load(str(path)).to_dict() == params.to_dict()


def test_unknown_key_suggests_the_closest(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"learning_rat": 0.1}))
    with pytest.raises(ValueError, match=r'params.json: unknown key "learning_rat". Did you mean "learning_rate"\?'):
        Params.load(str(path))


@pytest.mark.parametrize(
    "values,message",
    [
        ({"learning_rate": "fast"}, r'"learning_rate" has value \'fast\'; expected number'),
        ({"num_epochs": 0}, r'"num_epochs" has value 0; expected a number > 0'),
        ({"use_batch_norm": 1}, r'"use_batch_norm" has value 1; expected true/false'),
        ({"num_epochs": True}, r'"num_epochs" has value True; expected integer'),
        ({"loss": "batch_hrad"}, r'did you mean "batch_hard"'),
        ({"margin": "hard"}, r'"margin" has value \'hard\''),
        ({"margin": -0.1}, r"expected a number >= 0"),
        ({"image_size": [28]}, r"\[height, width\]"),
        ({"channels": 2}, r"1 or 3"),
        ({"conv_blocks": 0}, r'"conv_blocks" has value 0; expected a number > 0'),
        ({"conv_blocks": 2.5}, r'"conv_blocks" has value 2.5; expected integer'),
        ({"dropout": 1.0}, r'"dropout" has value 1.0; expected a number in \[0, 1\)'),
        ({"dropout": -0.1}, r'"dropout" has value -0.1; expected a number >= 0'),
        ({"classes_per_batch": 4}, r"go together"),
        ({"margin": "soft"}, r'only defined for loss "batch_hard"'),
        ({"lr_schedule": {"type": "exponential", "decay_steps": 10}}, r"takes decay_rate, decay_start, decay_steps"),
        ({"lr_schedule": {"type": "cosine"}}, r'"type" one of constant, exponential, step'),
        ({"augment": {"flip": True, "rotate": 10}}, r"unknown: 'rotate'"),
        ({"augment": {"flip": "yes"}}, r'"augment.flip" has value \'yes\''),
        ({"loss": "batch_all", "triplet_strategy": "batch_hard"}, r"alias"),
        ({"pooling": "sum"}, r'"pooling" has value \'sum\'; expected one of netvlad, max, avg'),
        ({"pooling": "avg", "netvlad_dim": 256}, r'"netvlad_dim" \(256\) whitens NetVLAD.*"pooling" .avg.'),
        ({"backbone": "alexnett"}, r'did you mean "alexnet"'),
        ({"dataset": "cub"}, r"one of .*cub200"),
        ({"classification": {"weight": 0}}, r'"classification.weight" has value 0; expected a number > 0'),
        ({"classification": {"wieght": 1.0}},
         r'"classification" has an unknown key "wieght" \(did you mean "weight"\?\); expected an object '
         r'\{"weight": w\}'),
        ({"memory": {"size": 8, "warmpu_steps": 0}}, r'"memory" has an unknown key "warmpu_steps" \(did you mean '
                                                      r'"warmup_steps"\?\); expected an object \{"size": S'),
        ({"loss": "softmax", "classification": {"weight": 1.0}}, r'drop "classification" or choose a metric loss'),
        ({"loss_options": {"hinge": "squared"}}, r'"loss_options.hinge" has value .squared.; expected one of distance'),
        ({"loss_options": {"reduction": 1}}, r'"loss_options.reduction" has value 1; expected one of nonzero, all'),
        ({"loss_options": {"positives": "most"}}, r'"loss_options.positives" .*expected one of hardest, all'),
        ({"loss_options": {"alpha": "two"}}, r'"loss_options.alpha" has value .two.; expected a number or true/false'),
    ],
)
def test_bad_values_name_key_value_and_expectation(values, message):
    with pytest.raises(ValueError, match=message):
        Params.from_dict(values)


def test_classic_names_are_accepted():
    params = Params.from_dict({"triplet_strategy": "batch_hard", "margin": "soft", "num_labels": 10})
    assert params.loss == "batch_hard" and params.margin == "soft"
    assert "triplet_strategy" not in params.to_dict()


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        Params.load(str(tmp_path / "nowhere.json"))
    bad = tmp_path / "params.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="params.json: not valid JSON"):
        Params.load(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        Params.load(str(bad))


def test_every_shipped_experiment_is_valid():
    import glob

    paths = glob.glob("experiments/*/params.json")
    assert paths, "no experiments found"
    for path in paths:
        Params.load(path)


def test_describe_lists_every_key():
    table = describe()
    for key in SCHEMA:
        assert f"| `{key}` |" in table
