"""The tasks: classification on label words (MeZO's setup), multiple choice, LM loss on an answer.

Every task answers two questions about a list of examples, as sums so that shards add up
(a data-parallel run all-reduces them, docs/distributed.md):
- ``loss_sum(model, batch) -> (total, weight)``: the batch loss is total / weight;
- ``score(model, batch) -> (right, count)``: the evaluation metric is right / count.

Classification:
- causal LM: the logits of each label word (one token each) after the prompt;
- encoder: cosine similarity between the prompt's mean-pooled embedding and the embedding of
  each label's sentence ("It was great."), divided by a temperature.
The loss is the cross-entropy over labels; accuracy is the arg-max label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TaskError(ValueError):
    """A task that cannot be set up with this model or data: the message names the value."""


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _check_template(cfg: dict) -> None:
    if "{text}" not in cfg["template"]:
        raise TaskError(f"task.template {cfg['template']!r} must contain {{text}}")


class _Choices:
    """Shared by tasks whose logits pick one of several answers: cross-entropy and accuracy."""

    def logits(self, model, batch: list[dict]) -> torch.Tensor:
        raise NotImplementedError

    def loss_sum(self, model, batch):
        target = torch.tensor([ex["label"] for ex in batch], device=_device(model))
        return F.cross_entropy(self.logits(model, batch), target, reduction="sum"), len(batch)

    @torch.no_grad()
    def score(self, model, batch):
        pred = self.logits(model, batch).argmax(-1).cpu()
        return int((pred == torch.tensor([ex["label"] for ex in batch])).sum()), len(batch)


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

    def logits(self, model, batch: list[dict]) -> torch.Tensor:
        device = _device(model)
        prompts = [self.cfg["template"].format(text=ex["text"]) for ex in batch]
        if self.kind == "causal":
            enc = self._encode(prompts, device)
            out = model(**enc).logits
            last = enc["attention_mask"].sum(1) - 1
            return out[torch.arange(len(batch), device=device), last][:, self.label_ids].float()
        labels = [self.cfg["label_prompt"].format(word=w) for w in self.cfg["label_words"]]
        enc = self._encode(prompts + labels, device)
        emb = F.normalize(self._pool(model(**enc), enc["attention_mask"]).float(), dim=-1)
        x, c = emb[: len(batch)], emb[len(batch) :]
        return x @ c.T / self.cfg["temperature"]


class _Continuations:
    """Log-likelihoods of continuations after prompts, for causal LMs (teacher forcing)."""

    def __init__(self, cfg: dict, tokenizer, kind: str, name: str):
        if kind != "causal":
            raise TaskError(f"task.type = {name!r} needs a causal LM; this model is an {kind}")
        _check_template(cfg)
        self.cfg, self.tok = cfg, tokenizer

    def scores(self, model, prompts: list[str], conts: list[str]):
        """Per pair: (sum of log p(continuation tokens), their count, how many are the arg-max)."""
        device = _device(model)
        rows, spans = [], []
        for p, c in zip(prompts, conts):
            pid = self.tok(p, truncation=True, max_length=self.cfg["max_length"])["input_ids"]
            cid = self.tok(" " + c, add_special_tokens=False)["input_ids"][: self.cfg["max_length"]]
            if not cid:
                raise TaskError(f"the continuation {c!r} has no token")
            rows.append(pid + cid)
            spans.append((len(pid), len(pid) + len(cid)))
        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id or 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        total, count, right = [], [], []
        for k, (a, b) in enumerate(spans):
            target = ids[k, a:b]
            pred = logp[k, a - 1 : b - 1]
            total.append(pred.gather(-1, target[:, None]).sum())
            count.append(b - a)
            right.append(int((pred.argmax(-1) == target).sum()))
        return torch.stack(total), count, right


class MultipleChoice(_Continuations, _Choices):
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

    def logits(self, model, batch):
        prompts, conts = [], []
        for ex in batch:
            for o in ex["options"]:
                prompts.append(self.cfg["template"].format(text=ex["text"]))
                conts.append(str(o))
        total, count, _ = self.scores(model, prompts, conts)
        width = max(len(ex["options"]) for ex in batch)
        out = torch.full((len(batch), width), float("-inf"), device=total.device)
        j = 0
        for k, ex in enumerate(batch):
            n = len(ex["options"])
            out[k, :n] = total[j : j + n] / torch.tensor(count[j : j + n], device=total.device)
            j += n
        return out


class LMLoss(_Continuations):
    """Negative log-likelihood of the gold answer's tokens (the loss is the mean per token); the
    metric is the share of answer tokens that are the model's arg-max (teacher forcing)."""

    def __init__(self, cfg, tokenizer, kind):
        super().__init__(cfg, tokenizer, kind, "lm")

    def _pairs(self, batch):
        return [self.cfg["template"].format(text=ex["text"]) for ex in batch], [
            str(ex["answer"]) for ex in batch
        ]

    def loss_sum(self, model, batch):
        total, count, _ = self.scores(model, *self._pairs(batch))
        return -total.sum(), sum(count)

    @torch.no_grad()
    def score(self, model, batch):
        _, count, hit = self.scores(model, *self._pairs(batch))
        return sum(hit), sum(count)


def make_task(cfg: dict, tokenizer, kind: str, examples: list[dict]):
    if cfg["type"] == "multiple_choice":
        return MultipleChoice(cfg, tokenizer, kind, examples)
    if cfg["type"] == "lm":
        return LMLoss(cfg, tokenizer, kind)
    return Classification(cfg, tokenizer, kind, [ex["label"] for ex in examples])
