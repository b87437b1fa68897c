"""KV-cached incremental decoding over a batch of padded sequences.

One object serves both the acting policy (next-token logits to sample from) and
the environment's frozen reference model (the log-prob of each chosen token),
so both run one forward per generated token over the whole batch, never a
forward over the growing prefix. Sequences are laid out in a window with
padding anywhere (left padding of prompts, holes after a finished response):
the attention mask hides padding and position ids count only real tokens, so
the logits equal those of an unpadded forward pass.
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
        """Start a batch from ``(B, L)`` tokens; returns logits after each row's last real token."""
        attention_mask = attention_mask.long()
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
        self._cache = output.cache
        self._attention_mask = attention_mask
        self._next_positions = attention_mask.sum(-1)  # (B,) real tokens so far
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if self.output_hidden_states:
            self.last_hidden = output.hidden_states[-1][rows, last]
        return output.logits[rows, row_column]  # (B, V)

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
