"""The tasks: classification on label words (MeZO's setup), multiple choice, LM loss on an answer.

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
    pass


class Classification:
    def __init__(self, cfg: dict, tokenizer, kind: str, num_labels: int):
        self.cfg, self.tok, self.kind = cfg, tokenizer, kind
        words = cfg["label_words"]
        if len(words) != num_labels:
            raise TaskError(f"task.label_words has {len(words)} words but the data has {num_labels} labels")
        if "{text}" not in cfg["template"]:
            raise TaskError(f"task.template {cfg['template']!r} must contain {{text}}")
        if kind == "causal":
            self.label_ids = []
            for w in words:
                ids = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
                if len(ids) != 1:
                    raise TaskError(f"label word {w!r} is {len(ids)} tokens for this tokenizer ({ids}); "
                                    "choose words that are one token each (with a leading space)")
                self.label_ids.append(ids[0])

    def _encode(self, texts, device):
        return self.tok(texts, padding=True, truncation=True, max_length=self.cfg["max_length"],
                        return_tensors="pt").to(device)

    @staticmethod
    def _pool(out, mask):
        h = out.last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1)

    def logits(self, model, batch: list[dict]) -> torch.Tensor:
        device = next(model.parameters()).device
        prompts = [self.cfg["template"].format(text=ex["text"]) for ex in batch]
        if self.kind == "causal":
            enc = self._encode(prompts, device)
            out = model(**enc).logits
            last = enc["attention_mask"].sum(1) - 1
            return out[torch.arange(len(batch), device=device), last][:, self.label_ids].float()
        labels = [self.cfg["label_prompt"].format(word=w) for w in self.cfg["label_words"]]
        enc = self._encode(prompts + labels, device)
        emb = F.normalize(self._pool(model(**enc), enc["attention_mask"]).float(), dim=-1)
        x, c = emb[: len(batch)], emb[len(batch):]
        return x @ c.T / self.cfg["temperature"]

    def loss(self, model, batch: list[dict]) -> torch.Tensor:
        target = torch.tensor([ex["label"] for ex in batch], device=next(model.parameters()).device)
        return F.cross_entropy(self.logits(model, batch), target)

    @torch.no_grad()
    def accuracy(self, model, examples: list[dict], batch_size: int) -> float:
        right = 0
        for i in range(0, len(examples), batch_size):
            batch = examples[i : i + batch_size]
            pred = self.logits(model, batch).argmax(-1).cpu()
            right += int((pred == torch.tensor([ex["label"] for ex in batch])).sum())
        return right / len(examples)


class _Continuations:
    """Log-likelihoods of continuations after prompts, for causal LMs (teacher forcing)."""

    def __init__(self, cfg: dict, tokenizer, kind: str, name: str):
        if kind != "causal":
            raise TaskError(f"task.type = {name!r} needs a causal LM; this model is an {kind}")
        if "{text}" not in cfg["template"]:
            raise TaskError(f"task.template {cfg['template']!r} must contain {{text}}")
        self.cfg, self.tok = cfg, tokenizer

    def scores(self, model, prompts: list[str], conts: list[str]):
        """Per pair: (sum of log p(continuation tokens), their count, how many are the arg-max)."""
        device = next(model.parameters()).device
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


class MultipleChoice(_Continuations):
    """Each option scored by its mean token log-likelihood after the prompt; cross-entropy over options."""

    def __init__(self, cfg, tokenizer, kind):
        super().__init__(cfg, tokenizer, kind, "multiple_choice")

    def logits(self, model, batch):
        prompts, conts, owner = [], [], []
        for k, ex in enumerate(batch):
            options = ex["options"]
            if not isinstance(options, list) or len(options) < 2:
                raise TaskError(f"a multiple-choice example needs a list of at least 2 options, got {options!r}")
            for o in options:
                prompts.append(self.cfg["template"].format(text=ex["text"]))
                conts.append(str(o))
                owner.append(k)
        total, count, _ = self.scores(model, prompts, conts)
        width = max(len(ex["options"]) for ex in batch)
        out = torch.full((len(batch), width), float("-inf"), device=total.device)
        j = 0
        for k, ex in enumerate(batch):
            n = len(ex["options"])
            out[k, :n] = total[j : j + n] / torch.tensor(count[j : j + n], device=total.device)
            j += n
        return out

    def loss(self, model, batch):
        target = torch.tensor([ex["label"] for ex in batch], device=next(model.parameters()).device)
        return F.cross_entropy(self.logits(model, batch), target)

    @torch.no_grad()
    def accuracy(self, model, examples, batch_size):
        right = 0
        for i in range(0, len(examples), batch_size):
            batch = examples[i : i + batch_size]
            pred = self.logits(model, batch).argmax(-1).cpu()
            right += int((pred == torch.tensor([ex["label"] for ex in batch])).sum())
        return right / len(examples)


class LMLoss(_Continuations):
    """Mean negative log-likelihood of the gold answer's tokens; accuracy is the share of answer
    tokens that are the model's arg-max (teacher forcing)."""

    def __init__(self, cfg, tokenizer, kind):
        super().__init__(cfg, tokenizer, kind, "lm")

    def _pairs(self, batch):
        return [self.cfg["template"].format(text=ex["text"]) for ex in batch], [str(ex["answer"]) for ex in batch]

    def loss(self, model, batch):
        total, count, _ = self.scores(model, *self._pairs(batch))
        return -total.sum() / sum(count)

    @torch.no_grad()
    def accuracy(self, model, examples, batch_size):
        right = tokens = 0
        for i in range(0, len(examples), batch_size):
            _, count, hit = self.scores(model, *self._pairs(examples[i : i + batch_size]))
            right, tokens = right + sum(hit), tokens + sum(count)
        return right / tokens


def make_task(cfg: dict, tokenizer, kind: str, examples: list[dict]):
    kind_of = cfg["type"]
    if kind_of == "multiple_choice":
        return MultipleChoice(cfg, tokenizer, kind)
    if kind_of == "lm":
        return LMLoss(cfg, tokenizer, kind)
    labels = [ex["label"] for ex in examples]
    if any(x is None for x in labels):
        raise TaskError("classification needs an integer label in every example")
    return Classification(cfg, tokenizer, kind, 1 + max(labels))
