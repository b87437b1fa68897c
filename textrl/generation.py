"""Batched, KV-cached sampling of whole responses (for data collection and evaluation).

The same decoding path as the RL policy (``IncrementalDecoder`` +
``sample_next_tokens``), minus the environment: used where only the text is
needed, such as sampling preference pairs or scoring a checkpoint with the gold
judges. Prompts are sorted by length so each batch carries little padding.
With ``synced`` (an FSDP-sharded model) every rank steps until all ranks' rows have
ended, as Hugging Face's ``generate(synced_gpus=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textrl import distributed
from textrl.chat import format_prompt
from textrl.decoding import IncrementalDecoder
from textrl.sampling import SamplingConfig, sample_next_tokens

ACCELERATOR_ROWS = 1024
"""Rows decoded at once on an accelerator (SmolLM2-135M: about 6 GB of fp32 KV cache at 32
new tokens after a 100-token prompt)."""


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    max_new_tokens: int,
    batch_size: int = 64,
    use_chat_template: bool = True,
    progress: bool = False,
    synced: bool = False,
) -> list[str]:
    """One sampled response per prompt (special tokens stripped), in the prompts' order.

    ``batch_size`` rows are decoded at once on a CPU, at least ``ACCELERATOR_ROWS`` on an
    accelerator: there a small model's decoding step is bound by kernel launches rather than
    by rows, so fewer, wider steps finish sooner, while on a CPU a step's cost grows with its
    rows (and the caller's batch keeps a CPU run's sampled stream what it was).

    ``synced``: ``model`` is sharded by FSDP, so each forward is a collective; every rank
    passes as many prompts, and a rank whose rows have all ended feeds padding (its
    responses unchanged) until every rank's have.
    """
    device = next(model.parameters()).device
    if device.type != "cpu":
        batch_size = max(batch_size, ACCELERATOR_ROWS)
    texts = [format_prompt(tokenizer, prompt, use_chat_template) for prompt in prompts]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    responses: list[str] = [""] * len(prompts)
    decoder = IncrementalDecoder(model)
    eos = tokenizer.eos_token_id
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="sampling", disable=not progress, leave=False):
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, index in enumerate(batch):
            ids[row, width - len(encoded[index]) :] = torch.tensor(encoded[index])
            mask[row, width - len(encoded[index]) :] = 1
        logits = decoder.prefill(ids.to(device), mask.to(device))
        running = torch.ones(len(batch), dtype=torch.bool, device=device)
        generated = []
        for _ in range(max_new_tokens):
            tokens, _ = sample_next_tokens(logits, sampling)
            tokens = torch.where(running, tokens, torch.full_like(tokens, tokenizer.pad_token_id))
            generated.append(tokens)
            running = running & (tokens != eos)
            if not (distributed.any_rank(running.any()) if synced else running.any()):
                break
            logits = decoder.advance(tokens, running)
        columns = torch.stack(generated, dim=1).cpu()  # (batch, steps)
        for row, index in enumerate(batch):
            row_tokens = columns[row].tolist()
            if eos in row_tokens:
                row_tokens = row_tokens[: row_tokens.index(eos)]
            responses[index] = tokenizer.decode(row_tokens, skip_special_tokens=True)
    return responses
