"""The fault-injection suite: a run folder that nothing silently corrupts (docs/training.md,
What a run folder guarantees). Each case injects a fault (a kill, a flipped byte, a second
writer, a full disk, a non-finite value, a failing plugin, bad input) and checks that nothing is
lost and that the message is the documented one."""

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import params

import kerzoo
from kerzoo.cli import main
from kerzoo.train import config as C, data as D
from kerzoo.train.loop import (
    CHECKPOINT,
    LOCK,
    Run,
    TrainingError,
    _line,
    load_checkpoint,
    lock_folder,
    read_jsonl,
    release_folder,
)
from kerzoo.train.model import trainable_state
from kerzoo.train.replay import replay

ROOT = Path(__file__).resolve().parents[2]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def flip(path: Path, at: float = 0.6, count: int = 12) -> None:
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# -- 1. checkpoints: content hash checked before anything is loaded ---------------------------
@pytest.mark.parametrize("damage", ["flip", "truncate", "flip-header"])
def test_a_damaged_checkpoint_is_refused_kept_and_names_the_ways_on(make_cfg, damage):
    run = Run(make_cfg(), progress=False)
    run.train(stop_at=3)
    ck = run.out / CHECKPOINT
    if damage == "flip":
        flip(ck)
    elif damage == "truncate":
        ck.write_bytes(ck.read_bytes()[:-100])
    else:
        flip(ck, at=0.0, count=4)
    before = ck.read_bytes()
    message = (
        r"content hash does not match.*nothing was loaded"
        if damage != "flip-header"
        else "lacks kerzoo's content-hash header"
    )
    with pytest.raises(TrainingError, match=message) as err:
        Run(make_cfg(), progress=False)
    assert str(ck) in str(err.value)
    assert "older checkpoint" in str(err.value) and "--fresh" in str(err.value)
    assert ck.read_bytes() == before  # kept untouched
    assert Run(make_cfg(), resume=False, progress=False).step == 0  # --fresh goes on


def test_keep_checkpoints_keeps_older_ones_and_resuming_from_one_is_bit_exact(make_cfg):
    over = {"train": {"steps": 9, "keep_checkpoints": 3}}
    straight = Run(make_cfg("a", train={"steps": 9}), progress=False)
    straight.train()
    run = Run(make_cfg("b", **over), progress=False)
    run.train()
    older = sorted(p.name for p in run.out.glob("checkpoint-*.pt"))
    assert older == ["checkpoint-00000003.pt", "checkpoint-00000006.pt"]
    flip(run.out / CHECKPOINT)  # the newest is damaged: go back to step 6
    (run.out / CHECKPOINT).write_bytes((run.out / older[1]).read_bytes())
    resumed = Run(make_cfg("b", **over), progress=False)
    assert resumed.step == 6
    resumed.train()
    assert same(params(resumed), params(straight))
    assert same(trainable_state(replay(None, resumed.traj_path)[0]), params(straight))


