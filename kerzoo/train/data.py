"""Examples from JSON Lines, JSON, CSV, an HF dataset saved on disk, or a built-in task.

An example is a dict with a text and an integer label (or, for the tasks that need them, other
fields: a prompt and a completion, options, an answer). A saved ``DatasetDict`` folder gives
the split the config chooses. Built-in tasks:
- ``vader-polarity``: the words of the VADER sentiment lexicon (Hutto and Gilbert, 2014; MIT
  licence; shipped by the PyPI package vaderSentiment) whose mean rating by ten human raters
  is at least 1.0 in absolute value: 5,588 words (well over 1,000), labelled
  negative (0) or positive (1).
- ``vader-intensity``: the same lexicon's words labelled by how strong their sentiment is,
  whatever its sign: mild (0, mean rating at least 0.5 and under 1.0 in absolute value, 955
  words) or strong (1, at least 2.5, 772 words); 1,727 words. A second offline task: what it
  asks is not what the polarity task teaches.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import random
from pathlib import Path

from ..config import read_text

BUILTIN = ("vader-polarity", "vader-intensity")


class DataError(ValueError):
    """The data could not be read, or holds no usable example."""


def _vader_words() -> list[tuple[str, float]]:
    """(word, mean rating) of the VADER lexicon's words (emoticons and symbols left out)."""
    try:
        from importlib.resources import files

        text = (files("vaderSentiment") / "vader_lexicon.txt").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        raise DataError(
            "the built-in tasks vader-polarity and vader-intensity need the package "
            "vaderSentiment: pip install 'kerzoo[train]'"
        ) from None
    words = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].isalpha():  # emoticons and symbols: keep words only
            words.append((parts[0], float(parts[1])))
    return words


def vader_polarity(min_abs: float = 1.0) -> list[dict]:
    return [
        {"text": w, "label": int(score > 0)} for w, score in _vader_words() if abs(score) >= min_abs
    ]


def vader_intensity() -> list[dict]:
    out = []
    for word, score in _vader_words():
        if 0.5 <= abs(score) < 1.0 or abs(score) >= 2.5:
            out.append({"text": word, "label": int(abs(score) >= 2.5)})
    return out


TEXT_FIELDS = ("text", "prompt", "answer", "completion")  # fields that must hold a text


def load_examples(
    source: str,
    text_key: str | None = "text",
    label_key: str = "label",
    fields: dict[str, str] | None = None,
    require_label: bool = True,
    split: str = "",
    split_key: str = "data.split",
) -> list[dict]:
    """Read examples from ``source``: a built-in name, a .jsonl/.json/.csv file, or a folder
    saved with datasets' ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` whose ``split``
    is read; ``split_key`` is the config key named in its errors).

    Each example gets "text" (from ``text_key``; None: no text) and "label" (an int);
    ``fields`` maps more names to source fields, e.g. {"options": "choices"} for multiple
    choice or {"prompt": "question", "completion": "reply"} for SFT. With
    ``require_label=False`` the label is None (tasks without labels). A field named in
    TEXT_FIELDS must hold a string (or a number), not null.
    """
    if source in BUILTIN:
        if split:
            raise DataError(
                f"{split_key} = {split!r}, but {source!r} is a built-in task without splits: "
                f"remove {split_key}"
            )
        return vader_polarity() if source == "vader-polarity" else vader_intensity()
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"data source {source!r} does not exist: give a .jsonl, .json or .csv file, a folder "
            f"saved with datasets' save_to_disk, or a built-in task ({', '.join(BUILTIN)})"
        )
    if path.is_dir():
        rows = _saved_rows(source, split, split_key)
    elif split:
        raise DataError(
            f"{split_key} = {split!r}, but {source!r} is a file, not a saved DatasetDict folder "
            f"with splits: remove {split_key} (or give the folder)"
        )
    elif path.suffix in (".jsonl", ".json"):
        rows = _json_rows(source, path)
    elif path.suffix == ".csv":
        rows = []
        reader = csv.DictReader(io.StringIO(_text(path), newline=""))
        for row in reader:
            where = f"{source}:{reader.line_num}"
            if None in row:
                raise DataError(
                    f"{where}: {len(reader.fieldnames) + len(row[None])} fields, the header has "
                    f"{len(reader.fieldnames)} (quote a text holding commas)"
                )
            short = [k for k, v in row.items() if v is None]
            if short:
                raise DataError(
                    f"{where}: {len(row) - len(short)} fields, the header has {len(row)} "
                    f"({', '.join(repr(k) for k in short)} missing)"
                )
            rows.append((where, row))
    else:
        raise DataError(
            f"data file {source!r}: use .jsonl, .json or .csv (or a saved HF dataset folder)"
        )
    wanted = ({"text": text_key} if text_key is not None else {}) | (fields or {})
    out = []
    for where, row in rows:
        needed = [*wanted.values()] + ([label_key] if require_label else [])
        missing = [k for k in needed if k not in row]
        if missing:
            keys = [f"data.{n}_key" for n, k in wanted.items() if k in missing]
            keys += ["data.label_key"] if label_key in missing else []
            raise DataError(
                f"{where} lacks the field(s) {', '.join(repr(k) for k in missing)} "
                f"(its fields: {sorted(row)}); set {', '.join(keys)} in the config to the "
                "fields that hold them"
            )
        ex = {
            n: _string(row[k], where, k) if n in TEXT_FIELDS else row[k] for n, k in wanted.items()
        }
        ex["label"] = _label(row[label_key], where, label_key) if require_label else None
        out.append(ex)
    if not out:
        raise DataError(f"data source {source!r} holds no example")
    return out


