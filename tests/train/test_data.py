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


ROWS = [{"sentence": f"word {i}", "y": i % 2} for i in range(12)]


@pytest.fixture
def saved_dict(tmp_path):
    """A DatasetDict folder with the splits train (12 rows) and validation (4 rows)."""
    datasets = pytest.importorskip("datasets", reason="saved HF datasets need datasets")
    folder = tmp_path / "dict"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(ROWS),
            "validation": datasets.Dataset.from_list(
                [{"sentence": f"held {i}", "y": 1} for i in range(4)]
            ),
        }
    ).save_to_disk(str(folder))
    return str(folder)


def test_a_saved_dataset_dict_gives_the_chosen_split(saved_dict):
    train = D.load_examples(saved_dict, "sentence", "y", split="train")
    assert train == [{"text": r["sentence"], "label": r["y"]} for r in ROWS]
    held = D.load_examples(saved_dict, "sentence", "y", split="validation")
    assert [e["text"] for e in held] == ["held 0", "held 1", "held 2", "held 3"]


def test_a_dataset_dict_without_a_split_or_with_an_unknown_one_names_its_splits(
    saved_dict, tmp_path
):
    with pytest.raises(
        D.DataError,
        match=r"is a DatasetDict with the splits \['train', 'validation'\]: choose one with "
        r"data.split, e.g. split = 'train'",
    ):
        D.load_examples(saved_dict, "sentence", "y")
    with pytest.raises(
        D.DataError,
        match=r"data.eval_split = 'valid' \(did you mean 'validation'\?\): the DatasetDict .* has "
        r"the splits \['train', 'validation'\]; set data.eval_split to one of them",
    ):
        D.load_examples(saved_dict, "sentence", "y", split="valid", split_key="data.eval_split")
    datasets = pytest.importorskip("datasets")
    only = tmp_path / "only"  # one split: no choice to make
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS[:3])}).save_to_disk(str(only))
    assert len(D.load_examples(str(only), "sentence", "y")) == 3
    plain = tmp_path / "plain"
    datasets.Dataset.from_list(ROWS[:3]).save_to_disk(str(plain))
    with pytest.raises(
        D.DataError, match=r"data.split = 'train', but .* is a single saved Dataset"
    ):
        D.load_examples(str(plain), "sentence", "y", split="train")
    (tmp_path / "d.jsonl").write_text('{"sentence": "a", "y": 0}\n')
    with pytest.raises(D.DataError, match=r"data.split = 'train', but .*d.jsonl' is a file"):
        D.load_examples(str(tmp_path / "d.jsonl"), "sentence", "y", split="train")
    with pytest.raises(D.DataError, match=r"built-in task without splits: remove data.split"):
        D.load_examples("vader-polarity", split="train")
    (tmp_path / "junk").mkdir()
    with pytest.raises(D.DataError, match=r"'.*junk' is a folder, but not one written by"):
        D.load_examples(str(tmp_path / "junk"))


