"""KV-cached incremental decoding over a batch of padded sequences.

One object serves both the acting policy (next-token logits to sample from) and
the environment's frozen reference model (the log-prob of each chosen token),
so both run one forward per generated token over the whole batch, never a
forward over the growing prefix. Sequences are laid out in a window with
padding anywhere (left padding of prompts, holes after a finished response):
the attention mask hides padding and position ids count only real tokens, so
the logits equal those of an unpadded forward pass.

Rows that are identical at prefill (K samples of one prompt, as in
``num_return_sequences``) share one prefill: only the distinct rows go through
the model, and each layer's keys and values are then gathered back to the full
batch, so a prompt's K samples cost one prompt forward, not K.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


class IncrementalDecoder:
    """Holds one batch's KV cache for ``model``; ``prefill`` then ``advance`` per token."""

    def __init__(self, model: PreTrainedModel, output_hidden_states: bool = False) -> None:
        self.model = model
        self.output_hidden_states = output_hidden_states
        self._cache: DynamicCache | None = None
        self._attention_mask: torch.Tensor | None = None  # (B, cached length)
        self._next_positions: torch.Tensor | None = None  # (B,)
        self.last_hidden: torch.Tensor | None = None
        """Final-layer hidden state at each row's last fed position, ``(B, hidden)``."""

    @property
    def batch_size(self) -> int:
        return 0 if self._attention_mask is None else self._attention_mask.shape[0]

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Start a batch from ``(B, L)`` tokens; returns logits after each row's last real token.

        Identical rows of ``(input_ids, attention_mask)`` are run once; the cache is
        expanded to all ``B`` rows afterwards.
        """
        attention_mask = attention_mask.long()
        rows = torch.cat([input_ids, attention_mask], dim=1)  # (B, 2L)
        distinct, row_of_distinct = torch.unique(rows, dim=0, return_inverse=True)  # (U, 2L), (B,)
        deduplicate = distinct.shape[0] < rows.shape[0]
        if deduplicate:
            input_ids, unique_mask = distinct.split(input_ids.shape[1], dim=1)
        else:
            unique_mask = attention_mask
        logits, cache, last_hidden = self._forward_prompts(input_ids, unique_mask)
        if deduplicate:
            cache.reorder_cache(row_of_distinct)  # each layer's keys/values: (U, ...) -> (B, ...)
            logits = logits[row_of_distinct]
            last_hidden = None if last_hidden is None else last_hidden[row_of_distinct]
        self._cache = cache
        self._attention_mask = attention_mask
        self._next_positions = attention_mask.sum(-1)  # (B,) real tokens so far
        self.last_hidden = last_hidden
        return logits

    def _forward_prompts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, DynamicCache, torch.Tensor | None]:
        """One cached forward: (logits after each row's last real token ``(B, V)``, the
        cache, the final hidden state there ``(B, H)`` when asked for)."""
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
        columns = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
        last = (attention_mask * columns).argmax(-1)  # (B,) each row's last real token
        # logits only where they are read (usually one column): a (B, L, V) tensor
        # would cost ~60 MB for SmolLM2 at batch 8 and a full LM-head matmul per position
        kept_columns, row_column = torch.unique(last, return_inverse=True)
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=DynamicCache(),
            use_cache=True,
            output_hidden_states=self.output_hidden_states,
            logits_to_keep=kept_columns,
        )
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last_hidden = output.hidden_states[-1][rows, last] if self.output_hidden_states else None
        return output.logits[rows, row_column], output.cache, last_hidden

    @torch.no_grad()
    def advance(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per row; rows where ``active`` is False are fed as padding.

        Returns next-token logits ``(B, V)`` (meaningless for inactive rows).
        """
        if self._cache is None:
            raise RuntimeError("IncrementalDecoder.advance called before prefill")
        batch_size = tokens.shape[0]
        if active is None:
            active = torch.ones(batch_size, dtype=torch.bool, device=tokens.device)
        new_mask = active.long()[:, None]  # (B, 1)
        self._attention_mask = torch.cat([self._attention_mask, new_mask], dim=1)
        output = self.model(
            input_ids=tokens[:, None],
            attention_mask=self._attention_mask,
            position_ids=self._next_positions[:, None],
            cache=self._cache,
            use_cache=True,
            output_hidden_states=self.output_hidden_states,
        )
        self._next_positions = self._next_positions + new_mask[:, 0]
        if self.output_hidden_states:
            self.last_hidden = output.hidden_states[-1][:, -1]
        return output.logits[:, -1]
