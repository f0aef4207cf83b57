"""kerzoo.hf.ZOTrainer: the ZO step inside transformers.Trainer."""

from __future__ import annotations

import pytest
import torch
from conftest import TokenDataset, tiny_gpt2, training_args
from transformers import TrainerCallback

import kerzoo
from kerzoo.hf import ZOTrainer


class Sequential(ZOTrainer):
    """Batches in dataset order, so that a plain loop can take the same ones."""

    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)


class Records(TrainerCallback):
    """The kerzoo optimizer's record of every step."""

    def __init__(self):
        self.records = []

    def on_step_end(self, args, state, control, **kw):
        self.records.append(dict(self.trainer.zo_optimizer.last_record))


def with_records(trainer):
    cb = Records()
    cb.trainer = trainer
    trainer.add_callback(cb)
    return cb


def plain_loop(dataset, steps, batch, accumulate, lr, scaled=False):
    """The same training as kerzoo's own loop: one step per window, its micro-batches a list."""
    model = tiny_gpt2()
    opt = kerzoo.optimizer("mezo", model, lr=lr, seed=0)
    losses, records, i = [], [], 0
    for _ in range(steps):
        window = []
        for _ in range(accumulate):
            ids = dataset.ids[i : i + batch]
            window.append({"input_ids": ids, "labels": ids})
            i += batch
        items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in window)
        if scaled:  # the loss Trainer computes: summed over the window's tokens, over their count
            closures = [
                lambda b=b: model(**b, num_items_in_batch=torch.tensor(items)).loss * accumulate
                for b in window
            ]
        else:
            closures = [lambda b=b: model(**b).loss for b in window]
        losses.append(opt.step(closures))
        records.append(dict(opt.last_record))
    return model, losses, records


def test_same_step_as_the_plain_loop_bit_for_bit(tmp_path, dataset, monkeypatch):
    """Four steps of two micro-batches: the same parameters bit for bit as kerzoo's own loop (a
    list of closures per window), no backward, no .grad, every forward with dropout off (GPT-2's
    is 0.1; Trainer puts the model in train mode before each micro-batch, and gets it back), and
    the logs carry the projected gradient, not a grad_norm."""

    def no_backward(*a, **k):
        raise AssertionError("a backward ran")

    model = tiny_gpt2()
    seen = []
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for d in drops:
        d.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    trainer = Sequential(model=model, args=training_args(tmp_path), train_dataset=dataset)
    trainer.model_accepts_loss_kwargs = False  # each micro-batch's mean loss, as the plain loop
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    cb = with_records(trainer)
    trainer.train()
    monkeypatch.undo()
    assert drops and len(seen) >= 16 and not any(seen)  # 4 steps x 2 points x 2 micro-batches
    assert model.training
    ref, losses, records = plain_loop(dataset, steps=4, batch=2, accumulate=2, lr=1e-3)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name
        assert p.grad is None, name
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    for log, loss, rec, mine in zip(logs, losses, records, cb.records):
        assert mine["coefs"] == rec["coefs"] and mine["seeds"] == rec["seeds"]
        assert log["loss"] == pytest.approx(loss, rel=1e-6)
        assert log["learning_rate"] == 1e-3
        assert log["projected_grad"] == pytest.approx(sum(rec["coefs"]) / len(rec["coefs"]))
        assert log["projected_grad_rms"] == pytest.approx(abs(rec["coefs"][0]))
        assert "grad_norm" not in log
    assert len(cb.records[0]["losses"]) == 2  # two points, each the mean of two micro-batches


def test_token_weighted_loss_across_micro_batches(tmp_path):
    """With Trainer's token-weighted loss (each micro-batch's summed loss over the window's
    token count N, num_items_in_batch), each closure is scaled by the micro-batch count so that
    the step's mean is the window's loss: the same losses as the plain loop computing it."""

    class Masked(TokenDataset):
        def __getitem__(self, i):
            labels = self.ids[i]
            return {"input_ids": labels.clamp(min=0), "labels": labels}

    masked = Masked()
    masked.ids[1, :5] = -100  # padding in one row: micro-batches of different token counts
    counts = []

    class Counting(Sequential):
        def compute_loss(self, model, inputs, num_items_in_batch=None, **kw):
            counts.append(int(num_items_in_batch))
            return super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch, **kw)

    args = training_args(tmp_path, max_steps=2)
    trainer = Counting(model=tiny_gpt2(), args=args, train_dataset=masked)
    assert trainer.model_accepts_loss_kwargs
    cb = with_records(trainer)
    trainer.train()
    ref = tiny_gpt2()
    opt = kerzoo.optimizer("mezo", ref, lr=1e-3, seed=0)
    ids = masked.ids
    for s in range(2):
        window = [ids[4 * s : 4 * s + 2], ids[4 * s + 2 : 4 * s + 4]]
        items = counts[4 * s]  # Trainer's count for the window (4 forwards: 2 points x 2)

        def summed(w):
            logits = ref(input_ids=w.clamp(min=0)).logits[:, :-1]
            return torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum"
            )

        opt.step([lambda w=w: summed(w) / items * 2 for w in window])
        assert opt.last_record["losses"] == pytest.approx(cb.records[s]["losses"], rel=1e-5)
        assert opt.last_record["coefs"] == pytest.approx(cb.records[s]["coefs"], rel=1e-2)