# -- 2. one writer per folder ------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
from kerzoo.train.loop import lock_folder
lock_folder(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_killed_runs_lock_is_taken_over(make_cfg, tmp_path):
    cfg = make_cfg()
    out = Path(cfg["train"]["out"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            TrainingError, match=rf"in use by another kerzoo train \(pid {holder.pid} on host"
        ):
            Run(cfg, progress=False)
        with pytest.raises(TrainingError, match="in use"):
            Run(cfg, resume=False, progress=False)  # --fresh too: nothing removed
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    run = Run(cfg, progress=False)  # the kernel dropped the killed run's lock
    assert run.took_over.startswith(f"pid {holder.pid} on host")
    assert (out / LOCK).read_text().startswith(f"pid {os.getpid()} on host")
    run.close()
    assert (out / LOCK).read_text() == ""  # a run that ended leaves an empty lock
    assert lock_folder(out) is None
    release_folder(out)


# -- 3. non-finite coefficients ----------------------------------------------------------------
def test_non_finite_coefficients_skip_the_step_and_never_reach_the_weights(make_cfg):
    run = Run(make_cfg(train={"max_nan_streak": 3, "steps": 20}), progress=False)
    run.train(stop_at=2)
    weights = params(run)
    run.opt.estimator.coefficients = lambda plan, losses, eps: [math.nan] * len(plan.seeds)
    with (
        pytest.warns(RuntimeWarning, match=r"estimator 'two-point' gave a non-finite coefficient"),
        pytest.raises(
            TrainingError,
            match=r"3 steps in a row had a non-finite loss, coefficient, update or state",
        ),
    ):
        run.train()
    assert run.opt.skipped_steps == 3
    for k, v in params(run).items():
        assert torch.isfinite(v).all()
        torch.testing.assert_close(v, weights[k], rtol=1e-6, atol=1e-9)  # in place: fp32 rounding
    assert [r["skipped"] for r in read_jsonl(run.traj_path)[1:]] == [False, False, True, True, True]
    assert same(trainable_state(replay(None, run.traj_path)[0]), params(run))  # replays too


# -- 3b. non-finite updates and optimizer state: found before anything is written -------------
def _tiny(spec="mezo", **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(8, 6)
    opt = kerzoo.optimizer(spec, model, **{"lr": 1e-2, "eps": 1e-2, **kw})
    return model, opt, lambda: model(x).pow(2).mean()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _bitwise(a, b):
    return all(torch.equal(a[k].nan_to_num(7.0), b[k].nan_to_num(7.0)) for k in a)


@pytest.mark.parametrize(
    ("spec", "kw", "poison", "message"),
    [
        # a finite coefficient (in Python) whose update overflows float32 (lr 1e45 x g x z)
        ("mezo", {}, "lr", r"the update would make 0.weight non-finite"),
        ("mezo", {"weight_decay": 0.1}, "lr", r"the update would make 0.weight non-finite"),
        # the same through a projection with no bound: the update tried in a workspace
        (
            {"estimator": "two-point", "projection": "lowrank", "update": "sgd"},
            {},
            "lr",
            r"the update would make \S+ non-finite",
        ),
        ("mezo", {}, "weight", r"non-finite loss nan"),  # the forward finds it first
        (
            {"update": "momentum"},
            {},
            "state",
            r"update 'momentum' state 'momentum' of 0.weight "
            r"is non-finite",
        ),
        (
            {"update": "adam"},
            {},
            "state",
            r"update 'adam' state 'exp_avg_sq' of 0.weight is "
            r"non-finite",
        ),
        # Adam's v = g^2 overflows float32 for a coefficient of 1e30: the trial finds it
        (
            {"update": "adam"},
            {},
            "coef",
            r"update 'adam''s update state 'exp_avg_sq' of "
            r"0.weight is non-finite \(inf\)",
        ),
        (
            {"update": "momentum-replay"},
            {},
            "lr",
            r"update 'momentum-replay' would make "
            r"0.weight non-finite",
        ),
        ({"update": "conservative"}, {}, "lr", r"the update would make 0.weight non-finite"),
        (
            "hizoo",
            {},
            "hessian",
            r"projection 'hessian' has non-finite directions for "
            r"0.weight \(its state holds nan\)",
        ),
    ],
)
@pytest.mark.parametrize("perturb", ["inplace", "onthefly"])
def test_a_non_finite_update_or_state_skips_the_step_bit_for_bit(
    spec, kw, poison, message, perturb
):
    if isinstance(spec, dict):
        spec = {"estimator": "two-point", "projection": "dense", "update": "sgd", **spec}
    if perturb == "inplace" and spec == "hizoo":
        perturb = "onthefly"  # its directions read no weights, but keep one mode per case
    model, opt, closure = _tiny(spec, perturb=perturb, **kw)
    opt.step(closure)
    opt.step(closure)
    params = dict(model.named_parameters())
    if poison == "lr":
        for g in opt.param_groups:
            g["lr"] = 1e45
    elif poison == "weight":
        with torch.no_grad():
            params["0.weight"][0, 0] = math.nan
    elif poison == "state":
        name = "momentum" if "momentum" in str(spec) else "exp_avg_sq"
        opt.state[params["0.weight"]][name][0, 0] = math.inf
    elif poison == "coef":
        opt.estimator.coefficients = lambda plan, losses, eps: [1e30] * len(plan.seeds)
    else:
        opt.projection.w["0.weight"][0, 0] = math.nan
    before = _state(model)
    state_before = {
        id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
        for p, st in opt.state.items()
    }
    if perturb == "onthefly" and "conservative" in str(spec):
        # on the fly its trial points write nothing: their non-finite losses just lose
        assert math.isfinite(opt.step(closure)) and opt.last_record["update"]["sign"] == 0
        assert _bitwise(_state(model), before)
        return
    with pytest.warns(
        RuntimeWarning,
        match=message + r".* at step 2: step skipped, parameters restored \(1 skipped so far\)",
    ):
        assert math.isnan(opt.step(closure))
    assert opt.skipped_steps == 1 and opt.last_record["skipped"]
    after = _state(model)
    if perturb == "onthefly":
        assert _bitwise(after, before)  # never written
    else:  # in place the points were visited: restored as a non-finite loss's step is
        for k in before:
            torch.testing.assert_close(after[k], before[k], rtol=1e-6, atol=1e-7, equal_nan=True)
    for p, st in opt.state.items():  # the rule's state untouched too
        for k, v in st.items():
            if torch.is_tensor(v):
                torch.testing.assert_close(
                    v, state_before[id(p)][k], rtol=0, atol=0, equal_nan=True
                )
    if poison == "lr":  # the next step, with a sane lr, goes on
        for g in opt.param_groups:
            g["lr"] = 1e-2
        assert math.isfinite(opt.step(closure))
        assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_a_non_finite_update_in_kerzoo_train_is_skipped_counted_and_replays(make_cfg):
    run = Run(make_cfg(train={"max_nan_streak": 2, "steps": 20}), progress=False)
    run.train(stop_at=2)
    weights = params(run)
    run.opt.estimator.coefficients = lambda plan, losses, eps: [1e37] * len(plan.seeds)
    for g in run.opt.param_groups:
        g["lr"] = 1.0
    run.base_lrs = [10.0 for _ in run.base_lrs]  # lr 10 x 1e37 x z overflows float32
    with (
        pytest.warns(RuntimeWarning, match=r"the update would make \S+ non-finite"),
        pytest.raises(
            TrainingError,
            match=r"2 steps in a row had a non-finite loss, coefficient, update or state",
        ),
    ):
        run.train()
    assert run.opt.skipped_steps == 2
    assert all(torch.isfinite(v).all() for v in params(run).values())
    for k, v in params(run).items():  # in place: restored from the last point, fp32 rounding
        torch.testing.assert_close(v, weights[k], rtol=1e-6, atol=1e-9)
    assert [r["skipped"] for r in read_jsonl(run.traj_path)[1:]] == [False, False, True, True]
    assert same(trainable_state(replay(None, run.traj_path)[0]), params(run))  # replays too


# -- 4. the logs must end where the checkpoint does --------------------------------------------
@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("trajectory.jsonl", "delete", "trajectory.jsonl is missing"),
        ("trajectory.jsonl", "truncate", r"trajectory.jsonl ends early \(\d+ of \d+ bytes\)"),
        ("trajectory.jsonl", "flip", "trajectory.jsonl was altered before step 3"),
        ("metrics.jsonl", "delete", "metrics.jsonl is missing"),
        ("metrics.jsonl", "truncate", r"metrics.jsonl ends early"),
        ("metrics.jsonl", "flip", "metrics.jsonl was altered before step 3"),
    ],
)
def test_a_log_that_does_not_match_the_checkpoint_is_refused(make_cfg, name, damage, message):
    run = Run(make_cfg(), progress=False)
    run.train(stop_at=4)  # the checkpoint is at step 3, the logs go on to step 4
    path = run.out / name
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:40])
    else:
        flip(path, at=0.3, count=3)
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(
        TrainingError, match=message + r".*restore the log from a copy, or pass --fresh"
    ):
        Run(make_cfg(), progress=False)
    assert (path.read_bytes() if path.exists() else None) == before


