import pytest

from kerzoo.train import data as D


def test_the_builtin_task_has_over_a_thousand_labelled_words():
    ex = D.load_examples("vader-polarity")
    assert len(ex) > 1000 and {e["label"] for e in ex} == {0, 1}
    assert {"text": "good", "label": 1} in ex and {"text": "awful", "label": 0} in ex


def test_jsonl_and_csv_with_own_field_names(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        '{"sentence": "fine", "y": 1}\n\n{"sentence": "bad", "y": 0.0}\n'
    )
    (tmp_path / "d.csv").write_text("text,label\nfine,1\nbad,0\n")
    assert D.load_examples(str(tmp_path / "d.jsonl"), "sentence", "y") == [
        {"text": "fine", "label": 1},
        {"text": "bad", "label": 0},
    ]
    assert D.load_examples(str(tmp_path / "d.csv"))[1] == {"text": "bad", "label": 0}


def test_bad_data_is_a_clear_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(D.DataError, match=r"empty.jsonl' holds no example"):
        D.load_examples(str(tmp_path / "empty.jsonl"))
    (tmp_path / "d.jsonl").write_text('{"sentence": "fine", "y": 1}\n')
    with pytest.raises(D.DataError, match="lacks the field\\(s\\) 'text', 'label'"):
        D.load_examples(str(tmp_path / "d.jsonl"))
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_examples(str(tmp_path / "missing.jsonl"))
    (tmp_path / "named.csv").write_text("text,label\nfine,positive\n")
    with pytest.raises(
        D.DataError, match=r"named.csv:2 has label = 'positive', not an integer label"
    ):
        D.load_examples(str(tmp_path / "named.csv"))
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(D.DataError, match=r"broken.jsonl:2: not a JSON object"):
        D.load_examples(str(tmp_path / "broken.jsonl"))
    with pytest.raises(D.DataError, match="2 examples cannot give 5 held-out"):
        D.split([{"text": "a", "label": 0}] * 2, 5, 0)


def test_the_split_is_seeded_and_disjoint():
    ex = [{"text": str(i), "label": i % 2} for i in range(100)]
    train, held = D.split(ex, 10, seed=3)
    assert D.split(ex, 10, seed=3) == (train, held) and len(held) == 10 and len(train) == 90
    assert not {e["text"] for e in train} & {e["text"] for e in held}


def test_an_hf_dataset_saved_on_disk(tmp_path):
    datasets = pytest.importorskip(
        "datasets", reason="reading saved HF datasets needs `pip install datasets`"
    )
    datasets.Dataset.from_list(
        [{"sentence": "fine", "y": 1}, {"sentence": "bad", "y": 0}]
    ).save_to_disk(str(tmp_path / "saved"))
    assert D.load_examples(str(tmp_path / "saved"), "sentence", "y") == [
        {"text": "fine", "label": 1},
        {"text": "bad", "label": 0},
    ]
