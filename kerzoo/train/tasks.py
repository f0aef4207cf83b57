"""The tasks: classification on label words (MeZO's setup), multiple choice, an LM loss on an
answer, a causal-LM loss over the whole text, and SFT (the loss on the completion only).

Every task answers two questions about a list of examples, as sums so that shards add up
(a data-parallel run all-reduces them, docs/distributed.md):
- ``loss_sum(model, batch) -> (total, weight)``: the batch loss is total / weight;
  ``loss_sum(model, batch, n)``, for perturb = "batched": one forward over the batch repeated
  n times (``kerzoo.replicate``: replica k is rows [k B, (k + 1) B)), total a tensor of the n
  replicas' sums and weight one replica's (the same for all: the replicas are one batch);
- ``score(model, batch) -> {name: (sum, weight)}``: each evaluation metric is sum / weight:
  "acc" for every task, and "loss" (the token negative log-likelihood) for the LM tasks (lm,
  causal_lm, sft), whose perplexity is exp(loss).

Classification:
- causal LM: the logits of each label word (one token each) after the prompt;
- encoder: cosine similarity between the prompt's mean-pooled embedding and the embedding of
  each label's sentence ("It was great."), divided by a temperature.
The loss is the cross-entropy over labels; accuracy is the arg-max label.

The LM tasks score spans of tokens by teacher forcing: token t is predicted from the tokens
before it, padding and the prompt are masked out (their targets are ignored), and the loss is
the mean negative log-likelihood of the scored tokens; "acc" is the share of them that are the
model's arg-max.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..perturb.batched import replicate


class TaskError(ValueError):
    """A task that cannot be set up with this model or data: the message names the value."""


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _inputs(enc, n: int | None) -> dict:
    """The model's keyword inputs: the tokenizer's, repeated n times along dim 0 when n is given."""
    return dict(enc) if n is None else replicate(dict(enc), n)


def _check_template(cfg: dict) -> None:
    if "{text}" not in cfg["template"]:
        raise TaskError(f"task.template {cfg['template']!r} must contain {{text}}")
    try:
        cfg["template"].format(text="")
    except (KeyError, IndexError, ValueError) as exc:
        raise TaskError(
            f"task.template {cfg['template']!r} has a placeholder other than {{text}} ({exc!r}); "
            "write a literal brace as {{ or }}"
        ) from None


class _Choices:
    """Shared by tasks whose logits pick one of several answers: cross-entropy and accuracy."""

    def logits(self, model, batch: list[dict], n: int | None = None) -> torch.Tensor:
        """(len(batch), choices); with n, (n len(batch), choices): the n replicas' rows."""
        raise NotImplementedError

    def loss_sum(self, model, batch, n=None):
        target = torch.tensor([ex["label"] for ex in batch], device=_device(model))
        logits = self.logits(model, batch, n)
        if n is None:
            return F.cross_entropy(logits, target, reduction="sum"), len(batch)
        nll = F.cross_entropy(logits, target.repeat(n), reduction="none")
        return nll.view(n, len(batch)).sum(1), len(batch)

    @torch.no_grad()
    def score(self, model, batch):
        pred = self.logits(model, batch).argmax(-1).cpu()
        right = int((pred == torch.tensor([ex["label"] for ex in batch])).sum())
        return {"acc": (right, len(batch))}