def test_a_lock_file_or_plot_damaged_does_not_matter(make_cfg):
    straight = Run(make_cfg("a"), progress=False)
    straight.train()
    run = Run(make_cfg("b"), progress=False)
    run.train(stop_at=4)
    run.close()
    (run.out / LOCK).write_bytes(b"\xff\x00garbage")
    resumed = Run(make_cfg("b"), progress=False)
    assert resumed.took_over is not None and resumed.step == 3
    resumed.train()
    assert same(params(resumed), params(straight))


# -- bit flips and truncation of every file the run writes ------------------------------------
def _damage(path: Path, how: str, at: int) -> None:
    """how: "bit" flips the low bit of byte ``at`` (a digit stays a digit: JSON still parses),
    "byte" inverts it, "cut" truncates the file to ``at`` bytes."""
    data = bytearray(path.read_bytes())
    if how == "cut":
        del data[at:]
    else:
        data[at] ^= 0x01 if how == "bit" else 0xFF
    path.write_bytes(bytes(data))


def _digit_at(path: Path, start: int) -> int:
    """The first digit at or after ``start`` (a flipped bit there keeps the JSON valid)."""
    data = path.read_bytes()
    return next(i for i in range(start, len(data)) if chr(data[i]).isdigit())


DAMAGE_OVER = {"train": {"steps": 6, "checkpoint_every": 2, "keep_checkpoints": 2}}


@pytest.fixture
def killed_at_5(make_cfg):
    """A run stopped at step 5 as a kill leaves it: checkpoint.pt at step 4, the older one as
    checkpoint-00000002.pt, the logs on to step 5; and the run that never stopped."""
    straight = Run(make_cfg("a", **DAMAGE_OVER), progress=False)
    straight.train()
    straight.close()
    run = Run(make_cfg("b", **DAMAGE_OVER), progress=False)
    run.train(stop_at=5)
    run.close()
    return run.out, params(straight)


