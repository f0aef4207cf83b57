"""model.device_map / load_in_8bit / load_in_4bit (placement at load) and log.tensorboard."""

import importlib.util
import math

import pytest
import torch
from conftest import params

from kerzoo.train.config import ConfigError
from kerzoo.train.loop import Run, read_jsonl
from kerzoo.train.model import ModelError, load_model, placement


def missing(*names):
    real = importlib.util.find_spec
    return lambda name, *a, **k: None if name in names else real(name, *a, **k)


def test_device_map_cpu_places_the_model_and_trains_as_without_it(make_cfg, monkeypatch):
    pytest.importorskip("accelerate")
    from transformers import AutoModel

    plain = Run(make_cfg("plain"), progress=False)
    plain.train()
    seen, load = [], AutoModel.from_pretrained
    monkeypatch.setattr(
        AutoModel, "from_pretrained", lambda *a, **k: seen.append(k) or load(*a, **k)
    )
    mapped = Run(make_cfg("mapped", model={"device_map": "cpu"}), progress=False)
    assert [k.get("device_map") for k in seen] == ["cpu"]
    assert {p.device.type for p in mapped.model.parameters()} == {"cpu"}
    mapped.train()
    a, b = params(plain), params(mapped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_device_map_without_accelerate_names_the_package_and_extra(make_cfg, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", missing("accelerate"))
    cfg = make_cfg(model={"device_map": "auto"})["model"]
    with pytest.raises(
        ModelError, match=r"model.device_map needs the accelerate package.*kerzoo\[hf\]"
    ):
        load_model(cfg, torch.device("cpu"))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantization_without_bitsandbytes_or_a_gpu_is_refused_before_loading(
    make_cfg, monkeypatch, bits
):
    cfg = make_cfg(model={"trainable": [], "lora": {"r": 4}, f"load_in_{bits}bit": True})["model"]
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(
            ModelError,
            match=rf"model.load_in_{bits}bit needs the bitsandbytes package \(and a CUDA GPU\).*"
            r"kerzoo\[quant\]",
        ):
            load_model(cfg, torch.device("cpu"))
    real = importlib.util.find_spec  # bitsandbytes "installed": a CPU device is still refused
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a, **k: object() if n == "bitsandbytes" else real(n)
    )
    with pytest.raises(ModelError, match=r"quantizes with bitsandbytes on a CUDA GPU.*cpu"):
        placement(cfg, torch.float32, torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_4bit_config_is_passed_to_from_pretrained(make_cfg):
    pytest.importorskip("bitsandbytes")
    cfg = make_cfg(model={"trainable": [], "lora": {"r": 4}, "load_in_4bit": True})["model"]
    out = placement(cfg, torch.bfloat16, torch.device("cuda", 0))
    q = out["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_compute_dtype == torch.bfloat16
    assert out["device_map"] == {"": torch.device("cuda", 0)}


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_the_metrics_records_scalars(make_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = make_cfg("tb", log={"tensorboard": True}, optimizer={"preset": "mezo", "lr": 1e-3})
    stopped = Run(cfg, progress=False)
    stopped.train(stop_at=4)  # checkpoint at 3, step 4 logged after it
    stopped.close()
    resumed = Run(cfg, progress=False)  # resumes at 3: the events of step 4 on are purged
    resumed.train()
    resumed.close()
    rows = read_jsonl(tmp_path / "tb" / "metrics.jsonl")
    got = scalars(tmp_path / "tb" / "tensorboard")
    assert set(got) == {"train/loss", "train/lr", "train/projected_grad", "eval/acc"}
    for key, tag in [
        ("loss", "train/loss"),
        ("lr", "train/lr"),
        ("projected_grad", "train/projected_grad"),
        ("eval_acc", "eval/acc"),
    ]:
        want = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        assert [s for s, _ in got[tag]] == [s for s, _ in want], tag  # each step once
        for (_, v), (_, w) in zip(got[tag], want):
            assert v == pytest.approx(w, rel=1e-6, abs=1e-12)  # stored as float32
    assert [s for s, _ in got["eval/acc"]] == [0, 3, 6]
    assert all(math.isfinite(r["projected_grad"]) for r in rows if "loss" in r)
    assert len(list((tmp_path / "tb" / "tensorboard").iterdir())) == 2  # the run and its resume
    Run(cfg, resume=False, progress=False).close()  # a fresh start drops the old events
    assert len(list((tmp_path / "tb" / "tensorboard").iterdir())) == 1


def test_tensorboard_missing_is_an_error_naming_the_extra(make_cfg, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"needs the tensorboard package.*kerzoo\[tensorboard\]"):
        Run(make_cfg("tb-missing", log={"tensorboard": True}), progress=False)