def test_warmup_and_schedule_from_training_arguments(tmp_path, dataset):
    """lr, warm-up and schedule come from TrainingArguments: the lr each step used is Trainer's
    linear schedule with two warm-up steps."""
    args = training_args(
        tmp_path, max_steps=4, lr_scheduler_type="linear", warmup_steps=2, learning_rate=2e-3
    )
    trainer = ZOTrainer(model=tiny_gpt2(), args=args, train_dataset=dataset, zo="zo-sgd")
    cb = with_records(trainer)
    trainer.train()
    used = [r["lr"][0] for r in cb.records]
    assert used == pytest.approx([0.0, 1e-3, 2e-3, 1e-3])
    logged = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h]
    assert logged == pytest.approx(used)


def test_resume_from_checkpoint_bit_for_bit(tmp_path, dataset):
    """Six steps straight, against three steps, a checkpoint-3 folder, and a new trainer resumed
    from it: the same parameters bit for bit, the same losses, with shuffled batches, warm-up
    and a kerzoo preset whose projection has state (SubZero's bases)."""

    def run(out, stop_at=None, resume=None):
        args = training_args(
            out,
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            lr_scheduler_type="cosine",
            warmup_steps=2,
        )
        model = tiny_gpt2()
        trainer = ZOTrainer(model=model, args=args, train_dataset=dataset, zo="subzero")
        cb = with_records(trainer)
        if stop_at:

            class Stop(TrainerCallback):
                def on_step_end(self, args, state, control, **kw):
                    if state.global_step == stop_at:
                        control.should_training_stop = True

            trainer.add_callback(Stop())
        trainer.train(resume_from_checkpoint=resume)
        return model, cb.records

    straight, records = run(tmp_path / "a")
    _, first = run(tmp_path / "b", stop_at=3)
    assert (tmp_path / "b" / "checkpoint-3" / "optimizer.pt").is_file()
    resumed, second = run(tmp_path / "c", resume=str(tmp_path / "b" / "checkpoint-3"))
    assert [r["step"] for r in first + second] == list(range(6))
    for mine, ref in zip(first + second, records):
        assert mine["losses"] == ref["losses"] and mine["coefs"] == ref["coefs"]
        assert mine["lr"] == ref["lr"]
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


def test_optimizer_class_and_instance(tmp_path, dataset):
    """kerzoo.optim_class in optimizer_cls_and_kwargs, and a built optimizer in optimizers=, give
    the same run as zo="mezo"."""
    runs = []
    for how in ("zo", "class", "instance"):
        model = tiny_gpt2()
        kw = {}
        if how == "class":
            kw["optimizer_cls_and_kwargs"] = (kerzoo.optim_class("mezo"), {"seed": 0})
        elif how == "instance":
            kw["optimizers"] = (kerzoo.optimizer("mezo", model, lr=1e-3, seed=0), None)
        trainer = ZOTrainer(
            model=model,
            args=training_args(tmp_path / how, max_steps=2),
            train_dataset=dataset,
            **kw,
        )
        trainer.train()
        runs.append(model)
    for other in runs[1:]:
        for p, q in zip(runs[0].parameters(), other.parameters()):
            assert torch.equal(p, q)