@pytest.mark.parametrize(
    ("name", "how", "where"),
    [
        (CHECKPOINT, "byte", "header"),
        (CHECKPOINT, "bit", "middle"),
        (CHECKPOINT, "bit", "last"),
        (CHECKPOINT, "cut", "middle"),
        (CHECKPOINT, "cut", "zero"),
        ("trajectory.jsonl", "bit", "header"),
        ("trajectory.jsonl", "bit", "before"),
        ("trajectory.jsonl", "byte", "before"),
        ("trajectory.jsonl", "cut", "before"),
        ("trajectory.jsonl", "cut", "zero"),
        ("metrics.jsonl", "bit", "before"),
        ("metrics.jsonl", "cut", "before"),
    ],
)
def test_a_damaged_checkpoint_or_log_before_its_step_is_refused_and_kept(
    make_cfg, killed_at_5, name, how, where
):
    out, _ = killed_at_5
    path = out / name
    size = len(path.read_bytes())
    mark = load_checkpoint(out / CHECKPOINT)["logs"].get(name, [size])[0]
    at = {
        "header": 3,
        "middle": size // 2,
        "last": size - 1,
        "zero": 0,
        "before": _digit_at(path, mark // 2) if how == "bit" else mark // 2,
    }[where]
    _damage(path, how, at)
    before = path.read_bytes()
    message = {
        CHECKPOINT: r"checkpoint .* is corrupt.*older checkpoint.*--fresh",
        "trajectory.jsonl": r"trajectory.jsonl (was altered before step 4|ends early).*--fresh",
        "metrics.jsonl": r"metrics.jsonl (was altered before step 4|ends early).*--fresh",
    }[name]
    with pytest.raises(TrainingError, match=message):
        Run(make_cfg("b", **DAMAGE_OVER), progress=False)
    assert path.read_bytes() == before  # kept as it was
    release_folder(out)


@pytest.mark.parametrize(
    ("name", "how", "where"),
    [
        ("trajectory.jsonl", "bit", "after"),  # a flipped digit in step 4's line
        ("trajectory.jsonl", "byte", "after"),
        ("trajectory.jsonl", "cut", "after"),
        ("metrics.jsonl", "bit", "after"),
        ("metrics.jsonl", "cut", "after"),
        ("checkpoint-00000002.pt", "bit", "middle"),  # never read: the run resumes from step 4
        ("checkpoint-00000002.pt", "cut", "zero"),
        (LOCK, "byte", "start"),
        (LOCK, "cut", "zero"),
    ],
)
def test_a_damaged_log_after_the_checkpoint_or_another_file_is_recovered_bit_for_bit(
    make_cfg, killed_at_5, name, how, where
):
    out, straight = killed_at_5
    path = out / name
    if name == LOCK:  # a killed run leaves its record in the lock
        path.write_text("pid 1 on host h since 2026-01-01T00:00:00Z\n")
    size = len(path.read_bytes())
    mark = load_checkpoint(out / CHECKPOINT)["logs"].get(name, [0])[0]
    at = {
        "after": (_digit_at(path, mark + 2) if how == "bit" else mark + (size - mark) // 2),
        "middle": size // 2,
        "zero": 0,
        "start": 0,
    }[where]
    _damage(path, how, at)
    run = Run(make_cfg("b", **DAMAGE_OVER), progress=False)
    assert run.step == 4
    run.train()
    assert same(params(run), straight)
    assert [r["step"] for r in read_jsonl(run.traj_path)[1:]] == list(range(6))
    assert same(trainable_state(replay(None, run.traj_path)[0]), straight)
    run.close()


@pytest.mark.parametrize("how", ["bit", "byte"])
@pytest.mark.parametrize("name", ["trajectory.jsonl", "metrics.jsonl"])
def test_a_damaged_line_of_a_finished_runs_log_is_refused_naming_the_line(make_cfg, name, how):
    run = Run(make_cfg(), progress=False)
    run.train()
    run.close()
    path = run.out / name
    lines = path.read_bytes().split(b"\n")
    third = len(b"\n".join(lines[:2])) + 1  # the third line's first byte
    _damage(path, how, _digit_at(path, third) if how == "bit" else third + 5)
    with pytest.raises(TrainingError, match=rf"{name}, line 3, is damaged: its checksum"):
        read_jsonl(path)
    if name == "trajectory.jsonl":
        with pytest.raises(TrainingError, match="line 3, is damaged"):
            replay(None, path)  # never the weights of a changed log
        assert main(["replay", "header", str(path), "--out", str(run.out / "w.pt")]) == 2
    with pytest.raises(TrainingError, match=rf"{name} was altered before step 6"):
        Run(make_cfg(), progress=False)  # the final checkpoint recorded the whole log


def test_a_damaged_plot_is_written_again(make_cfg, tmp_path, capsys):
    cfg = make_cfg()
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["train", str(path), "--steps", "3"]) == 0
    png = Path(cfg["train"]["out"]) / "plot.png"
    _damage(png, "byte", 0)
    assert main(["train", str(path)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()


# -- 5. a full disk ----------------------------------------------------------------------------
def test_a_full_disk_names_the_path_keeps_the_checkpoint_and_removes_the_temporary(
    make_cfg, monkeypatch
):
    run = Run(make_cfg(), progress=False)
    run.train(stop_at=3)
    good = (run.out / CHECKPOINT).read_bytes()
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(
        TrainingError,
        match=r"could not write the checkpoint .*checkpoint.pt.tmp \(No space left on device\); "
        r"the temporary file is removed and the previous checkpoint .*checkpoint.pt \(step 3\) "
        "is intact",
    ):
        run.train()
    assert not list(run.out.glob("*.tmp"))
    assert (run.out / CHECKPOINT).read_bytes() == good
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert Run(make_cfg(), progress=False).step == 3  # resumes from it


def test_a_full_disk_on_a_log_names_it_and_a_left_temporary_is_removed(make_cfg, monkeypatch):
    run = Run(make_cfg(), progress=False)
    run.train(stop_at=3)
    (run.out / "checkpoint.pt.tmp").write_bytes(b"x" * 1000)  # left by a kill during a write
    run.close()
    run = Run(make_cfg(), progress=False)
    assert not (run.out / "checkpoint.pt.tmp").exists()

    def full(self, record):
        raise OSError(28, "No space left on device")

    real_open = Path.open

    def open_(self, mode="r", *a, **k):
        if mode == "a":
            raise OSError(28, "No space left on device")
        return real_open(self, mode, *a, **k)

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(
        TrainingError,
        match=r"could not write .*trajectory.jsonl \(No space left on device\); the checkpoint "
        r".*checkpoint.pt is intact",
    ):
        run.train()


# -- 6, 9. config values -----------------------------------------------------------------------
def test_numbers_in_yaml_and_strings_are_read_or_refused_by_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "optimizer:\n  preset: mezo\n  lr: 1e-4\n  eps: 1E-3\ntrain:\n  steps: '10'\n"
        "  min_lr_factor: '0.5'\n"
    )
    cfg = C.load(path)
    assert cfg["optimizer"]["lr"] == 1e-4 and cfg["optimizer"]["eps"] == 1e-3
    assert cfg["train"]["steps"] == 10 and cfg["train"]["min_lr_factor"] == 0.5
    path.write_text("optimizer:\n  preset: mezo\n  eps: small\n")
    with pytest.raises(C.ConfigError, match=r"optimizer.eps = 'small': expected float"):
        C.load(path)
    path.write_text("train:\n  steps: '2.5'\n")
    with pytest.raises(
        C.ConfigError, match=r"train.steps = '2.5': expected int, finite and integral"
    ):
        C.load(path)
    path.write_text("optimizer:\n  lr: .nan\n")
    with pytest.raises(C.ConfigError, match=r"optimizer.lr = nan: expected float, finite"):
        C.load(path)


@pytest.mark.parametrize("text", ["", "# nothing\n", "\n\n"])
@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_an_empty_config_is_refused(tmp_path, text, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    with pytest.raises(C.ConfigError, match=r"is empty.*with no config for the default run"):
        C.load(path)


# -- 7, 10. data files -------------------------------------------------------------------------
def test_non_utf8_files_name_the_file_and_line(tmp_path):
    (tmp_path / "c.toml").write_bytes(b"[train]\nsteps = 3\n# caf\xe9\n")
    with pytest.raises(C.ConfigError, match=r"c.toml:3: not UTF-8 \(byte 0xe9"):
        C.load(tmp_path / "c.toml")
    (tmp_path / "d.jsonl").write_bytes(
        b'{"text": "a", "label": 0}\n{"text": "caf\xe9", "label": 1}\n'
    )
    with pytest.raises(D.DataError, match=r"d.jsonl:2: not UTF-8"):
        D.load_examples(str(tmp_path / "d.jsonl"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("42", r"d.jsonl:2: not a JSON object but 42"),
        ("null", r"d.jsonl:2: not a JSON object but null"),
        ('["a", 1]', r'd.jsonl:2: not a JSON object but \["a", 1\]'),
        ('{"text": null, "label": 0}', r"d.jsonl:2 has text = None: a text must be a string"),
        ('{"text": true, "label": 0}', r"d.jsonl:2 has text = True: a text must be a string"),
        ('{"text": "a", "label": true}', r"d.jsonl:2 has label = True, not an integer label"),
        ('{"text": "a", "label": null}', r"d.jsonl:2 has label = None, not an integer label"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, line, message):
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 0}\n' + line + "\n")
    with pytest.raises(D.DataError, match=message):
        D.load_examples(str(tmp_path / "d.jsonl"))


def test_a_csv_with_a_bom_reads_and_a_short_row_names_its_file_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\r\ngood,1\r\nbad,0\r\n".encode("utf-8-sig"))
    assert D.load_examples(str(path)) == [
        {"text": "good", "label": 1},
        {"text": "bad", "label": 0},
    ]
    path.write_text('text,label\ngood,1\n"two\nlines",0\nshort\n')
    with pytest.raises(
        D.DataError, match=r"d.csv:5: 1 fields, the header has 2 \('label' missing\)"
    ):
        D.load_examples(str(path))
    path.write_text("text,label\ngood,1,extra\n")
    with pytest.raises(D.DataError, match=r"d.csv:2: 3 fields, the header has 2"):
        D.load_examples(str(path))


# -- 8. a plugin raising in each hook ----------------------------------------------------------
HOOKS = [
    ("estimator", "plan"),
    ("estimator", "tensor_factors"),
    ("estimator", "coefficients"),
    ("projection", "begin_step"),
    ("projection", "end_step"),
    ("update_rule", "linear"),
]


@pytest.mark.parametrize(("part", "hook"), HOOKS)
@pytest.mark.parametrize("perturb", ["inplace", "onthefly"])
def test_a_plugin_raising_in_a_hook_is_named_and_the_weights_are_restored(part, hook, perturb):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(8, 6)
    opt = kerzoo.optimizer("mezo", model, lr=1e-2, eps=1e-2, perturb=perturb)

    def closure():
        return model(x).pow(2).mean()

    opt.step(closure)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = getattr(opt, part)

    def boom(*args, **kwargs):
        raise ValueError("plugin bug")

    setattr(obj, hook, boom)
    kind = {"update_rule": "update"}.get(part, part)
    with pytest.raises(
        ValueError,
        match=rf"{kind} '{obj.name}' raised ValueError at step 1 "
        r"\(parameters restored\): plugin bug",
    ):
        opt.step(closure)
    after = model.state_dict()
    for k, v in before.items():
        if hook == "end_step":  # after the update: the step is taken, then the hook fails
            continue
        if perturb == "onthefly" or hook in ("plan", "tensor_factors", "begin_step"):
            assert torch.equal(after[k], v), k  # never written while perturbed
        else:
            torch.testing.assert_close(after[k], v, rtol=1e-6, atol=1e-8)
    assert all(torch.isfinite(v).all() for v in after.values())


# the passes and hooks a plugin runs inside a step, beyond the hooks above: (preset and
# options, the part, the hook, the modes it runs in); each raises at its first call
HOOKS_INSIDE = [
    ("mezo", {}, "projection", "add_table", ("inplace", "onthefly")),  # the first point
    ("mezo", {}, "projection", "add_table-move", ("inplace",)),  # point to point, in place
    ("mezo", {}, "projection", "update-pass", ("inplace", "onthefly")),  # the update's pass
    ("mezo", {}, "projection", "bounds", ("inplace", "onthefly")),  # the update guard
    ("mezo", {"clip": 1.0}, "projection", "materialize", ("inplace", "onthefly")),  # clipping
    ({"update": "adam"}, {}, "projection", "materialize", ("inplace", "onthefly")),  # g for Adam
    ({"update": "momentum"}, {}, "update_rule", "apply", ("inplace", "onthefly")),
    ("kerzoo", {}, "estimator", "kernel", ("inplace", "onthefly")),  # the kernel K(r)
]


@pytest.mark.parametrize(
    ("spec", "options", "part", "hook", "perturb"),
    [(s, o, p, h, m) for s, o, p, h, modes in HOOKS_INSIDE for m in modes],
)
def test_a_plugin_raising_inside_a_pass_is_named_and_the_weights_are_restored(
    spec, options, part, hook, perturb
):
    if isinstance(spec, dict):
        spec = {"estimator": "two-point", "projection": "dense", "update": "sgd", **spec}
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(8, 6)
    opt = kerzoo.optimizer(spec, model, lr=1e-2, eps=1e-2, perturb=perturb, **options)

    def closure():
        return model(x).pow(2).mean()

    opt.step(closure)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = getattr(opt, part)

    def boom(*args, **kwargs):
        raise ValueError("plugin bug")

    name = obj.name
    if hook == "kernel":

        class Broken:
            name, order = "broken", 2

            def __call__(self, s):
                raise ValueError("plugin bug")

        obj.kernel, part, name = Broken(), "kernel", "broken"
    elif hook == "update-pass":  # the pass made inside the perturber's update
        real, real_update, inside = obj.add_table, opt.perturber.update, []

        def update(*args, **kwargs):
            inside.append(True)
            try:
                return real_update(*args, **kwargs)
            finally:
                inside.pop()

        def boom_at_update(*args, **kwargs):
            if inside:
                raise ValueError("plugin bug")
            return real(*args, **kwargs)

        opt.perturber.update, obj.add_table = update, boom_at_update
    elif hook == "add_table-move":  # the second pass: from the first point to the second
        real, calls = obj.add_table, []

        def boom_second(*args, **kwargs):
            calls.append(True)
            if len(calls) == 2:
                raise ValueError("plugin bug")
            return real(*args, **kwargs)

        obj.add_table = boom_second
    else:
        setattr(obj, hook, boom)
    kind = {"update_rule": "update"}.get(part, part)
    with pytest.raises(
        ValueError,
        match=rf"{kind} '{name}' raised ValueError at step 1 \(parameters restored\): plugin bug",
    ):
        opt.step(closure)
    after = model.state_dict()
    for k, v in before.items():
        if perturb == "onthefly" or hook in ("add_table", "bounds"):
            assert torch.equal(after[k], v), k  # never written while perturbed
        else:  # in place: left the point it was at (fp32 rounding)
            torch.testing.assert_close(after[k], v, rtol=1e-6, atol=1e-8)
    assert opt.steps_done == 1  # not counted as a step: running again does it


def test_a_projection_failing_also_while_restoring_says_the_weights_are_not_restored():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(8, 6)
    opt = kerzoo.optimizer("mezo", model, lr=1e-2, eps=1e-2, perturb="inplace")
    opt.step(lambda: model(x).pow(2).mean())
    real, calls = opt.projection.add_table, []

    def add_table(*args, **kwargs):  # fine to the first point, then broken
        calls.append(True)
        if len(calls) == 1:
            return real(*args, **kwargs)
        raise ValueError("plugin bug")

    # the move to the second point raises, in place at the first; the way back raises too
    opt.projection.add_table = add_table
    with pytest.raises(
        ValueError,
        match=r"projection 'dense' raised ValueError at step 1 "
        r"\(parameters NOT restored: restoring them called the failing part "
        r"again; go back to the last checkpoint\): plugin bug",
    ):
        opt.step(lambda: model(x).pow(2).mean())


def test_a_plugin_error_in_kerzoo_train_names_it_and_keeps_the_checkpoint(
    make_cfg, tmp_path, capsys, monkeypatch
):
    cfg = make_cfg()
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    assert main(["train", str(path), "--steps", "3"]) == 0
    capsys.readouterr()

    def boom(self, plan, losses, eps):
        raise RuntimeError("divided by zero")

    estimator = type(kerzoo.optimizer("mezo", torch.nn.Linear(2, 1)).estimator)
    monkeypatch.setattr(estimator, "coefficients", boom)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "kerzoo train: a plugin failed: estimator 'two-point' raised RuntimeError at step 3 "
        "(parameters restored): divided by zero; the checkpoint in" in err
    )
    assert load_checkpoint(Path(cfg["train"]["out"]) / CHECKPOINT)["step"] == 3


# -- 11. the engine backend in the log header ------------------------------------------------
def test_the_header_records_the_engine_and_replay_says_when_it_differs(make_cfg, tmp_path, capsys):
    run = Run(make_cfg(), progress=False)
    run.train()
    header = read_jsonl(run.traj_path)[0]
    assert header["engine"]["device"] == "cpu" and header["engine"]["backend"] in (
        "c++",
        "reference",
        "c+++reference",
    )
    assert header["engine"]["torch"] == torch.__version__
    lines = run.traj_path.read_text().splitlines()
    header["engine"]["backend"] = "cuda"
    log = tmp_path / "other.jsonl"
    log.write_text("".join([_line(header), *(line + "\n" for line in lines[1:])]))
    ck = run.out / CHECKPOINT
    argv = ["replay", "header", str(log), "--out", str(tmp_path / "w.pt"), "--check", str(ck)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"backend: cuda -> {read_jsonl(run.traj_path)[0]['engine']['backend']}" in err
    assert "bit for bit only under the same ones" in err


# -- kill -9, a concurrent run and SIGTERM, as a user meets them -------------------------------
def _wait(proc, path: Path, lines: int, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(read_jsonl(path)) >= lines:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {lines} lines ({proc.poll()})")


def test_kill_9_a_concurrent_run_and_sigterm_then_the_run_ends_bit_exact(make_cfg, tmp_path):
    # enough steps that the run is still training when SIGTERM comes, however fast the machine
    # (about 150 steps a second on a quiet one): the signals land in the first tenth
    steps = 300
    over = {"train": {"steps": steps, "checkpoint_every": 2, "eval_every": 1000}}
    straight = Run(make_cfg("a", **over), progress=False)
    straight.train()
    cfg = make_cfg("b", **over)
    path = tmp_path / "b.yaml"
    path.write_text(json.dumps(cfg))
    out = Path(cfg["train"]["out"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kerzoo", "train", str(path)]

    def start():
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    proc = start()  # kill -9 at a moment after the first checkpoint
    _wait(proc, out / "trajectory.jsonl", 4)
    with pytest.raises(TrainingError, match=rf"pid {proc.pid} on host"):
        Run(cfg, progress=False)  # a second writer, while it runs
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = len(read_jsonl(out / "trajectory.jsonl"))
    proc = start()  # resumes, then SIGTERM once it has written steps of its own (so it trains)
    _wait(proc, out / "trajectory.jsonl", killed_at + 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "kerzoo train: terminated (SIGTERM); kept the checkpoint in" in err
    assert "Run the same command to resume" in err
    run = Run(cfg, progress=False)  # the killed run's lock is free again
    assert 2 <= run.step < steps
    run.train()
    assert same(params(run), params(straight))
    assert [r["step"] for r in read_jsonl(run.traj_path)[1:]] == list(range(steps))
    assert same(trainable_state(replay(None, run.traj_path)[0]), params(straight))


# -- kill -9 at seeded random points, during writes too, then resume: bit for bit ---------------
KILL_POINTS = [  # (point, steps it can fire at); kerzoo.train.loop._fault
    ("start", [0]),
    ("step", range(1, 12)),  # after a step's trajectory line, before its metrics line
    ("torn-trajectory", range(0, 12)),  # half a trajectory line written
    ("torn-metrics", range(1, 12)),
    ("checkpoint", range(2, 12, 2)),  # half the checkpoint's temporary file written
    ("rename", range(2, 12, 2)),  # written and flushed, not yet renamed over checkpoint.pt
    ("link", range(4, 12, 2)),  # the older checkpoint kept as checkpoint-<step>.pt, no new one
    ("saved", range(2, 12, 2)),  # checkpoint.pt replaced
]


def kill_plan(seed: int, kills: int = 5) -> list[tuple[str, int]]:
    """``kills`` (point, step) pairs at increasing steps, one at least during a checkpoint
    write, drawn from a seeded generator (the same in every CI run)."""
    import random

    rng = random.Random(seed)
    while True:
        steps = sorted(rng.sample(range(12), kills))
        plan = [rng.choice([(p, s) for p, fire in KILL_POINTS if s in fire]) for s in steps]
        if any(p == "checkpoint" for p, _ in plan):
            return plan


def _killed_child(cfg: dict, fault: str) -> int:
    """Run ``cfg`` in a forked child (no new interpreter to start) that kill -9s itself at
    ``fault``; returns its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 3
        try:
            signal.alarm(120)  # a child that hangs (a fork of a threaded process) dies instead
            torch.set_num_threads(1)
            os.environ["KERZOO_FAULT"] = fault
            Run(cfg, progress=False).train()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


KILL_SEEDS = [2, 10, 14]  # three plans that together cover every point


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_kill_9_at_seeded_points_and_mid_write_then_resume_is_bit_exact(make_cfg, seed):
    over = {"train": {"steps": 12, "checkpoint_every": 2, "eval_every": 6, "keep_checkpoints": 2}}
    straight = Run(make_cfg("a", **over), progress=False)
    straight.train()
    straight.close()
    cfg = make_cfg("b", **over)
    out = Path(cfg["train"]["out"])
    plan = kill_plan(seed)
    for point, step in plan:
        status = _killed_child(cfg, f"{point}@{step}")
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (point, step)
    run = Run(cfg, progress=False)  # the last kill's lock is free again, its .tmp removed
    assert run.took_over is not None and not list(out.glob("*.tmp"))
    run.train()
    assert same(params(run), params(straight)), plan
    assert [r["step"] for r in read_jsonl(run.traj_path)[1:]] == list(range(12))
    assert [r["step"] for r in read_jsonl(run.metrics_path)] == list(range(13))
    assert (
        read_jsonl(run.metrics_path)[-1]["eval_acc"]
        == read_jsonl(straight.metrics_path)[-1]["eval_acc"]
    )
    assert same(trainable_state(replay(None, run.traj_path)[0]), params(straight))
    run.close()


def test_the_kill_plans_cover_every_point():
    drawn = {p for seed in KILL_SEEDS for p, _ in kill_plan(seed)}
    assert drawn == {p for p, _ in KILL_POINTS}
    assert kill_plan(2) == kill_plan(2)  # seeded: the same points in every CI run


def test_a_log_begun_without_line_sums_is_continued_without_them(make_cfg, monkeypatch):
    from kerzoo.train import loop

    straight = Run(make_cfg("a"), progress=False)
    straight.train()
    with monkeypatch.context() as m:  # a run begun by a kerzoo that wrote no sums
        m.setattr(loop, "_line", lambda record: json.dumps(record) + "\n")
        run = Run(make_cfg("b"), progress=False)
        run.train(stop_at=4)
        run.close()
    assert '"sum"' not in run.traj_path.read_text()
    run = Run(make_cfg("b"), progress=False)
    run.train()
    assert '"sum"' not in run.traj_path.read_text() + run.metrics_path.read_text()
    assert [r["step"] for r in read_jsonl(run.traj_path)[1:]] == list(range(6))
    assert same(trainable_state(replay(None, run.traj_path)[0]), params(straight))


def test_an_update_that_overflows_float16_but_not_float32_is_skipped_bit_for_bit():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model = model.to(torch.float16)
    x = torch.randn(8, 6).to(torch.float16)
    opt = kerzoo.optimizer("mezo", model, lr=1e-2, eps=1e-1)  # on the fly (fp16)

    def closure():
        return model(x).float().pow(2).mean()

    opt.step(closure)
    before = _state(model)
    for g in opt.param_groups:
        g["lr"] = 1e6  # lr g z of about 1e6: finite in float32, over float16's 65504
    with pytest.warns(RuntimeWarning, match=r"the update would make 0.weight non-finite"):
        assert math.isnan(opt.step(closure))
    assert _bitwise(_state(model), before)
    for g in opt.param_groups:
        g["lr"] = 1.0  # lr g z of about 1: the bound holds, no trial
    assert math.isfinite(opt.step(closure)) and not _bitwise(_state(model), before)


@pytest.mark.parametrize("preset", ["mezo", "subzero", "lozo", "hizoo", "pgap"])
def test_the_guard_copies_nothing_when_the_projection_bounds_its_directions(monkeypatch, preset):
    model, opt, closure = _tiny(preset, perturb="onthefly" if preset == "hizoo" else "inplace")
    targets = []
    cls = type(opt.projection)
    for method in ("add_many", "add_table"):  # the passes, and the guard's trials
        real = getattr(cls, method)

        def spy(self, items, *args, real=real, **kwargs):
            targets.extend(t.untyped_storage().data_ptr() for _, t in items)
            return real(self, items, *args, **kwargs)

        monkeypatch.setattr(cls, method, spy)
    for _ in range(3):
        opt.step(closure)
    # the storages a pass may write: the parameters, and on the fly the perturber's workspace
    ids = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids |= {w.untyped_storage().data_ptr() for w in getattr(opt.perturber, "_ws", {}).values()}
    assert targets and set(targets) <= ids  # every pass wrote a parameter: no workspace trial
    for g in opt.param_groups:
        g["lr"] = 1e39  # near float32's limit: now each tensor is tried in a workspace first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped or not, as the trial finds
        opt.step(closure)
    assert not set(targets) <= ids


@pytest.mark.parametrize("hook", ["setup", "state_dict", "load_state_dict"])
def test_a_projection_raising_outside_a_step_is_named(monkeypatch, hook):
    from kerzoo.projections.dense import Dense

    model, opt, closure = _tiny("mezo")
    opt.step(closure)
    state = opt.state_dict()

    def boom(*args, **kwargs):
        raise ValueError("plugin bug")

    monkeypatch.setattr(Dense, hook, boom)
    message = rf"projection 'dense' raised ValueError in {hook}: plugin bug"
    with pytest.raises(ValueError, match=message):
        if hook == "setup":
            kerzoo.optimizer("mezo", model)
        elif hook == "state_dict":
            opt.state_dict()
        else:
            opt.load_state_dict(state)


def test_a_projection_failing_to_save_its_state_in_kerzoo_train_keeps_the_checkpoint(
    make_cfg, tmp_path, capsys, monkeypatch
):
    from kerzoo.projections.dense import Dense

    cfg = make_cfg()
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["train", str(path), "--steps", "3"]) == 0
    ck = Path(cfg["train"]["out"]) / CHECKPOINT
    good = ck.read_bytes()
    capsys.readouterr()

    def boom(self):
        raise RuntimeError("cannot pickle the bases")

    monkeypatch.setattr(Dense, "state_dict", boom)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "kerzoo train: a plugin failed: projection 'dense' raised RuntimeError in state_dict: "
        "cannot pickle the bases; the checkpoint in" in err
    )
    assert ck.read_bytes() == good  # the step-3 checkpoint, as it was


def test_replaying_a_step_the_guard_now_refuses_is_an_error_not_a_silent_skip():
    model, opt, closure = _tiny("mezo")
    start = _state(model)
    opt.step(closure)
    record = json.loads(json.dumps(opt.last_record))
    model.load_state_dict(start)
    fresh = kerzoo.optimizer("mezo", model, lr=1e-2, eps=1e-2)
    record["lr"] = [1e45]  # as if altered: the update now overflows
    with pytest.raises(
        ValueError,
        match=r"record of step 0: the run took this step, and "
        r"replaying it is refused \(the update would make",
    ):
        fresh.replay(record)


@pytest.mark.parametrize("rule", ["momentum", "momentum-replay", "adam"])
def test_a_stateful_rule_proven_finite_is_not_tried_first(monkeypatch, rule):
    spec = {"estimator": "two-point", "projection": "dense", "update": rule}
    _, opt, closure = _tiny(spec)
    calls = []
    cls = type(opt.update_rule)
    real = cls.apply

    def spy(self, ctx, replay=None):
        calls.append(len(ctx.params))
        return real(self, ctx, replay)

    monkeypatch.setattr(cls, "apply", spy)
    for _ in range(3):
        opt.step(closure)
    assert calls == [4, 4, 4]  # once a step, on every tensor: no trial on copies
    calls.clear()
    for g in opt.param_groups:
        g["lr"] = 1e39  # past what the bound proves: each tensor tried first, one at a time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step(closure)
    assert calls[0] == 1  # a trial on one tensor's copy comes first


def test_one_ranks_refused_update_is_refused_on_every_rank(tmp_path, monkeypatch):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        x = torch.randn(8, 6)
        opt = kerzoo.optimizer("mezo", model, lr=1e-2, eps=1e-2)
        opt._sharded = True  # as with FSDP2's DTensors: each rank checks its shard

        def closure():
            return model(x).pow(2).mean()

        opt.step(closure)  # the ranks agree: nothing refused
        assert opt.skipped_steps == 0
        real = dist.all_reduce

        def another_rank_refuses(flag, op=None, group=None):
            real(flag, op=op, group=group)
            flag.fill_(1.0)  # as the MAX over the ranks is when another rank refused

        monkeypatch.setattr(dist, "all_reduce", another_rank_refuses)
        before = _state(model)
        with pytest.warns(
            RuntimeWarning,
            match=r"another rank's shard refused the update at "
            r"step 1: step skipped",
        ):
            assert math.isnan(opt.step(closure))
        assert _bitwise(_state(model), before)  # refused before any point: nothing written
    finally:
        dist.destroy_process_group()