class Classification(_Choices):
    def __init__(self, cfg: dict, tokenizer, kind: str, labels: list):
        self.cfg, self.tok, self.kind = cfg, tokenizer, kind
        _check_template(cfg)
        words = cfg["label_words"]
        if len(words) < 2:
            raise TaskError(
                f"task.label_words = {words!r}: classification needs a word per label, at least 2"
            )
        bad = sorted(
            {x for x in labels if not (isinstance(x, int) and 0 <= x < len(words))}, key=str
        )
        if bad:
            raise TaskError(
                f"label(s) {bad[:5]!r} in the data, but task.label_words = {words!r} has "
                f"{len(words)} words: labels must be 0..{len(words) - 1}, one word each"
            )
        if kind == "causal":
            self.label_ids = []
            for w in words:
                ids = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
                if len(ids) != 1:
                    pieces = tokenizer.convert_ids_to_tokens(ids)
                    raise TaskError(
                        f"label word {w!r} is {len(ids)} tokens for this tokenizer ({pieces}); "
                        "choose words that are one token each (with a leading space)"
                    )
                self.label_ids.append(ids[0])

    def _encode(self, texts, device):
        return self.tok(
            texts,
            padding=True,
            truncation=True,
            max_length=self.cfg["max_length"],
            return_tensors="pt",
        ).to(device)

    @staticmethod
    def _pool(out, mask):
        h = out.last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1)

    def logits(self, model, batch: list[dict], n: int | None = None) -> torch.Tensor:
        device = _device(model)
        prompts = [self.cfg["template"].format(text=ex["text"]) for ex in batch]
        if self.kind == "causal":
            enc = _inputs(self._encode(prompts, device), n)
            out = model(**enc).logits
            last = enc["attention_mask"].sum(1) - 1
            rows = torch.arange(out.shape[0], device=device)
            return out[rows, last][:, self.label_ids].float()
        # each replica holds its prompts and the label sentences, so each replica's labels are
        # embedded at its own point
        labels = [self.cfg["label_prompt"].format(word=w) for w in self.cfg["label_words"]]
        enc = _inputs(self._encode(prompts + labels, device), n)
        emb = F.normalize(self._pool(model(**enc), enc["attention_mask"]).float(), dim=-1)
        if n is None:
            x, c = emb[: len(batch)], emb[len(batch) :]
            return x @ c.T / self.cfg["temperature"]
        emb = emb.view(n, len(prompts) + len(labels), -1)
        x, c = emb[:, : len(batch)], emb[:, len(batch) :]
        return (x @ c.transpose(1, 2)).reshape(n * len(batch), -1) / self.cfg["temperature"]


IGNORE = -100  # the target of a token that is not scored (cross_entropy's ignore_index)


