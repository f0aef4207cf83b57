"""The benchmark entry point: every command the docs and gpu.sh name exists, optimizer specs
parse, and a mode runs end to end with the JSON the docs read. No timing is checked here."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import step  # noqa: E402

from common import parse_spec  # noqa: E402

MODES = set(step.parser()._subparsers._group_actions[0].choices)


def named_commands():
    """(file, script, mode or None) for each benchmarks/X.py named in docs/**/*.md and gpu.sh."""
    files = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "gpu.sh"]
    pattern = re.compile(r"(?:benchmarks/|\$B/)(\w+)\.py(?: ([A-Za-z]+))?")
    return [
        (f.relative_to(ROOT), m.group(1), m.group(2))
        for f in files
        for m in pattern.finditer(f.read_text())
    ]


def test_every_named_benchmark_exists():
    commands = named_commands()
    assert any(script == "step" for _, script, _ in commands)
    for path, script, mode in commands:
        assert (ROOT / "benchmarks" / f"{script}.py").exists(), f"{path} names {script}.py"
        if script == "step":
            assert mode in {*MODES, "MODE"}, f"{path}: step.py mode {mode!r}, not in {MODES}"


def test_modes_cover_the_six_old_scripts():
    assert {"time", "presets", "projections", "overhead", "host", "profile", "compile"} <= MODES
    old_scripts = ["step_time", "presets_step", "projection_step", "step_overhead"]
    for old in [*old_scripts, "host_overhead", "profile_step"]:
        assert not (ROOT / "benchmarks" / f"{old}.py").exists()


def test_parse_spec():
    assert parse_spec("kerzoo:r_scope=tensor,eps=1e-3,directions=3", {"lr": 0.0}) == (
        "kerzoo",
        {"lr": 0.0, "r_scope": "tensor", "eps": 1e-3, "directions": 3},
    )
    assert parse_spec("mezo") == ("mezo", {})
    with pytest.raises(SystemExit, match="key=value"):
        parse_spec("mezo:inplace")


def test_host_mode_writes_its_json(tmp_path):
    out = tmp_path / "host.json"
    threads = torch.get_num_threads()
    try:
        step.main(
            [
                *("host", "--tensors", "4", "--presets", "mezo", "kerzoo:r_scope=tensor"),
                *("--modes", "inplace", "--steps", "1", "--rounds", "1", "--json", str(out)),
            ]
        )
    finally:  # the mode runs on one thread
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())
    assert rows["tensors"] == 4
    assert set(rows["steps"]) == {"mezo inplace", "kerzoo:r_scope=tensor inplace"}
    assert all(t > 0 for t in rows["steps"].values())
    assert set(rows["cpu_steps"]) == set(rows["steps"])


def test_batched_mode_writes_its_json(tmp_path):
    out = tmp_path / "batched.json"
    step.main(
        [
            *("batched", "--model", "tiny-llama", "--batch", "1", "--seq", "8"),
            *("--steps", "1", "--warmup", "0", "--repeat", "1", "--json", str(out)),
        ]
    )
    res = json.loads(out.read_text())
    assert res["onthefly"]["points"] == res["batched"]["points"] == 9
    assert res["max_rel_loss_difference"] < 1e-5  # the same losses either way
    assert res["batched_over_separate_step"] > 0


def test_race_methods_parse_with_options_and_the_hidden_decay():
    import race

    assert race.parse_method("mezo") == ("mezo", {}, {})
    assert race.parse_method("kerzoo:C=4,rescale=false,r_min=1e-4,r_scope=tensor") == (
        "kerzoo",
        {"C": 4, "rescale": False, "r_min": 1e-4, "r_scope": "tensor"},
        {},
    )
    assert race.parse_method("mezo:hidden_decay=2000") == ("mezo", {}, {"hidden_decay": 2000})
    assert race.parse_method("fzoo:n=4,anneal=cosine") == ("fzoo", {"n": 4}, {"anneal": "cosine"})
    with pytest.raises(SystemExit, match="key=value"):
        race.parse_method("kerzoo:tensor")
    with pytest.raises(SystemExit, match="anneal='cosin' is not a schedule: use anneal=linear"):
        race.parse_method("mezo:anneal=cosin")
    assert race.parse_method("mezo:lora=8,anneal=cosine") == (
        "mezo",
        {},
        {"lora": 8, "anneal": "cosine"},
    )
    with pytest.raises(SystemExit, match="lora=0 is not a rank: use lora=8"):
        race.parse_method("mezo:lora=0")
    # the factor is E[r 4K(r)] / 4: 1 at the start, 1.86 near a = 0.77, then ~ a^2
    assert race.hidden_decay(0, 100) == pytest.approx(1.0)
    assert max(race.hidden_decay(t, 1000) for t in range(1000)) == pytest.approx(1.86, abs=0.01)
    assert race.hidden_decay(900, 1000) == pytest.approx(15 / 4 * 0.01 * (5 / 3 - 0.014), rel=1e-9)
    # the harness's lr factor: the hidden decay by steps, the anneal by forwards of the budget
    assert race.lr_factor({}, 500, 900, 1000) == 1.0
    assert race.lr_factor({"hidden_decay": 1000}, 900, 0, 1000) == race.hidden_decay(900, 1000)
    assert race.lr_factor({"anneal": "linear"}, 3, 250, 1000) == pytest.approx(0.75)
    assert race.lr_factor({"anneal": "cosine"}, 3, 500, 1000) == pytest.approx(0.5)
    assert race.lr_factor({"anneal": "cosine"}, 3, 1000, 1000) == pytest.approx(0.0, abs=1e-12)
    both = race.lr_factor({"hidden_decay": 100, "anneal": "linear"}, 50, 500, 1000)
    assert both == pytest.approx(race.hidden_decay(50, 100) * 0.5)


def test_race_grids_follow_the_preset_and_fzoo_follows_eps():
    import race

    assert race.grid("mezo", 1e-3) == race.DEFAULT_GRID
    assert race.grid("sparse-mezo:sparsity=0.5", 1e-3) == race.GRIDS["sparse-mezo"]
    assert race.grid("fzoo", 1e-3) == race.GRIDS["fzoo"]
    # fzoo's step goes as lr / eps: at eps 1e-2 its grid is ten times larger
    assert race.grid("fzoo:n=4", 1e-2) == (1e-5, 3e-5, 1e-4, 3e-4)
    assert race.grid("kerzoo", 1e-2) == race.DEFAULT_GRID


def test_a_race_to_an_earlier_races_target_counts_forwards_against_that_race(tmp_path):
    import json

    import race

    def run(method, seed, accs, every=100):
        curve = [
            {"step": i, "forwards": i * every, "seconds": i, "cpu_seconds": i, "acc": a, "loss": 1}
            for i, a in enumerate(accs)
        ]
        return {"method": method, "seed": seed, "lr": 1e-4, "curve": curve}

    # the earlier race: mezo ends at 0.8 and 0.9 (target 0.85), reached at 300 and 200 forwards
    earlier = tmp_path / "long.json"
    runs = [run("mezo", 0, [0.5, 0.6, 0.7, 0.86, 0.8]), run("mezo", 1, [0.5, 0.7, 0.9, 0.9, 0.9])]
    earlier.write_text(json.dumps({"meta": {"forwards": 400}, "runs": runs}))
    target = race.target_of(f"{earlier}:mezo")
    assert target["acc"] == pytest.approx(0.85) and target["forwards"] == 250
    assert target["budget"] == 400 and target["method"] == "mezo"
    with pytest.raises(SystemExit, match="no runs of 'fzoo'"):
        race.target_of(f"{earlier}:fzoo")
    # this race: 200 forwards; mezo does not reach 0.85, fzoo does on one seed of two at 100
    short = [
        run("mezo", 0, [0.5, 0.6, 0.7]),
        run("fzoo", 0, [0.5, 0.85, 0.8]),
        run("fzoo", 1, [0.5, 0.6, 0.7]),
    ]
    summary = race.summarise(short, 200, target)
    assert summary["target"] == pytest.approx(0.85)
    assert summary["methods"]["mezo"]["forwards_to_target"] is None
    assert summary["methods"]["fzoo"]["forwards_to_target"] == 100
    assert summary["methods"]["fzoo"]["reached"] == 1
    assert summary["methods"]["fzoo"]["ends_at_target"] == 0  # 0.8 at the end: touched, not held
    meta = {
        "command": "race",
        "machine": "m",
        "workers": 1,
        "threads": 1,
        "load": "0",
        "forwards": 200,
        "eval_forwards": 100,
        "seeds": [0, 1],
        "tune_forwards": 0,
        "tuning": [],
    }
    md = tmp_path / "short.md"
    race.write_markdown(md, summary, meta)
    text = md.read_text()
    assert f"after 400 forwards in `{earlier}:mezo`" in text and "**0.850**" in text
    assert "- fzoo: 100 forwards, 0.40x (1/2 seeds reached it)" in text
    assert "| 1/2 | 0/2 |" in text  # reached, and ends at or above
    assert "- mezo: did not reach 0.850 within 200 forwards on any seed" in text


def test_race_columns_task_and_included_races_follow_the_budget(tmp_path):
    import json

    import race

    assert race.without_lr("mezo:lr=1e-4") == "mezo"
    assert race.without_lr("kerzoo:lr=3e-5,C=4") == "kerzoo:C=4"
    assert race.checkpoints(4000) == (800, 2000, 4000)
    assert race.checkpoints(10000) == (800, 2000, 4000, 10000)
    assert race.checkpoints(3000) == (800, 2000, 3000)
    from pathlib import Path

    run = race.task_run(str(Path(__file__).parents[1] / "configs/intensity.toml"), "bfloat16")
    assert run["data"]["source"] == "vader-intensity" and run["model"]["dtype"] == "bfloat16"
    assert race.task_run(None, "float32")["model"]["trainable"] == [
        "encoder.layer.4.",
        "encoder.layer.5.",
    ]
    # a race of another task, dtype or budget is refused as a --with source, naming the difference
    saved = tmp_path / "old.json"
    meta = {"forwards": 4000, "eval_forwards": 400, "eps": 1e-3}
    saved.write_text(json.dumps({"meta": meta, "runs": [{"method": "mezo", "curve": []}]}))
    args = race.argparse.Namespace(
        forwards=4000, eval_forwards=400, eps=1e-3, task=None, dtype="float32"
    )
    assert race.include(f"{saved}:mezo", args)[2] == "mezo"
    assert race.split_source("a/b.json:mezo:lora=8,anneal=cosine") == (
        "a/b.json",
        "mezo:lora=8,anneal=cosine",
    )
    with pytest.raises(SystemExit, match=r"write an earlier race as FILE\.json:METHOD"):
        race.split_source("a/b.json")
    for change in ({"dtype": "bfloat16"}, {"task": "configs/intensity.toml"}, {"forwards": 10000}):
        with pytest.raises(SystemExit, match="not this one's budget, eps, task and dtype"):
            race.include(f"{saved}:mezo", race.argparse.Namespace(**{**vars(args), **change}))


def test_a_race_without_mezo_is_refused_before_anything_runs():
    import race

    with pytest.raises(SystemExit, match="target is mezo's final accuracy"):
        race.main(["--methods", "fzoo:lr=3e-6", "--out", "/nonexistent/race"])


def test_a_race_run_with_lora_trains_only_the_adapters_and_counts_its_forwards(monkeypatch):
    """One short run of the harness: lora=4 trains MeZO's LoRA setting (query and value) in
    place of the top two layers, and the curve counts every training forward."""
    import race

    from kerzoo.train import loop

    seen = {}
    init = loop.Run.__init__

    def spy(self, cfg, *a, **kw):
        init(self, cfg, *a, **kw)
        seen["lora"] = cfg["model"]["lora"]
        seen["trained"] = [n for n, p in self.model.named_parameters() if p.requires_grad]

    monkeypatch.setattr(loop.Run, "__init__", spy)
    job = {"forwards": 4, "eval_forwards": 2, "threads": 1, "method": "mezo:lora=4"}
    curve = race.one_run({**job, "lr": 1e-3, "seed": 0})["curve"]
    assert [p["forwards"] for p in curve] == [0, 2, 4]
    assert seen["lora"] == {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}
    assert seen["trained"] and all("lora_" in n for n in seen["trained"])
    assert any(".query." in n for n in seen["trained"])
