import pytest
import torch
from conftest import params, write_jsonl

from kerzoo.train.loop import Run
from kerzoo.train.model import ModelError
from kerzoo.train.tasks import TaskError


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_causal_lm_classification_on_label_words_trains(make_cfg, family):
    run = Run(make_cfg(family=family, task={"template": "{text} it was"}), progress=False)
    assert run.kind == "causal"
    before = params(run)
    run.train()
    assert run.step == 6 and any(not torch.equal(before[k], v) for k, v in params(run).items())


def test_a_label_word_of_several_tokens_is_refused_for_a_causal_lm(make_cfg):
    with pytest.raises(TaskError, match=r"label word 'supercalifragilistic' is [2-9] tokens"):
        Run(
            make_cfg(family="opt", task={"label_words": ["terrible", "supercalifragilistic"]}),
            progress=False,
        )


def test_labels_outside_the_label_words_are_refused(make_cfg, tmp_path):
    rows = [{"text": "x", "label": i % 3} for i in range(40)]
    with pytest.raises(TaskError, match=r"label\(s\) \[2\] in the data, but task.label_words"):
        Run(make_cfg(data={"source": write_jsonl(tmp_path / "d.jsonl", rows)}), progress=False)


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_multiple_choice_and_lm_tasks_train_on_tiny_causal_lms(make_cfg, tmp_path, family):
    words = ["good", "bad", "happy", "sad", "great", "awful", "nice", "poor"]
    mc = [
        {"question": f"{w} means", "choices": ["yes", "no", "maybe"], "gold": i % 3}
        for i, w in enumerate(words * 5)
    ]
    lm = [{"text": f"the word is {w}", "target": w} for w in words * 5]
    for task, source, data in (
        (
            "multiple_choice",
            write_jsonl(tmp_path / "mc.jsonl", mc),
            {"text_key": "question", "options_key": "choices", "label_key": "gold"},
        ),
        ("lm", write_jsonl(tmp_path / "lm.jsonl", lm), {"answer_key": "target"}),
    ):
        run = Run(
            make_cfg(
                task,
                family=family,
                data={"source": source, "eval_size": 8, **data},
                task={"type": task},
                model={"trainable": []},
                train={"eval_batch_size": 8},
            ),
            progress=False,
        )
        before = params(run)
        result = run.train()
        assert 0.0 <= result["first_acc"] <= 1.0 and run.step == 6
        assert any(not torch.equal(before[k], v) for k, v in params(run).items())
        if task == "multiple_choice":  # the logits are mean log-likelihoods per option
            logits = run.task.logits(run.model, run.eval_set[:2])
            assert logits.shape == (2, 3) and torch.all(logits < 0)


def test_multiple_choice_needs_a_causal_lm_and_valid_labels(make_cfg, tmp_path):
    rows = [{"text": "x", "options": ["a", "b"], "label": 0}] * 30
    with pytest.raises(TaskError, match="needs a causal LM"):
        Run(
            make_cfg(
                data={"source": write_jsonl(tmp_path / "mc.jsonl", rows)},
                task={"type": "multiple_choice"},
            ),
            progress=False,
        )
    rows = [{"text": "x", "options": ["a", "b"], "label": 2}] * 30
    with pytest.raises(TaskError, match="label 2 is not the index of one of its 2 options"):
        Run(
            make_cfg(
                family="opt",
                data={"source": write_jsonl(tmp_path / "mc2.jsonl", rows)},
                task={"type": "multiple_choice"},
            ),
            progress=False,
        )


@pytest.mark.parametrize("task", ["classification", "lm"])
def test_a_batch_loss_is_the_weighted_mean_of_its_shards_losses(make_cfg, tmp_path, task):
    """What data parallelism relies on: (sum, weight) of two shards add up to the whole batch's."""
    rows = [
        {"text": f"the word is {w}", "label": i % 2, "answer": w}
        for i, w in enumerate(["good", "bad", "fine", "awful", "nice", "poor"] * 5)
    ]
    run = Run(
        make_cfg(
            family="opt",
            data={"source": write_jsonl(tmp_path / "d.jsonl", rows), "eval_size": 6},
            task={"type": task},
        ),
        progress=False,
    )
    batch = run.train_set[:8]
    whole = run.batch_loss(batch)
    (s1, w1), (s2, w2) = (
        run.task.loss_sum(run.model, batch[:3]),
        run.task.loss_sum(run.model, batch[3:]),
    )
    torch.testing.assert_close((s1 + s2) / (w1 + w2), whole, rtol=1e-5, atol=1e-6)


def test_trainable_selection_and_its_errors(make_cfg):
    run = Run(make_cfg(model={"trainable": [], "exclude": ["embeddings"]}), progress=False)
    names = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert (
        names
        and not any("embeddings" in n for n in names)
        and any("encoder.layer.0." in n for n in names)
    )
    with pytest.raises(ModelError, match="selects no parameter; names look like: embeddings"):
        Run(make_cfg(model={"trainable": ["decoder.nothing."]}), progress=False)


def test_lora_adapters_start_from_the_run_seed_not_the_global_rng(make_cfg):
    from kerzoo.train.model import load_model

    cfg = make_cfg(model={"trainable": [], "lora": {"r": 4, "target_modules": ["query", "value"]}})[
        "model"
    ]

    def adapters(seed, global_seed):
        torch.manual_seed(global_seed)
        model = load_model(cfg, torch.device("cpu"), seed=seed)[0]
        after = torch.rand(1)  # the global stream goes on where the caller left it
        torch.manual_seed(global_seed)
        assert torch.equal(after, torch.rand(1))
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    a = adapters(seed=0, global_seed=1)
    assert a and all(torch.equal(v, adapters(seed=0, global_seed=2)[k]) for k, v in a.items())
    assert not any(torch.equal(v, adapters(seed=1, global_seed=1)[k]) for k, v in a.items())

    # a LoRA run's log replays in a process whose global RNG has moved on since
    from kerzoo.train.model import trainable_state
    from kerzoo.train.replay import replay

    run = Run(
        make_cfg(
            "replayed",
            model={"trainable": [], "lora": {"r": 4, "target_modules": ["query", "value"]}},
            train={"steps": 3},
        ),
        progress=False,
    )
    run.train()
    torch.manual_seed(123)
    torch.rand(7)
    model, n = replay(None, run.traj_path)
    rebuilt, trained = trainable_state(model), params(run)
    assert n == 3 and rebuilt.keys() == trained.keys()
    assert all(torch.equal(rebuilt[k], v) for k, v in trained.items())


def test_lora_through_peft_trains_only_the_adapters(make_cfg):
    run = Run(
        make_cfg(
            model={
                "trainable": [],
                "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]},
            }
        ),
        progress=False,
    )
    names = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    before = params(run)
    run.train()
    assert any(not torch.equal(before[k], v) for k, v in params(run).items())
    with pytest.raises(ModelError, match=r"unknown LoRA option model.lora.rank"):
        Run(make_cfg("b", model={"trainable": [], "lora": {"rank": 4}}), progress=False)
    with pytest.raises(ModelError, match=r"linear layers are named .*query"):
        Run(
            make_cfg("c", model={"trainable": [], "lora": {"r": 4, "target_modules": ["q_proj"]}}),
            progress=False,
        )
