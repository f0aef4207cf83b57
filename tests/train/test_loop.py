import json
import math
from pathlib import Path

import pytest
import torch
from conftest import params

from kerzoo.train.config import ConfigError
from kerzoo.train.loop import (
    CHECKPOINT,
    Run,
    TrainingError,
    load_checkpoint,
    plot,
    read_jsonl,
    schedule_factor,
)
from kerzoo.train.model import ModelError, trainable_state
from kerzoo.train.replay import ReplayError, replay


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_a_stop_is_bit_exact_and_replay_rebuilds_the_weights(make_cfg, tmp_path):
    straight = Run(make_cfg("a"), progress=False)
    straight.train()
    stopped = Run(make_cfg("b"), progress=False)
    stopped.train(stop_at=3)
    resumed = Run(make_cfg("b"), progress=False)
    assert resumed.step == 3
    resumed.train()
    a = params(straight)
    assert same(a, params(resumed))
    assert not same(
        a, trainable_state(Run(make_cfg("c"), progress=False).model)
    )  # training moved them
    log = tmp_path / "b" / "trajectory.jsonl"
    assert [r["step"] for r in read_jsonl(log)[1:]] == list(range(6))  # each step once
    model, n = replay(None, log)
    assert n == 6 and same(trainable_state(model), a)
    metrics = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(7)) and "eval_acc" in metrics[0]
    assert plot(tmp_path / "b" / "metrics.jsonl", tmp_path / "p.png").stat().st_size > 1000


class Killed(BaseException):
    pass


def test_a_kill_between_checkpoints_resumes_bit_exactly(make_cfg, tmp_path, monkeypatch):
    """Killed in step 5 (checkpoint at 3, logs already at 4, a log line cut short): the resumed
    run drops what came after the checkpoint and ends with the weights of a run that never stopped.
    """
    straight = Run(make_cfg("a"), progress=False)
    straight.train()
    run = Run(make_cfg("b"), progress=False)
    real_step = run.opt.step

    def step_then_die(closures):
        if run.step == 4:
            with open(run.traj_path, "a") as f:
                f.write('{"step": 4, "seeds": [12')  # the write the kill cut short
            raise Killed
        return real_step(closures)

    monkeypatch.setattr(run.opt, "step", step_then_die)
    with pytest.raises(Killed):
        run.train()
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == 3
    resumed = Run(make_cfg("b"), progress=False)
    assert resumed.step == 3
    resumed.train()
    assert same(params(straight), params(resumed))
    assert [r["step"] for r in read_jsonl(resumed.traj_path)[1:]] == list(range(6))
    assert same(trainable_state(replay(None, resumed.traj_path)[0]), params(straight))


def test_resuming_under_a_config_that_changes_the_run_is_refused(make_cfg):
    Run(make_cfg("a"), progress=False).train(stop_at=3)
    with pytest.raises(TrainingError, match=r"another config \(train.seed: 0 -> 7\).*--fresh"):
        Run(make_cfg("a", train={"seed": 7}), progress=False)
    assert Run(make_cfg("a", train={"steps": 9}), progress=False).step == 3  # more steps: fine
    assert Run(make_cfg("a", train={"seed": 7}), resume=False, progress=False).step == 0


def test_a_corrupt_checkpoint_is_refused_and_kept(make_cfg):
    c = make_cfg()
    ck = Path(c["train"]["out"]) / CHECKPOINT
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match=r"checkpoint.pt' is corrupt or unreadable.*--fresh"):
        Run(c, progress=False)
    assert ck.read_bytes() == b"not a checkpoint"  # nothing lost
    torch.save({"weights": 1}, ck)
    with pytest.raises(TrainingError, match="not a kerzoo training checkpoint"):
        Run(c, progress=False)


