"""Labelled examples from JSONL, CSV, an HF dataset saved on disk, or a built-in task.

An example is a dict with a text and an integer label. Built-in tasks:
- ``vader-polarity``: the words of the VADER sentiment lexicon (Hutto and Gilbert, 2014; MIT
  licence; shipped by the PyPI package vaderSentiment) whose mean rating by ten human raters
  is at least 1.0 in absolute value: 5,588 words (well over 1,000), labelled
  negative (0) or positive (1).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

BUILTIN = ("vader-polarity",)


class DataError(ValueError):
    """The data could not be read, or holds no usable example."""


def vader_polarity(min_abs: float = 1.0) -> list[dict]:
    try:
        from importlib.resources import files

        text = (files("vaderSentiment") / "vader_lexicon.txt").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        raise DataError(
            "the built-in task 'vader-polarity' needs the package vaderSentiment: "
            "pip install 'kerzoo[train]'"
        ) from None
    out = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].isalpha():
            continue  # emoticons and symbols: keep words only
        score = float(parts[1])
        if abs(score) >= min_abs:
            out.append({"text": parts[0], "label": int(score > 0)})
    return out


def load_examples(
    source: str,
    text_key: str = "text",
    label_key: str = "label",
    fields: dict[str, str] | None = None,
    require_label: bool = True,
) -> list[dict]:
    """Read examples from ``source``: a built-in name, a .jsonl/.csv file, or a saved HF dataset
    folder.

    Each example gets "text" and "label" (an int); ``fields`` maps more names to source fields,
    e.g. {"options": "choices"} for multiple choice or {"answer": "target"} for an LM loss; with
    ``require_label=False`` the label is None where the source has none.
    """
    if source in BUILTIN:
        return vader_polarity()
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"data source {source!r} does not exist: give a .jsonl or .csv file, a folder saved "
            f"with datasets' save_to_disk, or a built-in task ({', '.join(BUILTIN)})"
        )
    if path.is_dir():
        try:
            from datasets import load_from_disk
        except ImportError:
            raise DataError(
                f"{source!r} is a folder: reading a saved HF dataset needs `pip install datasets`"
            ) from None
        rows = list(load_from_disk(str(path)))
    elif path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{source}:{i}: not a JSON object: {exc}") from None
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        raise DataError(f"data file {source!r}: use .jsonl or .csv (or a saved HF dataset folder)")
    fields = fields or {}
    out = []
    for i, row in enumerate(rows):
        needed = [text_key, *fields.values()] + ([label_key] if require_label else [])
        missing = [k for k in needed if k not in row]
        if missing:
            raise DataError(
                f"{source}: example {i} lacks the field(s) {', '.join(repr(k) for k in missing)} "
                f"(its fields: {sorted(row)}); set the data keys in the config"
            )
        label = _label(row[label_key], source, i, label_key) if label_key in row else None
        ex = {"text": str(row[text_key]), "label": label}
        for name, key in fields.items():
            ex[name] = row[key]
        out.append(ex)
    if not out:
        raise DataError(f"data source {source!r} holds no example")
    return out


def _label(value, source: str, i: int, key: str) -> int:
    """An integer label from an int, an integral float or a string of digits (CSV)."""
    try:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, (int, str)):
            return int(value)
    except ValueError:
        pass
    raise DataError(
        f"{source}: example {i} has {key} = {value!r}, not an integer label; labels are "
        "0, 1, ... in the order of task.label_words (map names such as 'positive' to numbers)"
    )


def split(examples: list[dict], eval_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle, then the first ``eval_size`` examples are held out for evaluation."""
    if len(examples) <= eval_size:
        raise DataError(
            f"{len(examples)} examples cannot give {eval_size} held-out ones and a training set: "
            "lower eval_size or add data"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    shuffled = [examples[i] for i in order]
    return shuffled[eval_size:], shuffled[:eval_size]
