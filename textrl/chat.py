"""How a prompt becomes model input: a chat template's user turn, or prompt + separator."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def format_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool = True
) -> str:
    """The text the model continues.

    Chat models (SmolLM2-Instruct) get their template's user turn and the assistant
    header; tokenizers without a template (the tiny character tokenizer) get the
    prompt followed by the separator token, Llama 2's SFT format.
    """
    if use_chat_template and tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    return prompt + (tokenizer.sep_token or "")
