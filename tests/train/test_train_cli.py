"""`kerzoo train` and `kerzoo replay` end to end, on the shipped all-MiniLM-L6-v2."""

from pathlib import Path

from kerzoo.cli import main

CONFIG = """
[model]
trainable = ["encoder.layer.5.attention.self.query."]
[data]
eval_size = 32
[train]
steps = 4
batch_size = 8
eval_every = 2
checkpoint_every = 2
eval_batch_size = 32
out = "{out}"
"""


def test_train_then_replay_on_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "run"
    (tmp_path / "c.toml").write_text(CONFIG.format(out=out))
    assert main(["train", str(tmp_path / "c.toml")]) == 0
    text = capsys.readouterr().out
    assert "builtin:all-minilm-l6-v2 (encoder), training 147,840 of 22,713,216 parameters" in text
    assert "before," in text and "after 4 steps" in text
    for name in ("metrics.jsonl", "plot.png", "checkpoint.pt", "trajectory.jsonl", "model"):
        assert (out / name).exists() and str(out / name) in text
    assert (
        main(
            [
                "replay",
                "header",
                str(out / "trajectory.jsonl"),
                "--out",
                str(tmp_path / "w.pt"),
                "--check",
                str(out / "checkpoint.pt"),
            ]
        )
        == 0
    )
    assert "identical to" in capsys.readouterr().out
    assert (
        main(["train", str(tmp_path / "c.toml")]) == 0
    )  # a finished run says so and changes nothing
    assert "has finished its 4 steps" in capsys.readouterr().out


def test_bad_input_exits_2_with_the_message(tmp_path, capsys):
    (tmp_path / "typo.toml").write_text("[train]\nstesp = 3\n")
    assert main(["train", str(tmp_path / "typo.toml")]) == 2
    assert "unknown key train.stesp (did you mean 'steps'?)" in capsys.readouterr().err
    assert main(["train", "--set", "train.stesp=3"]) == 2  # an override is checked the same way
    assert "unknown key train.stesp (did you mean 'steps'?)" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty.toml").write_text(
        f'[data]\nsource = "{tmp_path / "empty.jsonl"}"\n[train]\nout = "{tmp_path / "o"}"\n'
    )
    assert main(["train", str(tmp_path / "empty.toml")]) == 2
    assert "holds no example" in capsys.readouterr().err
    assert main(["replay", "header", str(tmp_path / "nothing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not Path(tmp_path / "o" / "checkpoint.pt").exists()
