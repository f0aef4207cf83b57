"""The LM tasks (causal_lm over the whole text, sft on the completion only): their losses are
the mean token negative log-likelihood that transformers computes from labels with the masked
tokens at -100, and evaluation reports that loss and its perplexity."""

import copy
import json
import math

import pytest
import torch
from conftest import params, write_jsonl

from kerzoo.cli import main
from kerzoo.train import config as C
from kerzoo.train.data import DataError
from kerzoo.train.loop import Run, read_jsonl
from kerzoo.train.model import load_model
from kerzoo.train.tasks import TaskError, make_task

WORDS = ["good", "bad", "happy", "sad", "great", "awful", "nice", "poor"]
SFT_ROWS = [
    {"prompt": f"Q: what is {w}? A:", "completion": f" {w} is a word" + " indeed" * (i % 3)}
    for i, w in enumerate(WORDS * 4)
]


def _model(tiny_models, family):
    cfg = {**C.defaults()["model"], "name": tiny_models[family]}
    return load_model(cfg, torch.device("cpu"))


def _task(kind_of_task, tok, kind, examples, **over):
    return make_task({**C.defaults()["task"], "type": kind_of_task, **over}, tok, kind, examples)


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_causal_lm_loss_is_transformers_loss_with_the_padding_masked(tiny_models, family):
    model, tok, kind = _model(tiny_models, family)
    batch = [{"text": "a"}, {"text": "the word is good and it is nice"}, {"text": "sad words"}]
    task = _task("causal_lm", tok, kind, batch)
    with torch.no_grad():
        total, weight = task.loss_sum(model, batch)
    enc = tok([ex["text"] for ex in batch], padding=True, return_tensors="pt")
    assert enc["attention_mask"].min() == 0  # the batch is padded
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        want = model(**enc, labels=labels).loss
    torch.testing.assert_close(total / weight, want, rtol=1e-5, atol=1e-6)
    assert weight == int(enc["attention_mask"].sum()) - len(batch)  # all but each first token
    scores = task.score(model, batch)
    assert scores["loss"][1] == weight
    torch.testing.assert_close(scores["loss"][0], float(total), rtol=1e-5, atol=1e-5)


def test_sft_scores_the_completion_only_and_ends_it_with_eos(tiny_models):
    model, tok, kind = _model(tiny_models, "opt")
    batch = SFT_ROWS[:5]
    task = _task("sft", tok, kind, batch)
    with torch.no_grad():
        total, weight = task.loss_sum(model, batch)
    want_sum, want_count = 0.0, 0
    for ex in batch:  # one example at a time, no padding; the prompt's labels are -100
        prompt = tok(ex["prompt"])["input_ids"]
        ids = torch.tensor([prompt + tok(ex["completion"], add_special_tokens=False)["input_ids"]])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        n = ids.shape[1] - len(prompt)
        want_sum, want_count = want_sum + float(loss) * n, want_count + n
    assert weight == want_count
    assert float(total) / weight == pytest.approx(want_sum / want_count, rel=1e-5)
    # another prompt changes the loss but not what is scored
    other = [{**ex, "prompt": "Tell me:"} for ex in batch]
    with torch.no_grad():
        total2, weight2 = task.loss_sum(model, other)
    assert weight2 == weight and not torch.isclose(total2, total)
    # a tokenizer with an EOS token: the completion ends with it, and it is scored
    tok2 = copy.deepcopy(tok)
    tok2.eos_token = "[SEP]"
    rows, starts = _task("sft", tok2, kind, batch).rows(batch)
    assert all(r[-1] == tok2.eos_token_id for r in rows)
    assert sum(len(r) - s for r, s in zip(rows, starts)) == weight + len(batch)


@pytest.mark.parametrize("task", ["causal_lm", "sft"])
def test_an_encoder_is_refused_for_the_lm_tasks(make_cfg, tmp_path, task):
    rows = [{"text": f"the word {w}", **r} for w, r in zip(WORDS * 4, SFT_ROWS)]
    with pytest.raises(
        TaskError,
        match=rf"task.type = '{task}' needs a causal LM .*this model is an encoder: set "
        r"model.name to a causal LM",
    ):
        Run(
            make_cfg(data={"source": write_jsonl(tmp_path / "d.jsonl", rows)}, task={"type": task}),
            progress=False,
        )


