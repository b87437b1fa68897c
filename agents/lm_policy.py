"""A causal language model as a Tianshou policy: KV-cached acting, one-pass segment scoring.

Acting: the policy keeps the batch's KV cache itself (never in Tianshou's
recurrent ``state`` or a buffer). Each call it compares the observation window
with the one it saw last: if every row grew by at most one token, it feeds
just those tokens (one forward for the batch); otherwise (a new batch, a reset
row) it prefills the window again. So it works under any driver: the text
collector, Tianshou's stock collector or a plain ``reset``/``step`` loop.

Learning: ``evaluate_segments`` runs one forward over prompt + response per row
(left padding, position ids from the mask) and reads, for every response token,
its log-prob and entropy under the same temperature used for sampling, and the
value of the state before it; the value one position later is ``V(s'_t)``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from gymnasium import spaces
from tianshou.algorithm.algorithm_base import Policy
from tianshou.data import Batch
from torch import nn
from transformers import PreTrainedModel

from agents.episode_buffer import TokenSegments
from agents.segment_policy import SegmentEvaluation
from textrl.decoding import IncrementalDecoder
from textrl.sampling import SamplingConfig, sample_next_tokens, scaled_log_probs


class LMActorCriticPolicy(Policy):
    """Actor = a causal LM; critic = a scalar head on its last hidden state, or on a separate LM."""

    def __init__(
        self,
        *,
        model: PreTrainedModel,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        max_prompt_tokens: int,
        sampling: SamplingConfig | None = None,
        critic_model: PreTrainedModel | None = None,
        deterministic_eval: bool = True,
        eos_token_id: int | None = None,
        reference_model: PreTrainedModel | None = None,
    ) -> None:
        """
        :param model: the policy LM (any HF causal LM).
        :param observation_space: the text env's ``Dict`` space (window of token slots).
        :param action_space: ``Discrete(vocab_size)``.
        :param max_prompt_tokens: ``P``, where the response starts in the observation window.
        :param sampling: temperature / top-k / top-p of acting (temperature also in scoring).
        :param critic_model: a separate value backbone (e.g. initialised from a reward model);
            None shares the policy's backbone.
        :param deterministic_eval: greedy decoding outside training steps.
        :param eos_token_id: the env's EOS (its tokenizer's); by default the model config's.
        :param reference_model: the frozen reference of RLHF's KL term, scored in one no-grad
            pass over finished episodes (``reference_log_probs``). Left out with a ``peft``
            LoRA model, the reference is the same model with its adapter disabled.
        """
        super().__init__(
            action_space=action_space,
            observation_space=observation_space,
            action_scaling=False,
            action_bound_method=None,
        )
        self.model = model
        self.critic_model = critic_model
        backbone = critic_model or model
        # on the backbone's device: rejection sampling never moves the policy as a whole
        self.value_head = nn.Linear(
            backbone.config.hidden_size, 1, device=next(backbone.parameters()).device
        )
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.max_prompt_tokens = max_prompt_tokens
        self.eos_token_id = eos_token_id if eos_token_id is not None else model.config.eos_token_id
        if not isinstance(self.eos_token_id, int):
            raise ValueError(
                f"the model config's eos_token_id is {self.eos_token_id!r}; pass eos_token_id= "
                "(the environment tokenizer's eos_token_id)"
            )
        self.sampling = sampling or SamplingConfig()
        self.deterministic_eval = deterministic_eval
        # a plain list keeps the reference out of parameters(), the optimizer and state_dict
        self._reference_models = [] if reference_model is None else [reference_model.eval()]
        self.scores_steps_independently = False
        self._decoder = IncrementalDecoder(model, output_hidden_states=critic_model is None)
        self._seen_ids: np.ndarray | None = None
        self._seen_mask: np.ndarray | None = None

    @staticmethod
    def _compile() -> None:
        """Skip Tianshou's numba warm-up: this policy's math is torch."""

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    def _continues_last_batch(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        """Rows that gained a token since the last call, or None if this is not a continuation."""
        if self._seen_ids is None or self._seen_ids.shape != ids.shape:
            return None
        grown = mask.sum(1) - self._seen_mask.sum(1)
        if not ((grown == 0) | (grown == 1)).all() or not grown.any():
            return None
        if not np.array_equal(ids * self._seen_mask, self._seen_ids * self._seen_mask):
            return None
        return grown == 1

    def forward(self, batch: Batch, state: object | None = None) -> Batch:
        """Next token for each row of ``batch.obs`` (``input_ids``, ``attention_mask``)."""
        ids = np.asarray(batch.obs.input_ids)
        mask = np.asarray(batch.obs.attention_mask)
        grew = self._continues_last_batch(ids, mask)
        if grew is None:
            last_column = int(np.flatnonzero(mask.any(0)).max()) + 1
            logits = self._decoder.prefill(
                torch.as_tensor(ids[:, :last_column], device=self.device),
                torch.as_tensor(mask[:, :last_column], device=self.device),
            )
        else:
            lengths = mask[:, self.max_prompt_tokens :].sum(1)
            newest = ids[np.arange(len(ids)), self.max_prompt_tokens + np.maximum(lengths - 1, 0)]
            logits = self._decoder.advance(
                torch.as_tensor(newest, device=self.device),
                torch.as_tensor(grew, device=self.device),
            )
        self._seen_ids, self._seen_mask = ids, mask
        greedy = self.deterministic_eval and not self.is_within_training_step
        with torch.no_grad():
            tokens, log_probs = sample_next_tokens(
                logits, self.sampling, greedy=greedy, banned=self._banned_tokens(mask, logits)
            )
            values = (
                self.value_head(self._decoder.last_hidden.to(self.value_head.weight.dtype)).squeeze(
                    -1
                )
                if self.critic_model is None
                else torch.full_like(log_probs, float("nan"))
            )
        return Batch(
            act=tokens.cpu().numpy(),
            policy=Batch(log_prob=log_probs.cpu().numpy(), value=values.float().cpu().numpy()),
        )

    def idle_step(self) -> None:
        """One forward that feeds every row padding and changes no row's state: what a rank
        whose episodes have all ended runs while other ranks still decode with an
        FSDP-sharded model, each of whose forwards is a collective (``TextCollector``'s
        ``synced``)."""
        inactive = torch.zeros(self._decoder.batch_size, dtype=torch.bool, device=self.device)
        self._decoder.advance(inactive.long(), inactive)

    def _banned_tokens(self, mask: np.ndarray, logits: torch.Tensor) -> torch.Tensor | None:
        """EOS for rows shorter than ``min_new_tokens``, else nothing."""
        if self.sampling.min_new_tokens == 0:
            return None
        too_short = mask[:, self.max_prompt_tokens :].sum(1) < self.sampling.min_new_tokens
        banned = torch.zeros_like(logits, dtype=torch.bool)
        banned[torch.as_tensor(too_short, device=self.device), self.eos_token_id] = True
        return banned

    def _hidden_and_logits(
        self,
        model: PreTrainedModel,
        ids: torch.Tensor,
        mask: torch.Tensor,
        logits_to_keep: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final hidden states ``(B, L, H)`` and the logits of the last ``logits_to_keep``
        positions (None: no logits wanted; the LM head is the costliest matmul of a small
        model, so it runs only where log-probs are read)."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=logits_to_keep or 1,
        )
        return output.hidden_states[-1], (output.logits if logits_to_keep else None)

    @staticmethod
    def _window(segments: TokenSegments) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Prompt + response ids and mask without the columns that are padding in every row
        (prompts are left-padded to the env's ``P`` slots), and the prompt width kept."""
        filled = torch.nonzero(segments.prompt_mask.any(0))
        first = int(filled[0]) if len(filled) else segments.prompt_mask.shape[1] - 1
        ids = torch.cat([segments.prompt_ids[:, first:], segments.response_ids], dim=1)
        mask = torch.cat([segments.prompt_mask[:, first:], segments.mask.long()], dim=1)
        return ids, mask, segments.prompt_ids.shape[1] - first

    def _response_logits(
        self, segments: TokenSegments, model: PreTrainedModel | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """One forward of ``model`` (the policy's by default) over prompt + response: (logits
        predicting each response token ``(B, T, V)``, final hidden states ``(B, P'+T, H)``,
        ids, mask, the kept prompt width ``P'``)."""
        ids, mask, prompt_length = self._window(segments)
        response_length = segments.response_ids.shape[1]
        # position P'-1+t holds the state before response token t: the last T+1 positions
        # but the final one
        hidden, logits = self._hidden_and_logits(
            model or self.model, ids, mask, logits_to_keep=response_length + 1
        )
        assert logits is not None
        return logits[:, :-1], hidden, ids, mask, prompt_length

    def log_likelihoods(self, segments: TokenSegments) -> torch.Tensor:
        """``log p(a_t | s_t)`` of each response token at temperature 1, with gradients,
        ``(B, T)``: the prompt-masked likelihood that fine-tuning (rejection sampling)
        maximises."""
        predicting, *_ = self._response_logits(segments)
        log_probs_all = torch.log_softmax(predicting.float(), dim=-1)
        return log_probs_all.gather(-1, segments.response_ids[..., None]).squeeze(-1)

    def _reference_context(self) -> tuple[PreTrainedModel, contextlib.AbstractContextManager]:
        if self._reference_models:
            return self._reference_models[0], contextlib.nullcontext()
        if hasattr(self.model, "disable_adapter"):  # a peft model: the base weights
            return self.model, self.model.disable_adapter()
        raise ValueError(
            "this policy has no reference: pass reference_model= (or use a LoRA model, whose "
            "reference is the base weights)"
        )

    @torch.no_grad()
    def reference_log_probs(self, segments: TokenSegments) -> torch.Tensor:
        """``log pi_ref`` of each response token at the sampling temperature, ``(B, T)``."""
        reference, context = self._reference_context()
        with context:
            predicting, *_ = self._response_logits(segments, reference)
        log_probs_all = scaled_log_probs(predicting, self.sampling.temperature)
        return log_probs_all.gather(-1, segments.response_ids[..., None]).squeeze(-1)

    def evaluate_segments(self, segments: TokenSegments) -> SegmentEvaluation:
        response_length = segments.response_ids.shape[1]
        predicting, hidden, ids, mask, prompt_length = self._response_logits(segments)
        log_probs_all = scaled_log_probs(predicting, self.sampling.temperature)
        log_probs = log_probs_all.gather(-1, segments.response_ids[..., None]).squeeze(-1)
        entropy = -(log_probs_all.exp() * log_probs_all).sum(-1)
        if self.critic_model is not None:
            hidden, _ = self._hidden_and_logits(self.critic_model, ids, mask, logits_to_keep=None)
        state_hidden = hidden[:, prompt_length - 1 : prompt_length + response_length]  # (B,T+1,H)
        all_values = self.value_head(state_hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return SegmentEvaluation(
            log_probs=log_probs,
            entropy=entropy,
            values=all_values[:, :-1],
            next_values=all_values[:, 1:],
        )

    def bootstrap_values(self, segments: TokenSegments) -> torch.Tensor:
        evaluation = self.evaluate_segments(segments)
        assert evaluation.next_values is not None
        return evaluation.next_values
