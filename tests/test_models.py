"""Model loading: safe by default, clear errors for a missing or broken model folder."""

import shutil

import pytest

from edge_tailor.config import ModelSpec
from edge_tailor.errors import InputError
from edge_tailor.models import load_model, pick_dtype, pick_device, resolve_model_path


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(ModelSpec(path=str(tmp_path / "nope")), "cpu")


def test_folder_without_config(tmp_path):
    with pytest.raises(InputError, match=r"config\.json: missing"):
        load_model(ModelSpec(path=str(tmp_path)), "cpu")


def test_broken_config_names_the_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n oops}')
    with pytest.raises(InputError, match=r"config\.json: line 2"):
        load_model(ModelSpec(path=str(tmp_path)), "cpu")


def test_pickled_weights_refused_unless_allowed(tmp_path):
    src = resolve_model_path("embedded:student")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(f"{src}/{name}", tmp_path / name)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(InputError, match="only pickled weights"):
        load_model(ModelSpec(path=str(tmp_path)), "cpu")


def test_embedded_model_and_safe_defaults():
    spec = ModelSpec(path="embedded:student")
    assert spec.trust_remote_code is False and spec.allow_pickle is False
    loaded = load_model(spec, "cpu")
    assert loaded.device.type == "cpu" and next(loaded.model.parameters()).dtype.is_floating_point
    with pytest.raises(InputError, match="unknown embedded model"):
        resolve_model_path("embedded:giant")


def test_device_and_dtype_choice():
    import torch

    assert pick_device("cpu").type == "cpu"
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            pick_device("cuda")


def test_parameter_count_from_the_headers_counts_a_tied_head_once(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edge_tailor.models import count_parameters

    torch.manual_seed(0)
    for tied in (True, False):
        config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
        model = LlamaForCausalLM(config)
        model.save_pretrained(tmp_path / str(tied))
        assert count_parameters(tmp_path / str(tied)) == model.num_parameters()
    assert count_parameters(tmp_path / "False") - count_parameters(tmp_path / "True") == 96 * 32
    with pytest.raises(Exception, match="safetensors"):
        count_parameters(tmp_path)