def test_a_template_with_another_placeholder_is_refused(tiny_models):
    _, tok, kind = _model(tiny_models, "opt")
    with pytest.raises(TaskError, match=r"placeholder other than \{text\} \(KeyError\('question'"):
        _task("sft", tok, kind, SFT_ROWS, template="{question}: {text}")
    assert _task("sft", tok, kind, SFT_ROWS, template="{{x}} {text}").prompt("a") == "{x} a"


def test_bad_sft_data_names_the_field_and_the_fix(make_cfg, tmp_path):
    def run(rows, **data):
        source = write_jsonl(tmp_path / "d.jsonl", rows)
        return Run(
            make_cfg(family="opt", data={"source": source, **data}, task={"type": "sft"}),
            progress=False,
        )

    with pytest.raises(
        DataError, match=r"d.jsonl:1 lacks the field\(s\) 'reply'.*data.completion_key"
    ):
        run(SFT_ROWS, completion_key="reply")
    with pytest.raises(
        DataError, match=r"d.jsonl:3 has completion = None: a text must be a string"
    ):
        run([*SFT_ROWS[:2], {"prompt": "x", "completion": None}, *SFT_ROWS[2:]])
    with pytest.raises(TaskError, match=r"task.type = 'sft': example \d+ has an empty completion"):
        run([*SFT_ROWS[:2], {"prompt": "x", "completion": "  "}, *SFT_ROWS[2:]])


@pytest.mark.parametrize("task", ["causal_lm", "sft"])
def test_lm_tasks_train_and_report_eval_loss_and_perplexity(make_cfg, tmp_path, task):
    rows = [{"text": f"{r['prompt']}{r['completion']}", **r} for r in SFT_ROWS]
    run = Run(
        make_cfg(
            task,
            family="opt",
            data={"source": write_jsonl(tmp_path / "d.jsonl", rows), "eval_size": 8},
            task={"type": task},
            # evaluation chunks of 3, 3 and 2: their sums add up
            train={"steps": 2, "eval_every": 1, "checkpoint_every": 2, "eval_batch_size": 3},
        ),
        progress=False,
    )
    before = params(run)
    with torch.no_grad():
        total, weight = run.task.loss_sum(run.model, run.eval_set)
    first = run.evaluate()
    assert set(first) == {"eval_acc", "eval_loss", "eval_ppl"}
    assert first["eval_loss"] == pytest.approx(float(total) / weight, rel=1e-5)
    result = run.train()
    assert any(not torch.equal(before[k], v) for k, v in params(run).items())
    evals = [r for r in read_jsonl(run.metrics_path) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    for r in evals:
        assert r["eval_ppl"] == pytest.approx(math.exp(r["eval_loss"]))
    assert result["first_loss"] == pytest.approx(first["eval_loss"])
    assert result["last_loss"] == evals[-1]["eval_loss"] != result["first_loss"]
    assert result["last_ppl"] == evals[-1]["eval_ppl"]


def test_classification_reports_accuracy_only(make_cfg):
    run = Run(make_cfg(train={"steps": 1, "checkpoint_every": 1}), progress=False)
    assert set(run.evaluate()) == {"eval_acc"}
    run.train()
    summary = run.summary()
    assert summary["first_acc"] is not None and summary["first_loss"] is summary["last_ppl"] is None
    assert not any("eval_loss" in r for r in read_jsonl(run.metrics_path))


def test_kerzoo_train_sft_on_dataset_dict_splits(tiny_models, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "dict"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(SFT_ROWS[:24]),
            "validation": datasets.Dataset.from_list(SFT_ROWS[24:]),
        }
    ).save_to_disk(str(folder))
    config = {
        "model": {"name": tiny_models["opt"], "trainable": ["model.decoder.layers.1."]},
        "data": {"source": str(folder), "split": "train", "eval_split": "validation"},
        "task": {"type": "sft"},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "out": str(tmp_path / "run")},
    }
    (tmp_path / "c.json").write_text(json.dumps(config))  # JSON is YAML
    (tmp_path / "c.yaml").write_text((tmp_path / "c.json").read_text())
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "24 training and 8 evaluation examples (from " in out and "[validation])" in out
    assert "eval token accuracy:" in out and "eval loss:" in out and "(perplexity " in out
    config["data"]["split"] = ""
    config["train"]["out"] = str(tmp_path / "other")
    (tmp_path / "c.yaml").write_text(json.dumps(config))
    assert main(["train", str(tmp_path / "c.yaml"), "--fresh"]) == 2
    assert "splits ['train', 'validation']: choose one with data.split" in capsys.readouterr().err
    # the refused run let go of its folder: it was no run that was killed
    assert (tmp_path / "other" / ".kerzoo.lock").read_text() == ""