def _string(value, where: str, key: str) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DataError(
            f"{where} has {key} = {value!r:.40}: a text must be a string (not null or a "
            "boolean); fill the field or drop the example"
        )
    return str(value)


def _saved_rows(source: str, split: str, split_key: str) -> list[tuple[str, dict]]:
    """The rows of a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
    (then those of ``split``; with no split given, its only split)."""
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError(
            f"{source!r} is a folder: reading a saved HF dataset needs `pip install datasets`"
        ) from None
    try:
        saved = load_from_disk(source)
    except FileNotFoundError as exc:
        raise DataError(
            f"{source!r} is a folder, but not one written by datasets' save_to_disk ({exc}); give "
            "such a folder or a .jsonl, .json or .csv file"
        ) from None
    label = source
    if isinstance(saved, DatasetDict):
        names = list(saved)
        if split and split not in saved:
            close = difflib.get_close_matches(split, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(
                f"{split_key} = {split!r}{hint}: the DatasetDict {source!r} has the splits "
                f"{names}; set {split_key} to one of them"
            )
        if not split:
            if len(names) != 1:
                raise DataError(
                    f"{source!r} is a DatasetDict with the splits {names}: choose one with "
                    f"{split_key}, e.g. {split_key.rpartition('.')[2]} = {names[0]!r}"
                )
            split = names[0]
        saved, label = saved[split], f"{source}[{split}]"
    elif split:
        raise DataError(
            f"{split_key} = {split!r}, but {source!r} is a single saved Dataset, not a "
            f"DatasetDict of splits: remove {split_key}"
        )
    return [(f"{label}: example {i}", row) for i, row in enumerate(saved)]


def _json_rows(source: str, path: Path) -> list[tuple[str, dict]]:
    """The objects of a JSON Lines file (.jsonl, or .json written one object per line, as
    datasets' to_json does) or of a .json file holding one JSON array."""
    text = _text(path)
    shape = 'each must be one example, e.g. {"text": "...", "label": 0}'
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{source}:{exc.lineno}: not valid JSON ({exc.msg}); a .json file holds one "
                "array of objects, or one object per line"
            ) from None
        rows = []
        for i, row in enumerate(items):
            if not isinstance(row, dict):
                raise DataError(
                    f"{source}: item {i} of the array is not a JSON object but "
                    f"{json.dumps(row)[:40]} ({shape})"
                )
            rows.append((f"{source}: item {i}", row))
        return rows
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                also = (
                    " (a .json file holds one array of objects, or one object per line)"
                    if path.suffix == ".json"
                    else ""
                )
                raise DataError(f"{source}:{i}: not a JSON object: {exc}{also}") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{source}:{i}: not a JSON object but {json.dumps(row)[:40]} ({shape}, one "
                    "per line)"
                )
            rows.append((f"{source}:{i}", row))
    return rows


def _text(path: Path) -> str:
    """The UTF-8 text of a data file (a BOM dropped); a DataError naming the line otherwise."""
    return read_text(path, "data file", DataError)


def _label(value, where: str, key: str) -> int:
    """An integer label from an int, an integral float or a string of digits (CSV); booleans
    and null are refused."""
    try:
        if isinstance(value, bool):
            pass  # true/false are not labels
        elif isinstance(value, (int, str)) or (isinstance(value, float) and value.is_integer()):
            return int(value)
    except ValueError:
        pass
    raise DataError(
        f"{where} has {key} = {value!r:.40}, not an integer label; labels are "
        "0, 1, ... in the order of task.label_words (map names such as 'positive' to numbers)"
    )


def split(examples: list[dict], eval_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle, then the first ``eval_size`` examples are held out for evaluation."""
    if len(examples) <= eval_size:
        raise DataError(
            f"{len(examples)} examples cannot give {eval_size} held-out ones and a training set: "
            "lower data.eval_size, add data, or evaluate on another split or source "
            "(data.eval_split, data.eval_source)"
        )
    shuffled = _shuffled(examples, seed)
    return shuffled[eval_size:], shuffled[:eval_size]


def _shuffled(examples: list[dict], seed: int) -> list[dict]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order]


def _same_source(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).samefile(b))


def load_sets(
    d: dict, seed: int, text_key: str | None, fields: dict[str, str], require_label: bool
) -> tuple[list[dict], list[dict]]:
    """The training and evaluation examples of the [data] section ``d``.

    Without data.eval_source and data.eval_split, data.eval_size examples of the source are held
    out (``split``). Otherwise the whole source (data.split) is trained on and evaluation reads
    data.eval_source (the source itself when it is empty) at data.eval_split: all of it, or
    eval_size of it (a seeded shuffle, then the first ones) when it has more."""

    def read(source: str, split_name: str, key: str) -> list[dict]:
        return load_examples(
            source, text_key, d["label_key"], fields, require_label, split_name, key
        )

    examples = read(d["source"], d["split"], "data.split")
    if not d["eval_source"] and not d["eval_split"]:
        return split(examples, d["eval_size"], seed)
    source = d["eval_source"] or d["source"]
    if _same_source(source, d["source"]) and d["eval_split"] == d["split"]:
        raise DataError(
            f"data.eval_source = {source!r} with data.eval_split = {d['eval_split']!r} is the "
            "training data itself: evaluating on it would not measure held-out accuracy. Give "
            "another data.eval_split (e.g. 'validation') or data.eval_source, or neither (to "
            "hold out data.eval_size examples)"
        )
    held = read(source, d["eval_split"], "data.eval_split")
    if len(held) > d["eval_size"]:
        held = _shuffled(held, seed)[: d["eval_size"]]
    return examples, held
