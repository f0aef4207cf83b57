import json
from pathlib import Path

import pytest

from kerzoo.train import config as C

ROOT = Path(__file__).parents[2]


def test_a_typo_in_a_key_or_section_is_named_with_the_closest_name():
    with pytest.raises(C.ConfigError, match=r"train.stesp.*did you mean 'steps'"):
        C.validate({"train": {"stesp": 10}})
    with pytest.raises(C.ConfigError, match=r"\[trian\].*did you mean 'train'"):
        C.validate({"trian": {}})


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"train": {"steps": "ten"}}, "train.steps = 'ten': expected int"),
        ({"train": {"steps": 0}}, "train.steps must be >= 1, got 0"),
        (
            {"train": {"schedule": "cosin"}},
            "train.schedule = 'cosin' \\(did you mean 'cosine'\\?\\)",
        ),
        ({"model": {"dtype": "fp16"}}, "model.dtype = 'fp16'.*use one of float32"),
        ({"model": {"trainable": "encoder"}}, "model.trainable = 'encoder': expected list"),
        ({"model": {"trainable": [3]}}, "expected a list of strings"),
        ({"task": {"type": "regression"}}, "task.type = 'regression'"),
        (
            {"train": {"warmup_steps": 50, "steps": 10}},
            "warmup_steps = 50: must be in \\[0, train.steps = 10\\]",
        ),
        ({"model": {"trainable": ["x"], "lora": {"r": 4}}}, "exclusive"),
        ({"train": {"eval_every": True}}, "train.eval_every = True: expected int"),
    ],
)
def test_a_bad_value_is_an_error_naming_it(raw, message):
    with pytest.raises(C.ConfigError, match=message):
        C.validate(raw)


def test_toml_and_yaml_files_and_the_default_run(tmp_path):
    (tmp_path / "a.toml").write_text('[train]\nsteps = 7\n[optimizer]\npreset = "kerzoo"\n')
    (tmp_path / "a.yaml").write_text("train:\n  steps: 8\n  min_lr_factor: 0\n")
    assert C.load(tmp_path / "a.toml")["train"]["steps"] == 7
    assert C.load(tmp_path / "a.toml")["optimizer"] == {"preset": "kerzoo"}
    assert C.load(tmp_path / "a.yaml")["train"]["min_lr_factor"] == 0.0
    assert C.load(ROOT / "configs" / "default.toml") == C.load(None)
    assert C.load(None)["model"]["trainable"] == ["encoder.layer.4.", "encoder.layer.5."]
    assert (
        C.load(tmp_path / "a.toml")["model"]["trainable"] == []
    )  # a user config trains all by default


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.*ml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = C.load(path)
    assert cfg["train"]["steps"] >= 1


def test_resuming_with_a_config_that_changes_the_trajectory_is_detected():
    a = C.validate({})
    assert C.trajectory_changes(a, C.validate({"train": {"steps": 10, "out": "elsewhere"}})) == []
    changed = C.trajectory_changes(
        a, C.validate({"train": {"seed": 1}, "optimizer": {"preset": "kerzoo"}})
    )
    assert any(c.startswith("train.seed: 0 -> 1") for c in changed) and any(
        "optimizer" in c for c in changed
    )
    cosine = C.validate({"train": {"schedule": "cosine"}})
    assert C.trajectory_changes(
        cosine, C.validate({"train": {"schedule": "cosine", "steps": 5}})
    ) == ["train.steps: 2000 -> 5"]


def test_a_checkpoint_config_written_before_a_key_existed_reads_it_as_its_default():
    new = C.validate({"data": {"source": "d.jsonl"}})
    old = json.loads(json.dumps(new))
    for key in ("split", "eval_source", "eval_split", "prompt_key", "completion_key"):
        del old["data"][key]
    assert C.trajectory_changes(old, new) == []
    assert C.trajectory_changes(old, C.validate({"data": {"source": "d.jsonl", "split": "a"}}))


