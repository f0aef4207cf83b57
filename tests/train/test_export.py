"""The [export] folder: transformers / PEFT load it back with the trained model's outputs, bit for
bit; `kerzoo export` writes the same folder from a checkpoint."""

import pytest
import torch
from safetensors.torch import load_file

from kerzoo.cli import main
from kerzoo.train.export import ExportError, export_path, export_run, write
from kerzoo.train.loop import Run

TEXTS = ["a fine film, truly great", "dull and far too long", "it was"]


def outputs(model, tokenizer):
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def trained(make_cfg, name, family, **over):
    run = Run(make_cfg(name, family, **over), progress=False)
    run.train()
    return run


@pytest.mark.parametrize("family,dtype", [("bert", "float32"), ("opt", "bfloat16")])
def test_a_full_fine_tuning_export_loads_back_with_the_same_outputs(
    make_cfg, tiny_models, family, dtype
):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    optimizer = {"preset": "mezo", "lr": 1e-2}
    run = trained(make_cfg, family, family, optimizer=optimizer, model={"dtype": dtype})
    folder = export_run(run)
    run.close()
    assert folder == run.out / "model"
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    cls = AutoModelForCausalLM if family == "opt" else AutoModel
    loaded = cls.from_pretrained(folder, dtype="auto").eval()  # the saved dtype
    assert next(loaded.parameters()).dtype == getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    mine = outputs(run.model, run.tokenizer)
    assert torch.equal(outputs(loaded, tokenizer), mine)
    base = cls.from_pretrained(tiny_models[family], dtype=getattr(torch, dtype)).eval()
    assert not torch.equal(outputs(base, tokenizer), mine)  # training changed the outputs
    run.model = loaded  # the same held-out accuracy through the run's own task
    assert run.evaluate()["eval_acc"] == run.summary()["last_acc"]


def test_a_lora_export_is_a_peft_adapter_folder_that_loads_onto_the_base(make_cfg, tiny_models):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    run = trained(
        make_cfg, "lora", "llama", model={"trainable": [], "lora": lora},
        optimizer={"preset": "mezo", "lr": 1e-1},
    )  # fmt: skip
    folder = export_run(run)
    run.close()
    assert folder == run.out / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in folder.iterdir()
    }
    assert not (folder / "model.safetensors").exists()  # the adapters only, not the base
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    before = outputs(base, tokenizer)
    loaded = PeftModel.from_pretrained(base, folder).eval()
    mine = outputs(run.model, run.tokenizer)
    assert torch.equal(outputs(loaded, tokenizer), mine)
    assert not torch.equal(before, mine)  # the adapters moved off their zero start


CONFIG = """
[model]
name = "{model}"
trainable = ["encoder.layer.1."]
[data]
eval_size = 24
[train]
steps = 4
batch_size = 4
eval_every = 2
checkpoint_every = 2
eval_batch_size = 24
out = "{out}"
[optimizer]
preset = "mezo"
lr = 1e-2
"""


def test_kerzoo_export_writes_the_folder_train_wrote_and_export_can_be_off(
    tiny_models, tmp_path, capsys
):
    out, path = tmp_path / "run", tmp_path / "c.toml"
    path.write_text(CONFIG.format(model=tiny_models["bert"], out=out))
    assert main(["train", str(path)]) == 0
    assert f"model:       {out / 'model'}/ (AutoModel.from_pretrained(FOLDER))" in (
        capsys.readouterr().out
    )
    at_the_end = load_file(out / "model" / "model.safetensors")
    assert main(["export", str(out), "--out", str(tmp_path / "again")]) == 0
    assert "(step 4) to" in capsys.readouterr().out
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert at_the_end.keys() == again.keys()
    assert all(torch.equal(at_the_end[k], again[k]) for k in again)
    (out / "model" / "model.safetensors").unlink()
    assert main(["export", str(out / "checkpoint.pt")]) == 0  # the run's export.path
    assert (out / "model" / "model.safetensors").exists()
    off = tmp_path / "off"
    assert (
        main(["train", str(path), "--set", "export.enabled=false", "--set", f"train.out={off}"])
        == 0
    )
    assert "model:" not in capsys.readouterr().out
    assert (off / "checkpoint.pt").exists() and not (off / "model").exists()
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "does not exist: give a run folder" in capsys.readouterr().err


def test_an_export_never_replaces_a_folder_it_did_not_write(tiny_models, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tiny_models["bert"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="is not a model folder written by save_pretrained"):
        write(model, tokenizer, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    run = tmp_path / "run"
    for where in (run, tmp_path):  # the run folder, or a folder above it
        with pytest.raises(ExportError, match="is the run folder"):
            write(model, tokenizer, where, guard=(run,))
    write(model, tokenizer, run / "model", guard=(run,))
    write(model, tokenizer, run / "model", guard=(run,))  # a previous export is replaced
    assert sorted(p.name for p in run.iterdir()) == ["model"]  # no temporary folder left


def test_export_path_resolves_auto_and_relative_paths():
    cfg = {"train": {"out": "runs/x"}, "model": {"lora": {}}, "export": {"path": "auto"}}
    assert str(export_path(cfg)) == "runs/x/model"
    cfg["model"]["lora"] = {"r": 4}
    assert str(export_path(cfg)) == "runs/x/adapter"
    cfg["export"]["path"] = "hf"
    assert str(export_path(cfg, out="elsewhere")) == "elsewhere/hf"
    cfg["export"]["path"] = "/abs/hf"
    assert str(export_path(cfg)) == "/abs/hf"


def test_kerzoo_export_refuses_a_folder_another_process_is_training_in(tmp_path, capsys):
    import subprocess
    import sys

    run = tmp_path / "busy"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not read: the lock is checked first")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from kerzoo.train.loop import lock_folder; "
            f"lock_folder(Path({str(run)!r})); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["export", str(run)]) == 2
        assert "is in use by another kerzoo train" in capsys.readouterr().err
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (run / "model").exists()
