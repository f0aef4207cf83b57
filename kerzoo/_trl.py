"""ZOSFTTrainer: TRL's SFTTrainer with kerzoo's ZO step (kerzoo.hf.ZOTrainerMixin)."""

from __future__ import annotations

from collections import defaultdict

try:
    from trl import SFTTrainer
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        "kerzoo.hf.ZOSFTTrainer needs TRL: pip install 'kerzoo[hf]' (or pip install trl)"
    ) from e

from .hf import ZOTrainerMixin


class ZOSFTTrainer(ZOTrainerMixin, SFTTrainer):
    """trl.SFTTrainer with a kerzoo ZO step: everything SFTTrainer takes, plus ``zo=``.

    SFTTrainer files the entropy and token accuracy it measures in each forward under "eval"
    when the model is in eval mode, which the ZO forwards are: they are moved to the training
    logs (their mean over the step's points). ``num_tokens`` is not logged (the token count of
    a ZO step's forwards is a multiple of the batch's); set TrainingArguments'
    ``include_num_input_tokens_seen`` for Trainer's own count.
    """

    def _zo_run(self, zo, closures):
        held = self._metrics["eval"]
        self._metrics["eval"] = defaultdict(list)
        try:
            return super()._zo_run(zo, closures)
        finally:
            measured, self._metrics["eval"] = self._metrics["eval"], held
            for key, values in measured.items():
                if key != "num_tokens":
                    self._metrics["train"][key].extend(values)