def test_json_files_hold_an_array_or_json_lines(tmp_path):
    want = [{"text": "fine", "label": 1}, {"text": "bad", "label": 0}]
    (tmp_path / "array.json").write_text(
        '[\n  {"text": "fine", "label": 1},\n  {"text": "bad", "label": 0}\n]\n'
    )
    (tmp_path / "lines.json").write_text(
        '{"text": "fine", "label": 1}\n{"text": "bad", "label": 0}\n'
    )
    assert D.load_examples(str(tmp_path / "array.json")) == want
    assert D.load_examples(str(tmp_path / "lines.json")) == want
    (tmp_path / "items.json").write_text('[{"text": "fine", "label": 1}, "bad"]')
    with pytest.raises(D.DataError, match=r"items.json: item 1 of the array is not a JSON object"):
        D.load_examples(str(tmp_path / "items.json"))
    (tmp_path / "cut.json").write_text('[\n{"text": "fine", "label": 1},\n')
    with pytest.raises(D.DataError, match=r"cut.json:3: not valid JSON .*one array of objects"):
        D.load_examples(str(tmp_path / "cut.json"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(D.DataError, match=r"use .jsonl, .json or .csv"):
        D.load_examples(str(tmp_path / "d.txt"))


def test_hf_to_json_output_reads(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS[:4]).to_json(str(tmp_path / "hf.json"))  # JSON Lines
    assert [e["label"] for e in D.load_examples(str(tmp_path / "hf.json"), "sentence", "y")] == [
        0,
        1,
        0,
        1,
    ]


def test_sft_fields_are_named_by_their_config_keys_and_must_be_texts(tmp_path):
    fields = {"prompt": "q", "completion": "a"}
    path = tmp_path / "d.jsonl"
    path.write_text('{"q": "2+2=", "a": "4"}\n{"q": "3+3=", "a": 6}\n')
    assert D.load_examples(str(path), None, fields=fields, require_label=False) == [
        {"prompt": "2+2=", "completion": "4", "label": None},
        {"prompt": "3+3=", "completion": "6", "label": None},
    ]
    path.write_text('{"q": "2+2=", "a": "4"}\n{"q": "3+3=", "a": null}\n')
    with pytest.raises(D.DataError, match=r"d.jsonl:2 has a = None: a text must be a string"):
        D.load_examples(str(path), None, fields=fields, require_label=False)
    path.write_text('{"question": "2+2=", "a": "4"}\n')
    with pytest.raises(
        D.DataError,
        match=r"d.jsonl:1 lacks the field\(s\) 'q' \(its fields: \['a', 'question'\]\); set "
        r"data.prompt_key in the config",
    ):
        D.load_examples(str(path), None, fields=fields, require_label=False)


def _data(**over):
    return {
        "source": "",
        "split": "",
        "eval_source": "",
        "eval_split": "",
        "label_key": "y",
        "eval_size": 500,
        **over,
    }


def test_an_eval_source_or_split_replaces_the_held_out_examples(saved_dict, tmp_path):
    read = ("sentence", {}, True)
    train, held = D.load_sets(
        _data(source=saved_dict, split="train", eval_split="validation"), 0, *read
    )
    assert len(train) == 12 and {e["text"] for e in held} == {f"held {i}" for i in range(4)}
    other = tmp_path / "eval.jsonl"
    other.write_text("".join(f'{{"sentence": "e{i}", "y": 0}}\n' for i in range(9)))
    train, held = D.load_sets(
        _data(source=saved_dict, split="train", eval_source=str(other), eval_size=5), 3, *read
    )
    assert (
        len(train) == 12
        and len(held) == 5
        and {e["text"] for e in held} < {f"e{i}" for i in range(9)}
    )
    assert D.load_sets(
        _data(source=saved_dict, split="train", eval_source=str(other), eval_size=5), 3, *read
    ) == (train, held)  # seeded
    train, held = D.load_sets(_data(source=saved_dict, split="train", eval_size=4), 0, *read)
    assert len(train) == 8 and len(held) == 4  # neither: held out of the training split
    with pytest.raises(D.DataError, match=r"is the training data itself"):
        D.load_sets(_data(source=saved_dict, split="train", eval_split="train"), 0, *read)
    with pytest.raises(
        D.DataError, match=r"data.eval_split = 'dev'.*splits \['train', 'validation'\]"
    ):
        D.load_sets(_data(source=saved_dict, split="train", eval_split="dev"), 0, *read)


def test_the_intensity_task_labels_strong_against_mild_sentiment_of_either_sign():
    ex = D.load_examples("vader-intensity")
    assert len(ex) == 1727 and sum(e["label"] for e in ex) == 772
    # strong whatever the sign; "good" (1.9) is in neither class, "slap" (-0.6) is mild
    assert {"text": "great", "label": 1} in ex and {"text": "murder", "label": 1} in ex
    assert {"text": "slap", "label": 0} in ex
    assert not any(e["text"] == "good" for e in ex)
    with pytest.raises(D.DataError, match="without splits"):
        D.load_examples("vader-intensity", split="train")
