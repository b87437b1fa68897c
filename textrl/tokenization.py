"""A character-level tokenizer built locally, for tiny models and toy tasks.

Nothing is downloaded: the vocabulary is the special tokens plus an alphabet,
wrapped as a Hugging Face ``PreTrainedTokenizerFast`` so that tiny models and
real pretrained ones go through the same code. PAD, EOS and the prompt/answer
separator are distinct tokens (RL needs EOS != PAD: a generated EOS ends an
episode, padding never does).
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
BOS_TOKEN = "<bos>"
SEPARATOR_TOKEN = "<sep>"
UNKNOWN_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, SEPARATOR_TOKEN, UNKNOWN_TOKEN)
DEFAULT_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet`` plus the special tokens (ids 0..4)."""
    characters = list(dict.fromkeys(alphabet))
    vocabulary = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *characters])}
    backend = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token=UNKNOWN_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        unk_token=UNKNOWN_TOKEN,
        sep_token=SEPARATOR_TOKEN,
        padding_side="left",
    )
    return tokenizer