def test_a_nan_streak_stops_with_the_last_good_checkpoint_kept(make_cfg):
    run = Run(make_cfg(train={"max_nan_streak": 2, "steps": 20}), progress=False)
    run.train(stop_at=3)  # a checkpoint at step 3
    good, weights = load_checkpoint(run.out / CHECKPOINT), params(run)
    run.task.loss_sum = lambda model, batch: (torch.tensor(math.nan), 1)
    with (
        pytest.warns(RuntimeWarning, match="non-finite"),
        pytest.raises(
            TrainingError, match=r"2 steps in a row had a non-finite loss.*checkpoint.pt, is kept"
        ),
    ):
        run.train()
    last = read_jsonl(run.metrics_path)[-1]
    assert last["step"] == 5 and last["loss"] is None and last["skipped"] is True
    kept = load_checkpoint(run.out / CHECKPOINT)
    assert kept["step"] == 3 and same(kept["params"], good["params"])
    for k, v in params(run).items():  # skipped steps restore them (in place: within fp32 rounding)
        torch.testing.assert_close(v, weights[k], rtol=1e-6, atol=1e-9)


def test_a_missing_model_folder_is_a_clear_error(make_cfg, tmp_path):
    with pytest.raises(ModelError, match=r"no-such-model.*config.json"):
        Run(make_cfg(model={"name": str(tmp_path / "no-such-model")}), progress=False)


def test_an_optimizer_typo_is_a_config_error(make_cfg):
    with pytest.raises(
        ConfigError, match=r"\[optimizer\].*unknown optimizer 'mezzo'; did you mean 'mezo'"
    ):
        Run(make_cfg(optimizer={"preset": "mezzo"}), progress=False)


def test_fzoo_trains_under_kerzoo_train(make_cfg):
    run = Run(
        make_cfg(optimizer={"preset": "fzoo", "lr": 1e-6}, train={"steps": 3}), progress=False
    )
    run.train()
    assert run.opt.steps_done == 3 and run.opt.skipped_steps == 0
    assert len(run.opt.last_record["losses"]) == 9 and "sigma" in run.opt.last_record


def test_replay_refuses_another_base_and_a_broken_log(make_cfg, tmp_path, tiny_models):
    run = Run(make_cfg(), progress=False)
    run.train(stop_at=2)
    from transformers import AutoModel, AutoTokenizer

    other = AutoModel.from_pretrained(tiny_models["bert"])  # same names, other weights
    with torch.no_grad():
        other.encoder.layer[1].output.dense.bias.add_(1.0)
    other.save_pretrained(tmp_path / "other-bert")
    AutoTokenizer.from_pretrained(tiny_models["bert"]).save_pretrained(tmp_path / "other-bert")
    with pytest.raises(ReplayError, match="does not start from the weights the log"):
        replay(str(tmp_path / "other-bert"), run.traj_path)
    header, *records = read_jsonl(run.traj_path)
    header["fingerprint"] = "0" * 32
    (tmp_path / "other.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [header, *records]))
    with pytest.raises(ReplayError, match="does not start from the weights"):
        replay(None, tmp_path / "other.jsonl")
    (tmp_path / "gap.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [read_jsonl(run.traj_path)[0], records[1]])
    )
    with pytest.raises(ReplayError, match="record 1 is for step 1, expected 0"):
        replay(None, tmp_path / "gap.jsonl")


def test_grad_accumulation_evaluates_every_micro_batch_at_the_same_point(make_cfg):
    run = Run(make_cfg(train={"grad_accum": 3}), progress=False)
    micro = run.batch(0)
    assert [len(b) for b in micro] == [4, 4, 4]
    assert len({ex["text"] for b in micro for ex in b}) == 12
    seen = []
    real = run.batch_loss
    run.batch_loss = lambda b: seen.append(len(b)) or real(b)
    run.train(stop_at=1)
    assert seen.count(4) >= 6  # 3 micro-batches at each of the two points


def test_schedules_warm_up_then_decay_to_the_floor():
    assert [schedule_factor("constant", s, 10, 2) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert schedule_factor("linear", 10, 10, 0, 0.1) == pytest.approx(0.1)
    assert schedule_factor("cosine", 5, 10, 0) == pytest.approx(0.5)
    assert schedule_factor("cosine", 10, 10, 0, 0.2) == pytest.approx(0.2)
