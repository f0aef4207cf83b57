import json
import math
from pathlib import Path

import pytest
import torch

from kerzoo.train import config as C
from kerzoo.train import data as D
from kerzoo.train.loop import CHECKPOINT, Run, TrainingError, load_checkpoint, plot
from kerzoo.train.model import ModelError, trainable_state
from kerzoo.train.replay import replay
from kerzoo.train.tasks import TaskError

SMALL = {"model": {"trainable": ["encoder.layer.5.attention.self.query."]},
         "data": {"eval_size": 24},
         "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3, "eval_batch_size": 24}}


def cfg(tmp_path, **over):
    raw = json.loads(json.dumps(SMALL))
    raw["train"]["out"] = str(tmp_path / "run")
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    return C.validate(raw)


def params(run):
    return {k: v.clone() for k, v in trainable_state(run.model).items()}


def test_config_typo_is_named_with_suggestion():
    with pytest.raises(C.ConfigError, match=r"train.stesp.*did you mean 'steps'"):
        C.validate({"train": {"stesp": 10}})
    with pytest.raises(C.ConfigError, match=r"\[trian\].*did you mean 'train'"):
        C.validate({"trian": {}})
    with pytest.raises(C.ConfigError, match="train.steps = 'ten': expected int"):
        C.validate({"train": {"steps": "ten"}})


def test_config_files_toml_and_yaml(tmp_path):
    (tmp_path / "a.toml").write_text('[train]\nsteps = 7\n[optimizer]\npreset = "kerzoo"\n')
    (tmp_path / "a.yaml").write_text("train:\n  steps: 8\n")
    assert C.load(tmp_path / "a.toml")["train"]["steps"] == 7
    assert C.load(tmp_path / "a.toml")["optimizer"] == {"preset": "kerzoo"}
    assert C.load(tmp_path / "a.yaml")["train"]["steps"] == 8
    assert C.load(Path(__file__).parents[2] / "configs" / "default.toml") == C.load(None)


def test_builtin_task_has_over_a_thousand_labelled_words():
    ex = D.load_examples("vader-polarity")
    assert len(ex) > 1000 and {e["label"] for e in ex} == {0, 1}
    assert {"text": "good", "label": 1} in ex and {"text": "awful", "label": 0} in ex


def test_jsonl_and_csv_and_bad_data(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"sentence": "fine", "y": 1}\n{"sentence": "bad", "y": 0}\n')
    (tmp_path / "d.csv").write_text("text,label\nfine,1\nbad,0\n")
    assert D.load_examples(str(tmp_path / "d.jsonl"), "sentence", "y")[0] == {"text": "fine", "label": 1}
    assert D.load_examples(str(tmp_path / "d.csv"))[1] == {"text": "bad", "label": 0}
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(D.DataError, match="holds no example"):
        D.load_examples(str(tmp_path / "empty.jsonl"))
    with pytest.raises(D.DataError, match="lacks the field\\(s\\) 'text', 'label'"):
        D.load_examples(str(tmp_path / "d.jsonl"))
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_examples(str(tmp_path / "missing.jsonl"))


def test_missing_model_folder_is_a_clear_error(tmp_path):
    c = cfg(tmp_path, model={"name": str(tmp_path / "no-such-model")})
    with pytest.raises(ModelError, match="no-such-model.*config.json"):
        Run(c, progress=False)
    c = cfg(tmp_path, model={"trainable": ["decoder.nothing."]})
    with pytest.raises(ModelError, match="matches no parameter"):
        Run(c, progress=False)


def test_resume_after_a_stop_is_bit_exact_and_replay_rebuilds_the_weights(tmp_path):
    straight = Run(cfg(tmp_path / "a"), resume=False, progress=False)
    straight.train()
    stopped = Run(cfg(tmp_path / "b"), resume=False, progress=False)
    stopped.train(stop_at=3)
    resumed = Run(cfg(tmp_path / "b"), resume=True, progress=False)
    assert resumed.step == 3
    resumed.train()
    a, b = params(straight), params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], v) for k, v in trainable_state(Run(cfg(tmp_path / "c"), progress=False).model).items())
    # the trajectory log of the resumed run has each step once, and rebuilds the weights
    log = tmp_path / "b" / "run" / "trajectory.jsonl"
    steps = [json.loads(line).get("step") for line in log.read_text().splitlines()[1:]]
    assert steps == list(range(6))
    model, n = replay(None, log)
    assert n == 6 and all(torch.equal(trainable_state(model)[k], a[k]) for k in a)
    metrics = [json.loads(line) for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(7)) and "eval_acc" in metrics[0]
    assert plot(tmp_path / "b" / "run" / "metrics.jsonl", tmp_path / "p.png").stat().st_size > 1000


def test_corrupt_checkpoint_is_refused_and_kept(tmp_path):
    c = cfg(tmp_path)
    Path(c["train"]["out"]).mkdir(parents=True)
    ck = Path(c["train"]["out"]) / CHECKPOINT
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="corrupt"):
        Run(c, progress=False)
    assert ck.read_bytes() == b"not a checkpoint"  # nothing lost


