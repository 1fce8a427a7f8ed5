"""lm-evaluation-harness's model interface over honed's runtimes (imported only when lm-eval is).

``HonedLM`` is an ``lm_eval.api.model.TemplateLM``: lm-eval turns each task into requests
(log-likelihood of a continuation, rolling log-likelihood of a document, generation until stop
strings) and this class answers them with the backend's primitives, so one task definition
scores HF, ONNX and onnxruntime-genai models alike.  Tokenization, the empty-context prefix,
left truncation and rolling windows follow lm-eval's own ``HFLM`` (lm_eval/models/huggingface.py,
v0.4), so an HF model scores the same through either.
"""

from __future__ import annotations

import logging
from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM

from honed.errors import UserError
from honed.models.runtime import Runtime

log = logging.getLogger("honed")

DEFAULT_MAX_LENGTH = 2048
"""lm-eval's HFLM fallback when neither the model nor the tokenizer states a context length."""
MAX_GEN_TOKS = 256
"""lm-eval's default number of new tokens for a generation request without max_gen_toks."""


class HonedLM(TemplateLM):
    """lm-eval model over one opened runtime (``honed.models.runtime``; the evaluators' backends are runtimes).

    ``batch_size``: sequences per forward call (HF batches; ONNX and genai score one sequence at a
    time).  ``max_length``: most tokens the model sees; longer requests are left-truncated, as lm-eval
    does.  ``max_gen_toks``: new tokens when a generation task sets none.  Generation is greedy: a task
    asking for sampling is named in a warning.
    """

    def __init__(self, backend: Runtime, batch_size: int = 1, max_length: int | None = None,
                 max_gen_toks: int | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.batch_size = batch_size
        limit = getattr(self.tokenizer, "model_max_length", None)
        tokenizer_limit = limit if isinstance(limit, int) and 0 < limit < 10**9 else None
        self._max_length = max_length or backend.context_length or tokenizer_limit or DEFAULT_MAX_LENGTH
        self._max_gen_toks = max_gen_toks or MAX_GEN_TOKS
        self._warned: set[str] = set()

    # ---------------------------------------------------------------- tokens

    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise UserError("the model's tokenizer has no EOS token, which lm-eval's requests need")
        return int(eos)

    @property
    def prefix_token_id(self) -> int:
        """Context of a request with an empty context: BOS, else EOS (as HFLM)."""
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        """New tokens of a generation request whose task sets no max_gen_toks."""
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "honed")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        """The tokenizer's own special-token default unless told, and none when the text already starts
        with BOS (HFLM's rule)."""
        kw: dict[str, Any] = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        bos = getattr(self.tokenizer, "bos_token", None)
        if add_special_tokens is None and bos and string.startswith(bos):
            kw = {"add_special_tokens": False}
        ids = list(self.tokenizer.encode(string, **kw))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ---------------------------------------------------------------- requests

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """TemplateLM's tokenization of (context, continuation) pairs, without its progress bar."""
        return super().loglikelihood(requests, disable_tqdm=True)

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """(summed log p, is greedy) of each continuation after its context, left-truncated to
        max_length + 1 tokens (the last token is scored, never fed)."""
        seqs = []
        for _, context, continuation in requests:
            if not continuation:
                raise UserError("lm-eval asked for the log-likelihood of an empty continuation")
            if len(continuation) > self.max_length:
                raise UserError(f"a continuation of {len(continuation)} tokens exceeds max_length {self.max_length}; "
                                "raise the LMEvaluator's max_length")
            ids = (context + continuation)[-(self.max_length + 1):]
            seqs.append((ids, len(ids) - len(continuation)))
        results = self.backend.loglikelihoods(seqs, self.batch_size)
        for (request, _, _), answer in zip(requests, results, strict=True):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents in disjoint windows of max_length tokens, each token
        predicted once (lm-eval's rolling windows, prefixed by BOS/EOS)."""
        out = []
        for (text,) in [r.args for r in requests]:
            windows = [(None, *lm_utils.make_disjoint_window(w)) for w in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            total = sum(lp for lp, _ in self._loglikelihood_tokens(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut before the first of the task's stop strings."""
        out = []
        for context, gen_kwargs in [r.args for r in requests]:
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None)
            stops = [until] if isinstance(until, str) else [s for s in (until or []) if s]
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0) > 0:
                note = "an lm-eval task asks for sampling; honed's LMEvaluator decodes greedily"
                if note not in self._warned:
                    self._warned.add(note)
                    log.warning(note)
            budget = max(self.max_length - max_new, 1)
            ids = self.tok_encode(context, left_truncate_len=budget)
            text = self.tok_decode(self.backend.generate(ids, max_new, stops))
            for s in stops:
                text = text.split(s)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out
