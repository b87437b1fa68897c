"""SFT data: conversations -> tokens with prompt-masked labels -> packed sequences.

Input JSONL, one example per line: ``{"prompt": ..., "answer": ...}`` or a
multi-turn ``{"messages": [{"role": "user"|"assistant", "content": ...}, ...]}``.
Each assistant turn is trained on (its tokens and the end-of-turn / EOS token);
every other token gets the label ``IGNORE_INDEX``. With a chat template the
turns are rendered by it; without one (the tiny tokenizer) a turn is
``prompt <sep> answer <eos>``, Llama 2's format with a special separator.
A ``{"text": ...}`` record is plain language modelling (TRL's text field):
every token and the EOS after it are trained on, which is how the same trainer
pretrains a base model on a corpus (``textrl.world.corpus``).

Packing (Llama 2: "concatenate all the prompts and answers ... to ensure the
model sequence length is properly filled") puts several examples in one
sequence; position ids restart at each example and ``packed_attention_mask``
forbids attention across examples, so packing changes no example's loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from textrl.jsonl import DataFormatError, iter_jsonl_lines
from textrl.lm_losses import IGNORE_INDEX


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    """``IGNORE_INDEX`` on prompt tokens, the token id on trained (answer) tokens."""
    source: str
    """``file:line`` the example came from, for error messages."""


@dataclass(frozen=True)
class PackedSequences:
    """``(N, L)`` tensors of packed examples."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    """1, 2, ... per example within a sequence; 0 on padding."""


def read_examples(path: str | Path, tokenizer: PreTrainedTokenizerBase) -> list[TokenizedExample]:
    """The tokenized examples of a JSONL file of text, prompt/answer or messages records."""
    return [
        tokenize_text(tokenizer, record, where)
        if isinstance(record, str)
        else tokenize_conversation(tokenizer, record, where)
        for where, record in _read_records(path)
    ]


def _read_records(path: str | Path) -> list[tuple[str, str | list[dict[str, str]]]]:
    """``(file:line, text or messages)`` per example."""
    records: list[tuple[str, str | list[dict[str, str]]]] = []
    for where, record in iter_jsonl_lines(path, {}):
        if "text" in record:
            if not isinstance(record["text"], str) or not record["text"]:
                raise DataFormatError(f'{where}: field "text" should be a non-empty str')
            records.append((where, record["text"]))
        else:
            records.append((where, _messages(record, where)))
    return records


def _messages(record: dict, where: str) -> list[dict[str, str]]:
    """The turns of a prompt/answer or messages record, checked."""
    if "messages" in record:
        messages = record["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            raise DataFormatError(
                f'{where}: field "messages" should be a non-empty list of '
                '{"role": str, "content": str}'
            )
        if not any(m["role"] == "assistant" for m in messages):
            raise DataFormatError(f'{where}: field "messages" has no assistant turn to train on')
        return messages
    for field in ("prompt", "answer"):
        if not isinstance(record.get(field), str):
            problem = "is missing" if field not in record else "should be str"
            raise DataFormatError(f'{where}: field "{field}" {problem}')
    return [
        {"role": "user", "content": record["prompt"]},
        {"role": "assistant", "content": record["answer"]},
    ]


def _turn_texts(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], index: int
) -> tuple[str, str]:
    """(text before assistant turn ``index``, text of that turn) as the model sees them."""
    if tokenizer.chat_template:
        before = tokenizer.apply_chat_template(
            messages[:index], add_generation_prompt=True, tokenize=False
        )
        through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        return before, through[len(before) :]
    if tokenizer.sep_token is None:
        raise ValueError(
            "the tokenizer has neither a chat template nor a separator token; "
            "SFT needs one of them to mark where the answer starts"
        )
    before = "".join(
        m["content"] + (tokenizer.sep_token if m["role"] == "user" else tokenizer.eos_token)
        for m in messages[:index]
    )
    return before, messages[index]["content"] + tokenizer.eos_token


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], source: str
) -> TokenizedExample:
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, turn = _turn_texts(tokenizer, messages, index)
        prompt_ids = tokenizer(before[len(rendered) :], add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(turn, add_special_tokens=False)["input_ids"]
        input_ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        rendered = before + turn
    return TokenizedExample(input_ids, labels, source)


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str, source: str) -> TokenizedExample:
    """Plain text and the EOS after it, every token trained on."""
    input_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return TokenizedExample(input_ids, list(input_ids), source)


def pack(
    examples: Sequence[TokenizedExample], sequence_length: int, pad_token_id: int
) -> PackedSequences:
    """Greedy packing in order: an example goes into the current sequence if it fits."""
    too_long = [e for e in examples if len(e.input_ids) > sequence_length]
    if too_long:
        raise ValueError(
            f"{too_long[0].source}: the example has {len(too_long[0].input_ids)} tokens, more than "
            f"the sequence length {sequence_length}; raise --sequence-length or shorten it"
        )
    sequences: list[list[TokenizedExample]] = [[]]
    used = 0
    for example in examples:
        if used + len(example.input_ids) > sequence_length:
            sequences.append([])
            used = 0
        sequences[-1].append(example)
        used += len(example.input_ids)
    shape = (len(sequences), sequence_length)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    for row, members in enumerate(sequences):
        start = 0
        for segment, example in enumerate(members, start=1):
            stop = start + len(example.input_ids)
            input_ids[row, start:stop] = torch.tensor(example.input_ids)
            labels[row, start:stop] = torch.tensor(example.labels)
            position_ids[row, start:stop] = torch.arange(stop - start)
            segment_ids[row, start:stop] = segment
            start = stop
    return PackedSequences(input_ids, labels, position_ids, segment_ids)


def packed_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """``(N, 1, L, L)`` bool: token i may attend to j iff j <= i in the same example."""
    length = segment_ids.shape[1]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=segment_ids.device))
    same_example = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids > 0)[:, None, :]
    allowed = causal & same_example & real
    # a padding query attends to itself only, so no row of the mask is empty
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    return allowed[:, None]