def test_refusals(tmp_path, dataset):
    model = tiny_gpt2()
    with pytest.raises(ValueError, match=r"max_grad_norm=0\.5"):
        ZOTrainer(
            model=model, args=training_args(tmp_path, max_grad_norm=0.5), train_dataset=dataset
        )
    with pytest.raises(TypeError, match="preset name or a spec dict"):
        ZOTrainer(model=model, args=training_args(tmp_path), train_dataset=dataset, zo=3)
    cases = [
        ({"zo": {"preset": "mezo", "lr": 1e-3}}, ValueError, "TrainingArguments"),
        (
            {"optimizers": (torch.optim.AdamW(model.parameters()), None)},
            TypeError,
            "kerzoo optimizer, got AdamW",
        ),
        (
            {"optimizer_cls_and_kwargs": (torch.optim.AdamW, {})},
            TypeError,
            "not a kerzoo optimizer class",
        ),
        (
            {"optimizers": (kerzoo.optimizer("mezo", model.parameters()), None)},
            ValueError,
            "without its module",
        ),
    ]
    for kw, error, message in cases:
        trainer = ZOTrainer(model=model, args=training_args(tmp_path), train_dataset=dataset, **kw)
        with pytest.raises(error, match=message):
            trainer.train()


class MaskedTokens(TokenDataset):
    """Token rows with some labels masked (-100): micro-batches of different token counts."""

    def __init__(self):
        super().__init__()
        self.ids[1, :5] = -100

    def __getitem__(self, i):
        return {"input_ids": self.ids[i].clamp(min=0), "labels": self.ids[i]}


@pytest.mark.parametrize("weighted", [True, False])
def test_batched_steps_follow_the_onthefly_steps(tmp_path, weighted):
    """perturb='batched': one forward per micro-batch and step over its n-times batch; the losses
    are those of the onthefly trainer (Trainer's token-weighted loss, or each micro-batch's mean)
    to float rounding."""
    runs = []
    for perturb in ("onthefly", "batched"):
        model = tiny_gpt2()
        # GPT-2 gives its position embedding one row of position ids for the whole batch, which
        # a per-replica forward cannot split: frozen here (the batched perturber refuses it)
        model.transformer.wpe.weight.requires_grad_(False)
        calls = []
        model.register_forward_pre_hook(
            lambda m, a, k: calls.append(k["input_ids"].shape[0]), with_kwargs=True
        )
        args = training_args(tmp_path / perturb, max_steps=3, learning_rate=1e-6)
        zo = {"preset": "fzoo", "directions": 3, "perturb": perturb}
        trainer = Sequential(model=model, args=args, train_dataset=MaskedTokens(), zo=zo)
        trainer.model_accepts_loss_kwargs = weighted
        cb = with_records(trainer)
        trainer.train()
        logs = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        runs.append((cb.records, logs, calls))
    (sep, sep_logs, sep_calls), (bat, bat_logs, bat_calls) = runs
    assert sep_calls == [2] * (3 * 2 * 4)  # 3 steps x 2 micro-batches x 4 points
    assert bat_calls == [8] * (3 * 2)  # one forward of 4 x 2 rows per micro-batch
    assert bat[0]["losses"] == pytest.approx(sep[0]["losses"], rel=1e-6)
    for a, b in zip(sep, bat):
        assert len(a["losses"]) == len(b["losses"]) == 4
        assert b["losses"] == pytest.approx(a["losses"], rel=1e-5)
    assert len(bat_logs) == 3 and bat_logs == pytest.approx(sep_logs, rel=1e-5)


def test_batched_refuses_a_loss_it_would_bypass(tmp_path, dataset):
    class Custom(ZOTrainer):
        def compute_loss(self, model, inputs, **kw):
            return super().compute_loss(model, inputs, **kw)

    zo = {"preset": "fzoo", "directions": 3, "perturb": "batched"}
    trainer = Custom(model=tiny_gpt2(), args=training_args(tmp_path), train_dataset=dataset, zo=zo)
    with pytest.raises(ValueError, match=r"Custom's own loss \(a compute_loss override"):
        trainer.train()

    class Unlabelled(TokenDataset):
        def __getitem__(self, i):
            return {"input_ids": self.ids[i]}

    trainer = ZOTrainer(
        model=tiny_gpt2(), args=training_args(tmp_path), train_dataset=Unlabelled(), zo=zo
    )
    with pytest.raises(ValueError, match=r"needs the inputs' labels .*\['input_ids'\]"):
        trainer.train()

    # a model whose logits are not a causal LM's (here a sequence classifier) is refused, not
    # read as next-token logits
    classifier = tiny_gpt2(head="GPT2ForSequenceClassification")
    args = training_args(tmp_path)
    trainer = ZOTrainer(model=classifier, args=args, train_dataset=dataset, zo=zo)
    with pytest.raises(ValueError, match="GPT2ForSequenceClassification is not one of"):
        trainer.train()
