"""One prompt rule (edge_tailor.prompt_format): BOS once, as the tokenizer adds it; the chat template around one
user turn where the model has one; the same rendering in the toolkit and in a bundle's edge runtime."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from edge_tailor import prompt_format
from edge_tailor.errors import InputError
from edge_tailor.prompt_format import PromptFormat

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(adds_bos: bool, template: str | None = None) -> PreTrainedTokenizerFast:
    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "<|im_start|>": 3, "<|im_end|>": 4}
    for word in "a b Q : 1 + A user assistant".split():
        vocab.setdefault(word, len(vocab))
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = template
    return tok


def test_plain_adds_bos_text_only_where_the_tokenizer_itself_adds_one():
    with_bos, without = _tokenizer(True), _tokenizer(False)
    assert prompt_format.resolve(with_bos, "auto") == PromptFormat("plain", "<s>")
    assert prompt_format.resolve(without, "auto") == PromptFormat("plain", "")
    text = prompt_format.resolve(with_bos, "plain").render("Q : 1 + 1 A :")
    ids = with_bos(text, add_special_tokens=False)["input_ids"]
    assert ids == with_bos("Q : 1 + 1 A :")["input_ids"] and ids.count(0) == 1  # BOS once, as the tokenizer adds it
    # where the tokenization that follows adds BOS itself (trl's trainers), the rendering leaves it out
    assert with_bos(prompt_format.resolve(with_bos, "plain").render("a", with_bos=False))["input_ids"] == [0, 5]


def test_chat_renders_one_user_turn_with_the_assistant_turn_opened():
    tok = _tokenizer(False, CHAT)
    fmt = prompt_format.resolve(tok, "auto")
    assert fmt.mode == "chat" and fmt.prefix == "<|im_start|>user\n" and fmt.suffix == "<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.render("Q: 1+1") == tok.apply_chat_template([{"role": "user", "content": "Q: 1+1"}], tokenize=False,
                                                            add_generation_prompt=True)
    assert prompt_format.resolve(tok, "plain") == PromptFormat("plain", "")
    with pytest.raises(InputError, match="prompt_format: 'chat' asks for a chat template"):
        prompt_format.resolve(_tokenizer(False), "chat")


def test_answer_start_opens_the_reply_in_chat_and_runs_on_in_plain():
    from edge_tailor.prompt_format import ANSWER_START

    tok = _tokenizer(False, CHAT)
    text = f"Write questions like these.{ANSWER_START}<Question_2><input>"
    chat = prompt_format.resolve(tok, "chat").render(text)
    assert chat == "<|im_start|>user\nWrite questions like these.<|im_end|>\n<|im_start|>assistant\n<Question_2><input>"
    assert prompt_format.resolve(tok, "plain").render(text) == "Write questions like these.<Question_2><input>"


def test_a_template_that_writes_bos_itself_gets_no_second_one():
    tok = _tokenizer(True, "<s>" + CHAT)
    fmt = prompt_format.resolve(tok, "chat")
    assert fmt.bos == "" and fmt.prefix.startswith("<s>")


def test_attached_format_is_what_render_uses_and_round_trips_through_json():
    tok = _tokenizer(False, CHAT)
    assert prompt_format.render(tok, "a") == "a"  # nothing attached: plain
    fmt = prompt_format.resolve(tok, "chat")
    prompt_format.attach(tok, fmt)
    assert prompt_format.render_all(tok, ["a", "b"]) == [fmt.render("a"), fmt.render("b")]
    assert PromptFormat.from_json(fmt.to_json()) == fmt
    with pytest.raises(InputError, match="manifest.json: prompt_format"):
        PromptFormat.from_json({"mode": "jinja"})


# --- the edge runtime applies the recorded format -------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    from edge_tailor.export.onnx_export import export_onnx
    from edge_tailor.models import resolve_model_path

    return export_onnx(resolve_model_path("embedded:student"), tmp_path_factory.mktemp("pf") / "fp32")


def test_edge_runtime_renders_prompts_as_recorded(onnx_dir, tmp_path):
    import json
    import shutil

    from edge_tailor.export.runtime import PROMPT_FORMAT, BundleError, EdgeModel

    folder = tmp_path / "m"
    shutil.copytree(onnx_dir, folder)
    plain = EdgeModel.load(folder)
    assert plain.prompt_format is None and plain.encode_prompt("Q: 3+4=?\nA:") == plain.encode("Q: 3+4=?\nA:")
    fmt = PromptFormat("chat", "<s>", "User: ", "\nAssistant:")
    (folder / PROMPT_FORMAT).write_text(json.dumps(fmt.to_json()))
    model = EdgeModel.load(folder)
    assert model.render("Q: 3+4=?") == fmt.render("Q: 3+4=?")
    assert model.render("Q: 3+4=?\x1eA:") == fmt.render("Q: 3+4=?\x1eA:") == "<s>User: Q: 3+4=?\nAssistant:A:"
    ids = model.encode_prompt("Q: 3+4=?")
    assert ids == model.tokenizer.encode("<s>User: Q: 3+4=?\nAssistant:", add_special_tokens=False).ids
    assert ids.count(model.tokenizer.token_to_id("<s>")) == 1
    model.eos_ids = plain.eos_ids = []
    assert model.generate("Q: 3+4=?", 8).tokens == plain.generate(ids, 8).tokens  # a str prompt is rendered
    (folder / PROMPT_FORMAT).write_text(json.dumps({"mode": "jinja"}))
    with pytest.raises(BundleError, match="prompt_format.json: mode"):
        EdgeModel.load(folder)


def test_export_side_files_carry_the_format(onnx_dir, tmp_path):
    from edge_tailor.export.onnx_export import copy_side_files
    from edge_tailor.export.runtime import PROMPT_FORMAT

    src = tmp_path / "src"
    src.mkdir()
    (src / PROMPT_FORMAT).write_text("{}")
    dst = tmp_path / "dst"
    dst.mkdir()
    assert PROMPT_FORMAT in copy_side_files(src, dst)  # so the quantized graphs and the bundle hold it too


def test_toolkit_generation_tokenizes_the_rendered_prompt_without_adding_specials():
    import types

    import torch

    from edge_tailor.generation import generate

    tok = _tokenizer(True, CHAT)
    tok.padding_side = "left"
    prompt_format.attach(tok, prompt_format.resolve(tok, "chat"))
    seen = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, **kw):
            seen.append(input_ids[0].tolist())
            return types.SimpleNamespace(logits=torch.zeros((1, input_ids.shape[1], len(tok))))

    generate(Model(), tok, ["a b"], max_new_tokens=1)
    want = tok(prompt_format.render(tok, "a b"), add_special_tokens=False)["input_ids"]
    assert seen == [want] and want[0] == 0 and want.count(0) == 1  # BOS once, then the user turn
    assert tok.convert_ids_to_tokens(want[1:3]) == ["<|im_start|>", "user"]