def test_model_device_resolves_and_a_missing_or_bad_device_is_named(monkeypatch):
    import torch

    from kerzoo.train.model import ModelError, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(
        ModelError, match=r"model.device = 'cuda:1', but this torch .* sees no CUDA device"
    ):
        resolve_device("cuda:1")
    with pytest.raises(ModelError, match=r"model.device = 'tpu' is not a device kerzoo trains on"):
        resolve_device("tpu")
    with pytest.raises(ModelError, match=r"model.device = 'gpu!' is not a device"):
        resolve_device("gpu!")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3)  # each torchrun rank on its own GPU


def test_set_overrides_are_read_as_toml_literals_and_checked_like_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nsteps = 7\n[optimizer]\npreset = "zo-adam"\nlr = 1e-3\n')
    cfg = C.load(
        path,
        [
            "train.steps=12",
            "train.schedule=cosine",  # not a TOML literal: the string as written
            'model.trainable=["encoder.layer.5."]',
            "model.lora.r=4",  # a nested key sets a table's entry
            "model.trainable=[]",  # a later override wins
            "optimizer.eps=2e-3",
            "log.tensorboard=true",
            'data.source="out/d.jsonl"',
        ],
    )
    assert cfg["train"]["steps"] == 12 and cfg["train"]["schedule"] == "cosine"
    assert cfg["model"]["lora"] == {"r": 4} and cfg["model"]["trainable"] == []
    assert cfg["optimizer"] == {"preset": "zo-adam", "lr": 1e-3, "eps": 2e-3}
    assert cfg["log"]["tensorboard"] is True and cfg["data"]["source"] == "out/d.jsonl"
    # the default run (no file): an [optimizer] key is set over the default method's table
    cfg = C.load(None, ["optimizer.lr=1e-3", "train.out=runs/x"])
    assert cfg["optimizer"] == {**C.DEFAULT_OPTIMIZER, "lr": 1e-3}
    assert cfg["model"]["trainable"] == C.DEFAULT_RUN["model"]["trainable"]
    assert cfg["train"]["out"] == "runs/x"


@pytest.mark.parametrize(
    "item,message",
    [
        ("train.stesp=3", r"unknown key train.stesp \(did you mean 'steps'\?\)"),
        ("trian.steps=3", r"unknown config section \[trian\] \(did you mean 'train'\?\)"),
        ("train.steps=ten", "train.steps = 'ten': expected int"),
        ("train.steps=1.5", "train.steps = 1.5: expected int"),
        ("log.tensorboard=yes", "log.tensorboard = 'yes': expected bool"),
        ("train.steps", "write section.key=value"),
        ("steps=3", "write section.key=value"),
        ("train.steps.x=3", r"train.steps is 7, not a table"),
    ],
)
def test_a_bad_override_is_the_error_a_file_gives(tmp_path, item, message):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nsteps = 7\n")
    with pytest.raises(C.ConfigError, match=message):
        C.load(path, [item])


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"model": {"load_in_8bit": True}}, "model.load_in_8bit = true needs model.lora"),
        ({"model": {"load_in_4bit": True}}, "model.load_in_4bit = true needs model.lora"),
        (
            {"model": {"load_in_8bit": True, "load_in_4bit": True, "lora": {"r": 4}}},
            "exclusive",
        ),
        ({"model": {"device_map": 0}}, "model.device_map = 0: expected str"),
        ({"export": {"path": " "}}, "export.enabled = false writes none"),
        ({"export": {"enabeld": False}}, "did you mean 'enabled'"),
        ({"log": {"tensorboard": 1}}, "log.tensorboard = 1: expected bool"),
    ],
)
def test_bad_model_placement_log_and_export_keys_are_named(raw, message):
    with pytest.raises(C.ConfigError, match=message):
        C.validate(raw)


def test_a_checkpoint_config_without_the_newer_keys_continues_the_same_trajectory():
    new = C.validate({})
    old = {s: dict(v) for s, v in new.items()}
    for key in ("load_in_8bit", "load_in_4bit", "device_map"):
        del old["model"][key]
    assert C.trajectory_changes(old, new) == []
    new["model"]["device_map"] = "cpu"
    (change,) = C.trajectory_changes(old, new)
    assert change.startswith("model: ") and "'device_map': 'cpu'" in change
