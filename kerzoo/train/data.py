"""Labelled examples from JSONL, CSV, an HF dataset saved on disk, or a built-in task.

An example is a dict with a text and an integer label. Built-in tasks:
- ``vader-polarity``: the words of the VADER sentiment lexicon (Hutto and Gilbert, 2014; MIT
  licence; shipped by the PyPI package vaderSentiment) whose mean rating by ten human raters
  is at least 1.0 in absolute value: 5,588 words (well over 1,000), labelled
  negative (0) or positive (1).
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from ..config import read_text

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
        rows = [(f"{source}: example {i}", row) for i, row in enumerate(load_from_disk(str(path)))]
    elif path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(_text(path).splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{source}:{i}: not a JSON object: {exc}") from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"{source}:{i}: not a JSON object but {json.dumps(row)[:40]} (each line "
                        'must be one example, e.g. {"text": "...", "label": 0})'
                    )
                rows.append((f"{source}:{i}", row))
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
        raise DataError(f"data file {source!r}: use .jsonl or .csv (or a saved HF dataset folder)")
    fields = fields or {}
    out = []
    for where, row in rows:
        needed = [text_key, *fields.values()] + ([label_key] if require_label else [])
        missing = [k for k in needed if k not in row]
        if missing:
            raise DataError(
                f"{where} lacks the field(s) {', '.join(repr(k) for k in missing)} "
                f"(its fields: {sorted(row)}); set the data keys in the config"
            )
        text = row[text_key]
        if not isinstance(text, (str, int, float)) or isinstance(text, bool):
            raise DataError(
                f"{where} has {text_key} = {text!r:.40}: a text must be a string "
                "(not null or a boolean)"
            )
        label = _label(row[label_key], where, label_key) if label_key in row else None
        ex = {"text": str(text), "label": label}
        for name, key in fields.items():
            ex[name] = row[key]
        out.append(ex)
    if not out:
        raise DataError(f"data source {source!r} holds no example")
    return out


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
            "lower eval_size or add data"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    shuffled = [examples[i] for i in order]
    return shuffled[eval_size:], shuffled[:eval_size]
