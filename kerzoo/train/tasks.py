"""Prompt-based classification scored on label words (MeZO's setup).

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