class _Tokens:
    """Log-likelihoods of token spans under a causal LM (teacher forcing)."""

    def __init__(self, cfg: dict, tokenizer, kind: str, name: str):
        if kind != "causal":
            raise TaskError(
                f"task.type = {name!r} needs a causal LM (a ...ForCausalLM model); this model is "
                f"an {kind}: set model.name to a causal LM (e.g. an OPT or LLaMA folder), or "
                'model.kind = "causal" if its config does not name a causal architecture'
            )
        _check_template(cfg)
        self.cfg, self.tok = cfg, tokenizer

    def span_scores(self, model, rows: list[list[int]], starts: list[int], n: int | None = None):
        """Per row of token ids: (sum of log p(row[t] | row[:t]) over t >= start, how many
        tokens that is, how many of them are the arg-max). Padding is never scored. With n, the
        rows are repeated n times (one forward): n len(rows) results, replica by replica."""
        device = _device(model)
        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id or 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        target = torch.full_like(ids, IGNORE)
        for k, (r, a) in enumerate(zip(rows, starts)):
            a = max(a, 1)  # the first token has nothing before it
            target[k, a : len(r)] = ids[k, a : len(r)]
        if n is not None:
            ids, mask, target = replicate((ids, mask, target), n)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = target[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
        scored = target != IGNORE
        right = ((logits.argmax(-1) == target) & scored).sum(1)
        return -nll.sum(1), scored.sum(1), right

    def pair_rows(self, prompts: list[str], conts: list[str], end: list[int] = ()):
        """The rows of prompt + continuation tokens (each at most max_length; ``end``, e.g.
        the EOS token, closes the continuation) and where each continuation starts."""
        rows, starts = [], []
        length = self.cfg["max_length"]
        for p, c in zip(prompts, conts):
            pid = self.tok(p, truncation=True, max_length=length)["input_ids"]
            cid = self.tok(c, add_special_tokens=False)["input_ids"][: length - len(end)]
            if not cid:
                raise TaskError(f"the continuation {c!r} has no token")
            rows.append(pid + cid + list(end))
            starts.append(len(pid))
        return rows, starts

    def prompt(self, text: str) -> str:
        return self.cfg["template"].format(text=text)


class MultipleChoice(_Tokens, _Choices):
    """Options scored by mean token log-likelihood after the prompt; cross-entropy over options."""

    def __init__(self, cfg, tokenizer, kind, examples):
        super().__init__(cfg, tokenizer, kind, "multiple_choice")
        for i, ex in enumerate(examples):
            options = ex["options"]
            if not isinstance(options, list) or len(options) < 2:
                raise TaskError(
                    f"multiple-choice example {i} needs a list of at least 2 options, got "
                    f"{options!r}"
                )
            if not (isinstance(ex["label"], int) and 0 <= ex["label"] < len(options)):
                raise TaskError(
                    f"multiple-choice example {i}: label {ex['label']!r} is not the index of one "
                    f"of its {len(options)} options"
                )

    def logits(self, model, batch, n=None):
        prompts, conts = [], []
        for ex in batch:
            for o in ex["options"]:
                prompts.append(self.prompt(ex["text"]))
                conts.append(" " + str(o))
        total, count, _ = self.span_scores(model, *self.pair_rows(prompts, conts), n)
        reps = 1 if n is None else n
        mean = (total / count).view(reps, -1)
        width = max(len(ex["options"]) for ex in batch)
        out = torch.full((reps, len(batch), width), float("-inf"), device=total.device)
        j = 0
        for k, ex in enumerate(batch):
            m = len(ex["options"])
            out[:, k, :m] = mean[:, j : j + m]
            j += m
        return out.view(reps * len(batch), width)


class _TokenLoss(_Tokens):
    """A loss that is the mean negative log-likelihood of the scored tokens of each example."""

    name = ""
    field = ""  # the example's field that must not be empty

    def __init__(self, cfg, tokenizer, kind, examples):
        super().__init__(cfg, tokenizer, kind, self.name)
        for i, ex in enumerate(examples):
            if not ex[self.field].strip():
                raise TaskError(
                    f"task.type = {self.name!r}: example {i} has an empty {self.field} "
                    f"({ex[self.field]!r}), nothing to score; fill it or drop the example"
                )

    def rows(self, batch: list[dict]) -> tuple[list[list[int]], list[int]]:
        raise NotImplementedError

    def loss_sum(self, model, batch, n=None):
        total, count, _ = self.span_scores(model, *self.rows(batch), n)
        if n is None:
            return -total.sum(), int(count.sum())
        return -total.view(n, -1).sum(1), int(count.view(n, -1)[0].sum())

    @torch.no_grad()
    def score(self, model, batch):
        total, count, right = self.span_scores(model, *self.rows(batch))
        n = int(count.sum())
        return {"acc": (int(right.sum()), n), "loss": (float(-total.sum()), n)}


class LMLoss(_TokenLoss):
    """The gold answer's tokens after the prompt (a space between them)."""

    name, field = "lm", "answer"

    def rows(self, batch):
        return self.pair_rows(
            [self.prompt(ex["text"]) for ex in batch], [" " + ex["answer"] for ex in batch]
        )


class SFT(_TokenLoss):
    """The completion's tokens after the prompt, as written (no space added), then EOS (where
    the tokenizer has one, so that the model learns to stop); the prompt is masked."""

    name, field = "sft", "completion"

    def rows(self, batch):
        eos = self.tok.eos_token_id
        return self.pair_rows(
            [self.prompt(ex["prompt"]) for ex in batch],
            [ex["completion"] for ex in batch],
            [] if eos is None else [eos],
        )


class CausalLM(_TokenLoss):
    """Every token of the formatted text but the first (which nothing predicts)."""

    name, field = "causal_lm", "text"

    def rows(self, batch):
        rows = [
            self.tok(self.prompt(ex["text"]), truncation=True, max_length=self.cfg["max_length"])[
                "input_ids"
            ]
            for ex in batch
        ]
        return rows, [1] * len(rows)


LM_TASKS = {"lm": LMLoss, "sft": SFT, "causal_lm": CausalLM}


def data_fields(task_type: str, d: dict) -> tuple[str | None, dict[str, str], bool]:
    """What a task reads from the [data] section ``d``: (the text's field or None, more fields
    by name, whether a label is required), as ``data.load_examples`` takes them."""
    if task_type == "sft":
        return None, {"prompt": d["prompt_key"], "completion": d["completion_key"]}, False
    if task_type == "multiple_choice":
        return d["text_key"], {"options": d["options_key"]}, True
    if task_type == "lm":
        return d["text_key"], {"answer": d["answer_key"]}, False
    return d["text_key"], {}, task_type == "classification"


def make_task(cfg: dict, tokenizer, kind: str, examples: list[dict]):
    if cfg["type"] == "multiple_choice":
        return MultipleChoice(cfg, tokenizer, kind, examples)
    if cfg["type"] in LM_TASKS:
        return LM_TASKS[cfg["type"]](cfg, tokenizer, kind, examples)
    return Classification(cfg, tokenizer, kind, [ex["label"] for ex in examples])