def test_nan_streak_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    run = Run(cfg(tmp_path, train={"max_nan_streak": 2, "steps": 20}), resume=False, progress=False)
    run.train(stop_at=3)  # a checkpoint at step 3
    good = load_checkpoint(run.out / CHECKPOINT)
    monkeypatch.setattr(run.task, "loss", lambda model, batch: torch.tensor(math.nan))
    with pytest.warns(RuntimeWarning, match="non-finite"), pytest.raises(TrainingError, match="non-finite loss"):
        run.train()
    kept = load_checkpoint(run.out / CHECKPOINT)
    assert kept["step"] == 3 and all(torch.equal(kept["params"][k], v) for k, v in good["params"].items())


def tiny_causal(tmp_path, family="opt"):
    """A 2-layer causal LM of an OPT-style or LLaMA-style config, random weights, saved to a folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from kerzoo.train.model import resolve_path

    tok = AutoTokenizer.from_pretrained(resolve_path("builtin:all-minilm-l6-v2"))
    if family == "opt":
        config = OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64,
                           architectures=["OPTForCausalLM"])
        model = OPTForCausalLM
    else:
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
                             architectures=["LlamaForCausalLM"])
        model = LlamaForCausalLM
    torch.manual_seed(0)
    folder = tmp_path / f"tiny-{family}"
    model(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("family,top", [("opt", "model.decoder.layers.1."), ("llama", "model.layers.1.")])
def test_causal_lm_classification_trains_and_checks_label_words(tmp_path, family, top):
    folder = tiny_causal(tmp_path, family)
    c = cfg(tmp_path, model={"name": folder, "trainable": [top]}, task={"template": "{text} it was"})
    run = Run(c, resume=False, progress=False)
    assert run.kind == "causal"
    before = params(run)
    run.train()
    assert run.step == 6
    assert any(not torch.equal(before[k], v) for k, v in params(run).items())
    bad = cfg(tmp_path / "x", model={"name": folder, "trainable": []},
              task={"label_words": ["terrible", "supercalifragilistic"]})
    with pytest.raises(TaskError, match="'supercalifragilistic' is .* tokens"):
        Run(bad, progress=False)


def test_lora_through_peft(tmp_path):
    c = cfg(tmp_path, model={"trainable": [], "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}})
    run = Run(c, resume=False, progress=False)
    names = list(trainable_state(run.model))
    assert names and all("lora_" in n for n in names)
    before = params(run)
    run.train()
    assert any(not torch.equal(before[k], v) for k, v in params(run).items())


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_multiple_choice_and_lm_tasks_train_on_tiny_causal_lms(tmp_path, family):
    folder = tiny_causal(tmp_path, family)
    words = ["good", "bad", "happy", "sad", "great", "awful", "nice", "poor"]
    mc = [{"question": f"{w} means", "choices": ["yes", "no", "maybe"], "gold": i % 3} for i, w in enumerate(words * 5)]
    lm = [{"text": f"the word is {w}", "target": w} for w in words * 5]
    for task, source, data in (
        ("multiple_choice", write_jsonl(tmp_path / "mc.jsonl", mc),
         {"text_key": "question", "options_key": "choices", "label_key": "gold"}),
        ("lm", write_jsonl(tmp_path / "lm.jsonl", lm), {"answer_key": "target"}),
    ):
        c = cfg(tmp_path / task, model={"name": folder, "trainable": []},
                data={"source": source, "eval_size": 8, **data}, task={"type": task},
                train={"eval_batch_size": 8})
        run = Run(c, resume=False, progress=False)
        before = params(run)
        result = run.train()
        assert 0.0 <= result["first_acc"] <= 1.0 and run.step == 6
        assert any(not torch.equal(before[k], v) for k, v in params(run).items())
        if task == "multiple_choice":  # the task's logits are mean log-likelihoods per option
            logits = run.task.logits(run.model, run.eval_set[:2])
            assert logits.shape == (2, 3) and torch.all(logits < 0)


def test_multiple_choice_needs_a_causal_lm(tmp_path):
    rows = [{"text": "x", "options": ["a", "b"], "label": 0}] * 30
    c = cfg(tmp_path, data={"source": write_jsonl(tmp_path / "mc.jsonl", rows)}, task={"type": "multiple_choice"})
    with pytest.raises(TaskError, match="needs a causal LM"):
        Run(c, progress=False)


def test_hf_dataset_saved_on_disk(tmp_path):
    datasets = pytest.importorskip("datasets", reason="reading saved HF datasets needs `pip install datasets`")
    ds = datasets.Dataset.from_list([{"sentence": "fine", "y": 1}, {"sentence": "bad", "y": 0}])
    ds.save_to_disk(str(tmp_path / "saved"))
    ex = D.load_examples(str(tmp_path / "saved"), "sentence", "y")
    assert ex == [{"text": "fine", "label": 1}, {"text": "bad", "label": 0}]
