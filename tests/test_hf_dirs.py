"""Models to and from the ecosystem: transformers directories as model specs, `mechtox export`,
and training that changes only the parameters the architecture has (so the export is the model)."""

from __future__ import annotations

import json

import pytest
import torch

from mechtox import _io
from mechtox import models as M
from mechtox.cli import main
from mechtox.errors import IncompatibleError, ModelNotFoundError
from tests.conftest import (
    GEMMAS,
    LLAMA,
    foreign_hf,
    random_hf,
    randomize_norms_and_biases,
    save_hf_dir,
    tiny_gemma,
    zero_foreign,
)


def _gpt2_like():
    model = randomize_norms_and_biases(M.tiny_model(), seed=3)
    model.cfg.original_architecture = "GPT2LMHeadModel"  # the tiny default is GPT-2-shaped (LN, gelu_new, positions)
    return model


def _llama_like():
    return randomize_norms_and_biases(M.tiny_model(**LLAMA), seed=3)


def _same_logits(a, b, tol=1e-4):
    toks = torch.randint(3, a.cfg.d_vocab, (2, 9))
    with torch.no_grad():
        assert (a(toks) - b(toks)).abs().max() < tol


@pytest.mark.parametrize("make", [_gpt2_like, _llama_like], ids=["gpt2", "llama-gqa"])
def test_hf_directory_round_trip(make, tmp_path):
    model = zero_foreign(make())
    out = M.export_hf(model, tmp_path / "hf")
    assert M.is_hf_dir(out) and (out / "generation_config.json").is_file()
    back = M.load_hf_dir(out)
    assert back.cfg.original_architecture == model.cfg.original_architecture
    _same_logits(model, back)
    text = "you are a stupid idiot"
    assert back.to_str_tokens(text, prepend_bos=False) == model.to_str_tokens(text, prepend_bos=False)


def test_hf_directory_with_only_a_torch_file_and_as_a_cli_model(tmp_path, capsys):
    import transformers

    model = zero_foreign(_llama_like())
    hf = transformers.LlamaForCausalLM.from_pretrained(M.export_hf(model, tmp_path / "st"))
    bin_dir = tmp_path / "bin"  # what older transformers and many released models have: a pickled torch file
    hf.config.save_pretrained(bin_dir)
    torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
    model.tokenizer.save_pretrained(bin_dir)
    assert [p.name for p in bin_dir.glob("*.bin")] == ["pytorch_model.bin"] and not list(bin_dir.glob("*.safetensors"))
    _same_logits(model, M.load_hf_dir(bin_dir))
    ws = tmp_path / "ws"
    assert main(["models", "-w", str(ws), "--set-base", str(bin_dir)]) == 0
    assert main(["probe", "-w", str(ws), "-q", "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "40",
                 "--layers", "last"]) == 0
    assert "saved probe 'probe'" in capsys.readouterr().out


_FOREIGN = ["gpt_neox", "opt", "mistral", "qwen2", "qwen3", "olmo2", "olmo3", "gemma", "gemma2", "gemma3_text"]


@pytest.mark.parametrize("model_type", _FOREIGN)
def test_directories_of_other_architectures_load_with_the_logits_of_transformers(model_type, tmp_path):
    hf = foreign_hf(model_type)
    d = tmp_path / f"my-llama-gemma-{model_type}"  # TransformerLens reads these words in a path as the architecture
    save_hf_dir(hf, d)
    model = M.load_hf_dir(d)
    assert model.cfg.original_architecture == M.TL_ARCHITECTURES[model_type] and model.cfg.model_name == d.name
    toks = torch.randint(3, hf.config.vocab_size, (2, 11))
    with torch.no_grad():
        assert (hf(toks).logits - model(toks)).abs().max() < 1e-4


def _llama3_dir(tmp_path, rope_type="llama3", **extra):
    """A tiny Llama-3-like directory: rotary frequencies scaled (NTK by parts), a head size other than
    d_model / n_heads, and a tokenizer that adds BOS (as Llama 2 / 3's do)."""
    import transformers as T
    from tokenizers.processors import TemplateProcessing

    tok = M.tiny_tokenizer()
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    rope = {"llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 16},
            "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
            "dynamic": {"rope_type": "dynamic", "factor": 2.0}}[rope_type]
    conf = T.LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, intermediate_size=96, max_position_embeddings=128,
                         rope_theta=500000.0, rope_scaling=rope, **extra)
    hf = random_hf(conf)
    return hf, save_hf_dir(hf, tmp_path / f"llama3-{rope_type}", tok)


def test_llama_3_directories_keep_their_rope_scaling_head_size_and_bos(tmp_path):
    """Llama 3's rope scaling was dropped (logits off by 7 on 40 tokens), a head_dim other than
    d_model / n_heads was a shape error, and a Llama directory never prepended BOS, though Llama 2 / 3
    need it. The hf backend and the export build the transformers model back from the config: it keeps
    the scaling too."""
    from mechtox.data import encode

    hf, d = _llama3_dir(tmp_path)
    model = M.load_hf_dir(d)
    toks = torch.randint(3, hf.config.vocab_size, (2, 40))
    with torch.no_grad():
        assert (hf(toks).logits - model(toks)).abs().max() < 1e-4
        assert (M.to_hf_model(model)(toks).logits - model(toks)).abs().max() < 1e-4
    assert model.cfg.default_prepend_bos is True
    ids = encode(model, ["you are"])[0]
    assert ids[0] == 1 and ids.count(1) == 1 and ids[1:] == model.tokenizer("you are", add_special_tokens=False)["input_ids"]
    assert M.load_checkpoint(M.save_checkpoint(model, tmp_path / "ck")).cfg.use_NTK_by_parts_rope


def test_settings_a_conversion_leaves_out_are_refused_and_the_load_checks_the_logits(tmp_path, monkeypatch):
    _, dynamic = _llama3_dir(tmp_path, "dynamic")
    with pytest.raises(IncompatibleError, match="scaled the 'dynamic' way"):
        M.load_hf_dir(dynamic)
    _, biased = _llama3_dir(tmp_path / "b", attention_bias=True)
    with pytest.raises(IncompatibleError, match="attention or MLP biases"):
        M.load_hf_dir(biased)
    _, d = _llama3_dir(tmp_path / "c")
    monkeypatch.setattr(M, "_rope", lambda conf: {})  # a conversion that misses the scaling, as before
    with pytest.raises(IncompatibleError, match="does not give transformers' logits"):
        M.load_hf_dir(d)


@pytest.mark.parametrize("model_type,rope", [
    ("llama", {"factor": 4.0}),  # the attention factor inferred: 0.1 ln 4 + 1
    # (an original context of 512 puts the correction range's ends between dimensions: 1.2 and 2.7)
    ("llama", {"factor": 4.0, "attention_factor": 0.8, "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False,
               "original_max_position_embeddings": 512}),
    ("llama", {"factor": 4.0, "mscale": 2.0, "mscale_all_dim": 1.0}),  # the attention factor in DeepSeek's form
    ("qwen2", {"factor": 4.0}), ("qwen3", {"factor": 4.0}), ("mistral", {"factor": 4.0}),
    ("olmo3", {"factor": 8.0}),  # OLMo 3 without an attention factor: TransformerLens took 1
])
def test_yarn_directories_load_and_export_with_the_logits_of_transformers(model_type, rope, tmp_path):
    """YaRN-scaled rotary (Qwen's long-context recipe) was refused for Llama, Mistral and Qwen, and
    OLMo 3 without an explicit attention factor failed the load's check: TransformerLens' rotary takes
    YaRN for any model, with what transformers infers where the config is silent. 40 tokens, past the
    original context of 16, in and out again."""
    import transformers as T

    yarn = {"rope_type": "yarn", "rope_theta": 50000.0, "original_max_position_embeddings": 16, **rope}
    sizes = dict(vocab_size=len(M.tiny_tokenizer()), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64, rms_norm_eps=1e-4)
    if model_type == "olmo3":
        conf = T.Olmo3Config(**sizes, pad_token_id=0, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                             rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                              "full_attention": yarn})
    else:
        conf = T.AutoConfig.for_model(model_type, **sizes, rope_parameters=yarn)
    hf = random_hf(conf)
    d = save_hf_dir(hf, tmp_path / f"yarn-{model_type}")
    model = M.load_hf_dir(d)
    assert model.cfg.use_yarn_rope
    toks = torch.randint(3, conf.vocab_size, (2, 40))
    back = T.AutoModelForCausalLM.from_pretrained(M.export_hf(model, tmp_path / "out")).eval()
    with torch.no_grad():
        want = hf(toks).logits
        assert (model(toks) - want).abs().max() < 1e-4
        assert (back(toks).logits - want).abs().max() < 1e-4


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_an_export_claims_the_released_context_not_the_one_mechtox_keeps(model_type, tmp_path):
    """mechtox keeps 2,048 positions of a rotary model (TransformerLens' masks grow with the square);
    the export wrote that as max_position_embeddings, so a server that reads it (vLLM's default
    max_model_len) would cap the exported model at 2,048. The released context goes back out, also
    through a checkpoint."""
    import json

    import transformers as T

    sizes = dict(vocab_size=len(M.tiny_tokenizer()), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=96, max_position_embeddings=4 * M.SMOLLM2_N_CTX)
    torch.manual_seed(0)
    d = tmp_path / model_type
    save_hf_dir(T.AutoModelForCausalLM.from_config(T.AutoConfig.for_model(model_type, **sizes)), d)
    model = M.load_hf_dir(d)
    assert model.cfg.n_ctx == M.SMOLLM2_N_CTX
    again = M.load_checkpoint(M.save_checkpoint(model, tmp_path / "ck"))
    for name, m in (("direct", model), ("checkpoint", again)):
        out = M.export_hf(m, tmp_path / name)
        assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 4 * M.SMOLLM2_N_CTX, name
    assert M.load_hf_dir(tmp_path / "direct").cfg.n_ctx == M.SMOLLM2_N_CTX
    gpt2 = M.tiny_model()  # learned positions: n_ctx is every position there is
    gpt2.cfg.original_architecture = "GPT2LMHeadModel"
    out = M.export_hf(zero_foreign(gpt2), tmp_path / "gpt2")
    assert json.loads((out / "config.json").read_text())["n_positions"] == gpt2.cfg.n_ctx


def test_a_gguf_conversion_cached_before_keeps_the_released_context_from_the_header(tmp_path, monkeypatch):
    """SmolLM2's GGUF says 8,192 positions; a conversion cached before mechtox kept that reads it from
    the file's header once (no de-quantising), and writes it into the cache."""
    import json

    monkeypatch.setenv("MECHTOX_CACHE", str(tmp_path / "cache"))
    gguf = M.smollm2_gguf_path()
    assert M._gguf_context(gguf) == 8192
    cached = M._cached_conversion(M.DEFAULT_MODEL, _io.file_sha256(gguf), M.SMOLLM2_N_CTX)
    old = M.tiny_model(**{**LLAMA, "n_ctx": 64})  # stands in for the conversion: loading it is what is tested
    M.save_checkpoint(old, cached)
    assert M.source_context(M.load_gguf()) == 8192
    assert json.loads((cached / "config.json").read_text())["source_max_position_embeddings"] == 8192
    assert M.source_context(M.load_gguf()) == 8192  # now from the cache's own record


def test_olmo_2_with_fewer_key_value_heads_is_refused_before_its_weights(tmp_path, monkeypatch):
    """TransformerLens' OLMo 2 conversion takes one key / value head per query head (1B-13B); OLMo 2
    32B has fewer: refused from the config, before transformers reads the weights."""
    import transformers as T

    d = tmp_path / "olmo2-gqa"
    T.Olmo2Config(vocab_size=len(M.tiny_tokenizer()), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=96).save_pretrained(d)  # a config, no weights at all
    with pytest.raises(IncompatibleError, match="2 key / value heads for 4 query heads"):
        M.load_hf_dir(d)


@pytest.mark.parametrize("model_type", _FOREIGN)
def test_directories_of_other_architectures_export_back_to_their_own_weights(model_type, tmp_path, capsys):
    """In and out again: `mechtox export` writes the directory transformers loads as the same class with
    the original model's logits (Mistral's sliding window, 8 here, shorter than the text; Qwen 2's q / k / v
    biases; Qwen 3's q / k norms; Pythia's q / k / v fused head by head, partial rotary and parallel
    attention and MLP; OPT's positions offset by 2; OLMo 3's post-norms, window and YaRN), and a state-dict
    file in transformers names loads over the base. Before session 30 the last three were refused."""
    import transformers as T

    hf = foreign_hf(model_type)
    d = tmp_path / "in"
    save_hf_dir(hf, d)
    ws = str(tmp_path / "ws")
    capsys.readouterr()
    assert main(["export", str(d), "-w", ws, "-q", "--hf", str(tmp_path / "out")]) == 0
    assert "logits differ" in capsys.readouterr().out
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(hf)
    # a tied release (OPT and Gemma here) is written tied, its matrix once; the others untied
    assert back.config.tie_word_embeddings == hf.config.tie_word_embeddings
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert len(list(f.keys())) == len({p.data_ptr() for p in hf.state_dict().values()})
    # no embedding row frozen for later training (OPT's and OLMo 3's configs say pad 1: BOS here)
    assert back.get_input_embeddings().padding_idx is None
    toks = torch.randint(3, hf.config.vocab_size, (2, 30))
    with torch.no_grad():
        assert (hf(toks).logits - back(toks).logits).abs().max() < 1e-5
    from safetensors.torch import save_file

    save_file({k: v.clone() for k, v in back.state_dict().items()}, tmp_path / "w.safetensors")  # tied: one each
    # both files over the base: transformers' full state dict, and the export's own (a tied one without lm_head)
    for file in (tmp_path / "w.safetensors", tmp_path / "out" / "model.safetensors"):
        base = M.load_hf_dir(d)
        with torch.no_grad():
            for p in base.parameters():
                p.zero_()
        loaded = M.apply_weights(base, file)
        with torch.no_grad():
            assert (hf(toks).logits - loaded(toks)).abs().max() < 1e-4, file.name


def test_variants_a_conversion_does_not_know_are_one_line_errors(tmp_path, capsys):
    """OPT-350m projects its embeddings (word_embed_proj_dim) and normalises after each block
    (do_layer_norm_before false); TransformerLens' OPT conversion takes neither: a shape error and an
    AttributeError traceback before, a one-line error now."""
    import transformers as T

    sizes = dict(vocab_size=len(M.tiny_tokenizer()), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 ffn_dim=96, max_position_embeddings=64)
    for name, extra, match in (("proj", dict(word_embed_proj_dim=32), "weights that do not fit its own config"),
                               ("post-ln", dict(do_layer_norm_before=False), "conversion of this OPTForCausalLM fails")):
        d = tmp_path / name
        save_hf_dir(T.OPTForCausalLM(T.OPTConfig(**sizes, **extra)), d)
        with pytest.raises(IncompatibleError, match=match):
            M.load_hf_dir(d)
        capsys.readouterr()
        assert main(["probe", "-w", str(tmp_path / "ws"), "-q", "--model", str(d), "--data", "builtin:toxicity",
                     "--n-train", "60", "--n-test", "40"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and match in err


def test_gemma_directories_take_the_config_of_the_official_model_of_their_sizes(tmp_path, capsys):
    """TransformerLens 3.9 builds Gemma configs from the official names alone; a fine-tuned Gemma keeps
    its sizes, so a directory maps to the official model of the same architecture and sizes. The whole
    load on the real Gemma 3 270M: analyses/experiments/hf_dirs/gemma_dir.py (logits within 2e-05 of
    transformers)."""
    import transformers as T

    gemma3 = T.Gemma3TextConfig(vocab_size=262144, hidden_size=640, num_hidden_layers=18, num_attention_heads=4,
                                num_key_value_heads=1, head_dim=256, intermediate_size=2048)
    assert M._gemma_official_name(gemma3, "Gemma3ForCausalLM").startswith("google/gemma-3-270m")
    gemma2 = T.Gemma2Config(vocab_size=256000, hidden_size=2304, num_hidden_layers=26, num_attention_heads=8,
                            num_key_value_heads=4, head_dim=256, intermediate_size=9216)
    assert M._gemma_official_name(gemma2, "Gemma2ForCausalLM").startswith("google/gemma-2-2b")
    cfg = M._tl_config(gemma3, "my-gemma", None)
    assert (cfg.model_name, cfg.n_ctx, cfg.use_normalization_before_and_after) == ("my-gemma", M.SMOLLM2_N_CTX, True)
    assert M._gemma_official_name(T.Gemma3TextConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                                     num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                                     intermediate_size=96), "Gemma3ForCausalLM") is None


def test_an_image_text_gemma_3_loads_trains_and_exports_as_its_text_model(tmp_path, monkeypatch):
    """Gemma 3 4B+ (Gemma3ForConditionalGeneration, model_type gemma3) was refused as a directory, and
    by official name it could neither train on the hf backend nor export. TransformerLens converts its
    text model, which mechtox now takes as Gemma3ForCausalLM: a tiny random image-text Gemma 3 loads
    with transformers' text logits, the workspace reads its architecture from the files, and the export
    (without the vision tower) gives the same logits. A directory of 4B's text sizes takes the official
    4B config (linear scaling 8 on its global layers); by official name it is the text model too."""
    import transformers as T
    from transformer_lens import HookedTransformer

    import mechtox.data
    from mechtox.workspace import Workspace

    v = len(M.tiny_tokenizer())
    text = dict(vocab_size=v, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, intermediate_size=96, max_position_embeddings=64, sliding_window=8,
                layer_types=["sliding_attention", "full_attention"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    hf = random_hf(T.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=3,
                                  eoi_token_index=4, image_token_index=5))
    assert type(hf).__name__ == "Gemma3ForConditionalGeneration"
    d = save_hf_dir(hf, tmp_path / "gemma-3-mm")
    assert Workspace(tmp_path / "ws").model_architecture(str(d)) == "Gemma3ForCausalLM"
    model = M.load_hf_dir(d)
    assert model.cfg.original_architecture == "Gemma3ForCausalLM"
    toks = torch.randint(6, v, (2, 20))
    back = T.AutoModelForCausalLM.from_pretrained(M.export_hf(model, tmp_path / "out")).eval()
    assert type(back).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        want = hf(toks).logits
        assert (model(toks) - want).abs().max() < 1e-4 and (back(toks).logits - want).abs().max() < 1e-4
    from safetensors.torch import save_file

    # BASE@FILE: a state dict in the image-text model's names
    save_file({k: v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"},  # tied: saved once
              tmp_path / "mm.safetensors")
    assert any(k.startswith("model.vision_tower.") for k in hf.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        assert (M.apply_weights(model, tmp_path / "mm.safetensors")(toks) - want).abs().max() < 1e-4
    four_b = T.Gemma3Config(text_config=dict(vocab_size=262208, hidden_size=2560, num_hidden_layers=34,
                                             num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                                             intermediate_size=10240))
    cfg = M._tl_config(four_b, "my-gemma-4b", None)
    assert (cfg.original_architecture, cfg.rotary_scaling_factor) == ("Gemma3ForCausalLM", 8.0)
    monkeypatch.setattr(mechtox.data, "_hub_reachable", lambda: True)
    tiny = tiny_gemma("gemma-3")
    tiny.cfg.original_architecture = "Gemma3ForConditionalGeneration"  # as TransformerLens names 4B+
    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", lambda *a, **k: tiny)
    assert M.load_pretrained("gemma-3-4b-it").cfg.original_architecture == "Gemma3ForCausalLM"


@pytest.mark.parametrize("name", ["google/gemma-2b", "google/gemma-2-2b", "google/gemma-2-27b", "google/gemma-3-270m",
                                  "google/gemma-3-27b-pt"])
def test_a_gemma_of_official_sizes_resized_from_its_config_is_transformer_lens_own(name):
    """A Gemma no official model matches is TransformerLens' config of another official Gemma of its
    architecture, resized from the directory's config (``_gemma_resized``; the load then checks the
    logits). For official models, where TransformerLens has its own config (2 27B: an attention scale
    of sqrt(144); 3 27B: linear scaling of its global layers), resizing another one from their
    transformers config (as the export writes it) gives TransformerLens' config back."""
    import dataclasses

    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    own = get_pretrained_model_config(name, dtype=torch.float32, device="cpu")
    if own.original_architecture == "Gemma3ForConditionalGeneration":  # its text part, as a Gemma3ForCausalLM
        own = dataclasses.replace(own, original_architecture="Gemma3ForCausalLM")
    template = get_pretrained_model_config(M._GEMMA_TEMPLATES[own.original_architecture], dtype=torch.float32,
                                           device="cpu")
    resized = M._gemma_resized(template, M.hf_config(own))
    fields = ("d_model", "d_head", "n_heads", "n_key_value_heads", "d_mlp", "n_layers", "d_vocab", "d_vocab_out", "eps",
              "rotary_dim", "rotary_base", "rotary_base_local", "rotary_scaling_factor", "attn_scale", "attn_types",
              "use_local_attn", "window_size", "attn_scores_soft_cap", "output_logits_soft_cap", "act_fn",
              "use_qk_norm", "use_normalization_before_and_after", "original_architecture")
    differ = {f: (getattr(own, f), getattr(resized, f)) for f in fields if getattr(own, f) != getattr(resized, f)}
    assert not differ


@pytest.mark.parametrize("model_type", ["gpt_neox", "qwen2", "olmo2", "olmo3"])
def test_attribute_between_two_directories_of_another_architecture(model_type, tmp_path, capsys):
    """`mechtox attribute --before DIR --after DIR` on a Pythia-like model (attention and MLP read the
    same stream), a Qwen-2-like one (q / k / v biases) and an OLMo-3-like one (RMS norms after attention
    and MLP): the split adds up (the exactness check)."""
    from mechtox.probe import Direction
    from mechtox.workspace import Workspace

    for name, seed in (("pre", 0), ("post", 0)):
        hf = foreign_hf(model_type, seed)
        if name == "post":
            with torch.no_grad():
                for p in hf.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        save_hf_dir(hf, tmp_path / name)
    ws = str(tmp_path / "ws")
    Direction(vector=torch.randn(64), hook_name="blocks.1.hook_resid_post", method="x", name="d").save(
        Workspace(ws).direction_dir("d"))
    assert main(["attribute", "-w", ws, "-q", "--before", str(tmp_path / "pre"), "--after", str(tmp_path / "post"),
                 "--direction", "d", "--prompts", "builtin:prompts", "--n", "3", "--max-new-tokens", "3",
                 "--n-eval-prompts", "0", "--mode", "shared", "--out", "a"]) == 0
    assert "WARNING" not in capsys.readouterr().out
    meta = json.loads((tmp_path / "ws" / "runs" / "a" / "attribution-shared-groups.json").read_text())
    assert meta["check_passed"] is True and abs(meta["check"]["total_change"]) > 1e-2


def test_bad_hf_directories_are_one_line(tmp_path, capsys):
    model = zero_foreign(_llama_like())
    cut = M.export_hf(model, tmp_path / "cut")
    w = cut / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    (bert / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelNotFoundError, match="cannot load these weights"):
        M.load_hf_dir(cut)
    with pytest.raises(IncompatibleError, match="LlamaForCausalLM, GPT2LMHeadModel"):
        M.load_hf_dir(bert)
    for d, match in ((cut, "cannot load these weights"), (bert, "'bert' model")):
        argv = ["probe", "-w", str(tmp_path / "ws"), "--model", str(d), "--data", "builtin:toxicity", "--n-train", "60",
                "--n-test", "40"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err and "Traceback" not in err


def _pairs(n=12):
    from mechtox.data import PreferencePairs

    return PreferencePairs(["you are"] * n, ["a good friend"] * n, ["a stupid idiot"] * n, "test")


@pytest.mark.parametrize("make", [_gpt2_like, _llama_like], ids=["gpt2", "llama-gqa"])
def test_trained_model_exports_exactly(make, tmp_path):
    """20 steps at lr 1e-2 train only what the architecture has: the export gives the trained logits."""
    from mechtox.training import DPOObjective, TrainConfig, train

    model = zero_foreign(make())
    cfg = TrainConfig(lr=1e-2, max_steps=20, batch_size=4, warmup_steps=0, eval_every=0, checkpoint_every=20)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, DPOObjective(model, _pairs(), cfg), cfg, tmp_path / "run", progress=False)
    keep = set(M.architecture_parameters(model))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and moved <= keep and keep - moved <= {"pos_embed.W_pos"} | {n for n in keep if "W_E" in n}
    assert M.foreign_parameters_in_use(model) == []
    _same_logits(model, M.load_hf_dir(M.export_hf(model, tmp_path / "hf")))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma-1", "gemma-3"])
def test_an_export_keeps_one_matrix_where_the_model_has_one(kind, tmp_path):
    """A tied model (SmolLM2, GPT-2, every Gemma), untrained or trained with LoRA, still has one embedding
    matrix: the export writes it once and says tied, as the release did (the untied export was 1.6 times
    the size for Gemma 3 270M). After full training the two differ, and the export is untied. Gemma's
    TransformerLens embedding is the matrix times sqrt(d_model), rounded as transformers rounds it."""
    import json

    import transformers as T
    from safetensors import safe_open

    if kind.startswith("gemma"):
        model = tiny_gemma(kind, d_model=80)  # sqrt(80) rounds
        with torch.no_grad():  # TransformerLens' conversion of a tied Gemma
            model.W_E.copy_(model.W_U.T * torch.tensor(model.cfg.d_model ** 0.5, dtype=torch.float32))
    else:
        model = zero_foreign(M.tiny_model(**(LLAMA if kind == "llama" else {})))
        if kind == "gpt2":
            model.cfg.original_architecture = "GPT2LMHeadModel"
        with torch.no_grad():
            model.W_E.copy_(model.W_U.T)
    toks = torch.randint(3, model.cfg.d_vocab, (2, 20))
    for tied in (True, False):
        if not tied:
            with torch.no_grad():
                model.W_U[0, 5] += 1e-3  # one entry trained apart
        out = M.export_hf(model, tmp_path / str(tied))
        assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is tied
        with safe_open(out / "model.safetensors", "pt") as f:
            assert ("lm_head.weight" in set(f.keys())) is not tied
            if tied:  # the matrix itself, not Gemma's embedding divided back (an ulp off in places)
                emb = "transformer.wte.weight" if kind == "gpt2" else "model.embed_tokens.weight"
                assert torch.equal(f.get_tensor(emb), model.W_U.detach().T)
        hf = T.AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            ours, theirs = model(toks), hf(toks).logits
        assert (ours - theirs).abs().max() < 1e-5 * max(1.0, float(ours.abs().max())), tied
        _same_logits(model, M.load_hf_dir(out))


@pytest.mark.parametrize("arch,trained_biases", [
    ("Gemma3ForCausalLM", set()), ("MistralForCausalLM", set()), ("Qwen2ForCausalLM", {"b_Q", "_b_K", "_b_V"}),
    ("GPTNeoXForCausalLM", {"b_Q", "_b_K", "_b_V", "b_O", "b_in", "b_out"})])
def test_training_leaves_the_biases_an_architecture_lacks_at_zero(arch, trained_biases, tmp_path):
    """TransformerLens gives every model zero b_Q .. b_out and b_U. Before session 28 only Llama's and
    GPT-2's were held at zero: a DPO run on Gemma 3 270M moved all 109 of them, so it fine-tuned
    parameters the real model does not have (and an export could not carry them)."""
    from mechtox.training import DPOObjective, TrainConfig, train

    model = M.tiny_model(**{**LLAMA, "original_architecture": arch})
    cfg = TrainConfig(lr=1e-2, batch_size=4, max_steps=3, warmup_steps=0, eval_every=0, checkpoint_every=3,
                      backend="hooked")  # (the hf backend's transformers models have no such biases to move)
    was = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, DPOObjective(model, _pairs(), cfg), cfg, tmp_path / "run", progress=False)
    moved = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters()
             if n.rsplit(".", 1)[-1].startswith(("b_", "_b_")) and not torch.equal(p.detach(), was[n])}
    assert moved == trained_biases
    assert not torch.equal(model.blocks[0].mlp.W_out.detach(), was["blocks.0.mlp.W_out"])
    assert M.foreign_parameters_in_use(model) == []


def test_checkpoint_with_foreign_biases_warns(tmp_path):
    model = _llama_like()  # randomised biases, which Llama does not have
    path = M.save_checkpoint(model, tmp_path / "ckpt")
    with pytest.warns(UserWarning, match="export cannot be exact"):
        M.load_checkpoint(path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        M.load_checkpoint(M.save_checkpoint(zero_foreign(_llama_like()), tmp_path / "clean"))


def test_export_command(tmp_path, capsys):
    """`mechtox export NAME --hf DIR`: transformers loads it and generates the workspace model's greedy text."""
    import transformers

    from mechtox.generation import generate

    ws = tmp_path / "ws"
    model = zero_foreign(_llama_like())
    M.save_checkpoint(model, ws / "models" / "mine")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    assert main(["export", "mine", "-w", str(ws), "--hf", str(out)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert main(["export", "mine", "-w", str(ws), "--hf", str(out), "--force"]) == 0
    assert "logits differ from 'mine' by at most" in capsys.readouterr().out
    assert not (out / "keep.txt").exists() and M.is_hf_dir(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    prompts = ["you are a", "the history of"]
    ours = generate(model, prompts, 6, 32, 2, stop_at_eos=False, progress=False).continuations
    for p, c in zip(prompts, ours, strict=True):
        ids = model.to_tokens(p, prepend_bos=model.cfg.default_prepend_bos)
        g = hf.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        assert tok.decode(g[0, ids.shape[1]:]) == c
    gen = transformers.GenerationConfig.from_pretrained(out)  # what hf.generate(ids) does without arguments
    assert (gen.eos_token_id, gen.bos_token_id, gen.do_sample) == (tok.eos_token_id, tok.bos_token_id, False)
    assert gen.pad_token_id == (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def test_export_of_an_architecture_it_cannot_write_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    """A model of an architecture mechtox does not write (GPT-J, from TransformerLens by official name; a
    model with none) is refused from the files, before the model loads (which took seconds for Gemma 3
    270M). The architecture is read from checkpoints, directories and BASE@FILE alike."""
    from mechtox.workspace import Workspace

    d = tmp_path / "neox"
    save_hf_dir(foreign_hf("gpt_neox"), d)
    ws = Workspace(tmp_path / "ws")
    M.save_checkpoint(M.load_hf_dir(d), ws.root / "models" / "mine")
    M.save_checkpoint(zero_foreign(_llama_like()), ws.root / "models" / "llama")
    M.save_checkpoint(M.tiny_model(original_architecture="GPTJForCausalLM"), ws.root / "models" / "gptj")
    (tmp_path / "w.pt").touch()
    assert [ws.model_architecture(s) for s in ("mine", str(d), f"{d}@{tmp_path / 'w.pt'}", "tiny", "llama", "gptj")] == [
        "GPTNeoXForCausalLM", "GPTNeoXForCausalLM", "GPTNeoXForCausalLM", "", "LlamaForCausalLM", "GPTJForCausalLM"]
    monkeypatch.setattr(Workspace, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    for name in ("gptj", "tiny"):
        capsys.readouterr()
        assert main(["export", name, "-w", str(ws.root), "--hf", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"supports {M.EXPORT_NAMES} models" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", list(GEMMAS))
def test_gemma_models_export_with_their_logits_and_read_transformers_names(kind, tmp_path):
    """Gemma 1-3 as TransformerLens configures them (the official config, shrunk; windows of 8 on the
    local layers; weights scaled so that the logits pass Gemma 2's soft cap): what `export_hf` writes,
    transformers computes the model's logits from (its norms scale by 1 + w and its embeddings by
    sqrt(d_model), both folded in by TransformerLens), and a state-dict file in transformers names loads
    back over a zeroed model."""
    import transformers as T

    model = tiny_gemma(kind)
    if model.cfg.use_local_attn:  # all layers global where TransformerLens runs no local ones (transformers' default has some)
        import dataclasses

        every = M.hf_config(dataclasses.replace(model.cfg, use_local_attn=False))
        assert every.layer_types == ["full_attention"] * 4
    hf = T.AutoModelForCausalLM.from_pretrained(M.export_hf(model, tmp_path / "hf")).eval()
    assert type(hf).__name__ == model.cfg.original_architecture
    toks = torch.randint(3, model.cfg.d_vocab, (2, 30))
    with torch.no_grad():
        ours, theirs = model(toks), hf(toks).logits
    assert ours.abs().max() > 25  # Gemma 2 caps them at 30 tanh(x / 30): past 25 only where x > 36, well into the bend
    assert (ours - theirs).abs().max() < 1e-4 * ours.abs().max()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "w.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        assert (M.apply_weights(model, tmp_path / "w.safetensors")(toks) - ours).abs().max() < 1e-4 * ours.abs().max()


def test_gemma_1_computes_the_tanh_gelu_and_its_export_the_same_function(tmp_path, monkeypatch):
    """Gemma 1 runs the tanh approximation of GELU (transformers reads its configs' legacy "gelu" as
    that); TransformerLens 3.9 configures it with the exact GELU. mechtox loads Gemma 1 with the tanh
    one, from a directory (its config) and by official name, and an export (or the hf backend) computes
    whatever GELU the HookedTransformer does: a model TransformerLens built itself, or saved by mechtox
    before, keeps the exact one there too (transformers' "gelu_python"). Compared on the function
    itself, where the two GELUs differ by up to 4.7e-4 (the logits of a tiny model hide that)."""
    import torch.nn.functional as F
    import transformers as T
    from transformer_lens import HookedTransformer

    import mechtox.data

    gemma_2b = T.GemmaConfig(vocab_size=256000, hidden_size=2048, num_hidden_layers=18, num_attention_heads=8,
                             num_key_value_heads=1, head_dim=256, intermediate_size=16384, hidden_act="gelu")
    assert M._tl_config(gemma_2b, "my-gemma", None).act_fn == "gelu_pytorch_tanh"
    monkeypatch.setattr(mechtox.data, "_hub_reachable", lambda: True)
    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing",
                        lambda *a, **k: tiny_gemma("gemma-1", tl_gelu=True))  # as TransformerLens builds it
    x = torch.linspace(-6, 6, 2001)
    tanh = F.gelu(x, approximate="tanh")
    assert (tanh - F.gelu(x)).abs().max() > 1e-4
    official = M.load_pretrained("gemma-2b")
    assert official.cfg.act_fn == "gelu_pytorch_tanh"
    assert all(torch.equal(b.mlp.act_fn(x), tanh) for b in official.blocks)
    monkeypatch.setenv("MECHTOX_CACHE", str(tmp_path / "cache"))  # a GGUF file converted before the change
    gguf = tmp_path / "gemma-1.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    M.save_checkpoint(tiny_gemma("gemma-1", tl_gelu=True),
                      M._cached_conversion("gemma-1", _io.file_sha256(gguf), M.SMOLLM2_N_CTX))
    assert torch.equal(M.load_gguf(gguf).blocks[1].mlp.act_fn(x), tanh)
    for model, act in ((tiny_gemma("gemma-1"), "gelu_pytorch_tanh"), (tiny_gemma("gemma-1", tl_gelu=True), "gelu_python")):
        hf = T.AutoModelForCausalLM.from_pretrained(M.export_hf(model, tmp_path / act)).eval()
        assert hf.config.hidden_act == act
        assert (hf.model.layers[0].mlp.act_fn(x) - model.blocks[0].mlp.act_fn(x)).abs().max() < 1e-6
        assert (M.to_hf_model(model).model.layers[0].mlp.act_fn(x) - model.blocks[0].mlp.act_fn(x)).abs().max() < 1e-6


def test_export_that_is_not_the_model_writes_nothing(tmp_path, capsys, monkeypatch):
    """The export's check (transformers loads the folder and gives the model's logits) only printed
    the difference: an export that was not the model (here a conversion slip: one layer's down
    projection left out) said 'differ by at most 1.2e+00' and exited 0. Now it is an error, checked
    before the folder takes DIR's place, and an earlier export there is kept."""
    ws = tmp_path / "ws"
    M.save_checkpoint(zero_foreign(_llama_like()), ws / "models" / "mine")
    out = tmp_path / "hf"
    assert main(["export", "mine", "-w", str(ws), "--hf", str(out), "-q"]) == 0
    good = (out / "model.safetensors").read_bytes()
    # a model loaded in bfloat16 is checked against its weights in float32 (bfloat16 arithmetic alone
    # differs by far more than the check allows)
    capsys.readouterr()
    assert main(["--dtype", "bfloat16", "export", "mine", "-w", str(ws), "--hf", str(tmp_path / "bf16"), "-q"]) == 0
    diff = float(capsys.readouterr().out.rsplit("by at most ", 1)[1])
    assert diff < 1e-4
    real = M.tl_to_hf

    def slip(state, cfg):
        sd = real(state, cfg)
        sd["model.layers.0.mlp.down_proj.weight"] = torch.zeros_like(sd["model.layers.0.mlp.down_proj.weight"])
        return sd

    monkeypatch.setattr(M, "tl_to_hf", slip)
    capsys.readouterr()
    assert main(["export", "mine", "-w", str(ws), "--hf", str(out), "--force", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the export of 'mine' is not the model: transformers' logits differ" in err, err
    assert (out / "model.safetensors").read_bytes() == good
    assert not any(p.name.startswith(".") or "tmp" in p.name for p in tmp_path.iterdir())  # no temporary folder left


def test_hub_id_spec_loads_through_transformers_and_is_one_line_offline(tmp_path, capsys):
    from mechtox.workspace import Workspace

    model = zero_foreign(_gpt2_like())
    out = M.export_hf(model, tmp_path / "released")
    ws = Workspace(tmp_path / "ws")
    assert ws.resolve_model(f"hf:{out}").kind == "hub"
    _same_logits(model, ws.load_model(f"hf:{out}"))  # transformers reads a local path where it takes a hub id
    import time

    t = time.perf_counter()  # no hub here: the local cache is tried first, then one quick reachability check
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        ws.load_model("hf:nobody-here/gpt2-medium-dpo-never-cached")
    assert time.perf_counter() - t < 10
    capsys.readouterr()
    assert main(["probe", "-w", str(tmp_path / "ws"), "--model", "hf:nobody-here/never-cached", "--data",
                 "builtin:toxicity", "--n-train", "60", "--n-test", "40"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf:nobody-here/never-cached" in err and "Traceback" not in err


@pytest.mark.parametrize("names", ["transformerlens", "transformers"])
def test_released_state_dict_over_a_base_model(names, tmp_path, capsys):
    """BASE@FILE: Lee et al. released their DPO gpt2-medium as a state-dict file over the base."""
    from mechtox.training import DPOObjective, TrainConfig, train
    from mechtox.workspace import Workspace

    base = zero_foreign(_gpt2_like())
    ws = Workspace(tmp_path / "ws")
    M.save_checkpoint(base, ws.model_dir("gpt2ish"))
    trained = M.load_checkpoint(ws.model_dir("gpt2ish"))
    cfg = TrainConfig(lr=1e-2, max_steps=4, batch_size=4, warmup_steps=0, eval_every=0, checkpoint_every=4)
    train(trained, DPOObjective(trained, _pairs(), cfg), cfg, tmp_path / "run", progress=False)
    if names == "transformers":  # a transformers GPT2LMHeadModel state dict, as torch.save writes it
        f = tmp_path / "dpo.pt"
        torch.save({k.removeprefix("transformer."): v for k, v in M.to_hf_state_dict(trained).items()}, f)
    else:
        from safetensors.torch import save_file

        f = tmp_path / "dpo.safetensors"
        save_file({k: v.contiguous() for k, v in trained.state_dict().items() if "IGNORE" not in k and "mask" not in k},
                  str(f))
    loaded = ws.load_model(f"gpt2ish@{f}")
    _same_logits(trained, loaded)
    capsys.readouterr()
    assert main(["models", "-w", str(ws.root), "--set-base", f"gpt2ish@{f}"]) == 0
    assert main(["probe", "-w", str(ws.root), "-q", "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "40",
                 "--layers", "last"]) == 0
    out = capsys.readouterr().out
    assert "saved probe 'probe'" in out


def test_bad_weight_files_are_one_line(tmp_path, capsys):
    from mechtox.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    M.save_checkpoint(zero_foreign(_llama_like()), ws.model_dir("llamaish"))
    other = zero_foreign(M.tiny_model(**{**LLAMA, "d_mlp": 96}))
    wrong = tmp_path / "wrong.pt"
    torch.save(M.to_hf_state_dict(other), wrong)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    for f, match in ((wrong, "shapes"), (junk, "no readable state dict"), (tmp_path / "absent.pt", "no weights file")):
        assert main(["probe", "-w", str(ws.root), "--model", f"llamaish@{f}", "--data", "builtin:toxicity",
                     "--n-train", "60", "--n-test", "40"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err and "Traceback" not in err, err


def test_quiet_hides_the_transformers_progress_bars(tmp_path, capsys, monkeypatch):
    """``--quiet`` sets TQDM_DISABLE, which tqdm reads only at import; transformers' own bars
    (loading weights) must follow it too (the GGUF file's: test_smollm2.py)."""
    from transformers.utils import logging as hf_logging

    out = M.export_hf(zero_foreign(_llama_like()), tmp_path / "hf")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # a CLI test before this one may have set it
    hf_logging.enable_progress_bar()
    capsys.readouterr()
    try:
        M.load_hf_dir(out)
        assert "Loading weights" in capsys.readouterr().err  # the bar this test is about, shown by default
        monkeypatch.setenv("TQDM_DISABLE", "1")
        M.load_hf_dir(out)
        assert "Loading weights" not in capsys.readouterr().err
    finally:
        hf_logging.enable_progress_bar()


def test_quiet_export_check_prints_no_loading_bar(tmp_path, capsys, monkeypatch):
    """The export job's own transformers load follows --quiet too, also for a model passed in (no
    mechtox loader ran before it to switch transformers' bars off)."""
    from transformers.utils import logging as hf_logging

    from mechtox.jobs import Context, execute, export

    hf_logging.enable_progress_bar()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    try:
        execute(export, export.ExportConfig(name="mine", hf=str(tmp_path / "hf")), Context(workspace=str(tmp_path / "ws")),
                model=zero_foreign(_llama_like()))
    finally:
        hf_logging.enable_progress_bar()
    err = capsys.readouterr().err
    assert "Loading weights" not in err, err[:300]


@pytest.mark.parametrize("kind", ["gemma-2", "gemma-3"])
def test_gradients_convert_to_the_units_of_transformers(kind):
    """`tl_to_hf(..., gradients=True)`: where TransformerLens holds a weight as a * w + b (Gemma's
    embeddings times sqrt(d_model), its norms as 1 + w), the gradient of w is a times the
    TransformerLens weight's. Compared with the gradients of the transformers model itself."""
    model = tiny_gemma(kind)
    hf = M.to_hf_model(model, attn_implementation="eager")
    toks = torch.randint(3, model.cfg.d_vocab, (2, 12))
    model(toks).logsumexp(-1).sum().backward()
    hf(toks).logits.logsumexp(-1).sum().backward()
    keep = set(M.architecture_parameters(model))
    ours = M.tl_to_hf({n: p.grad for n, p in model.named_parameters() if n in keep}, model.cfg, gradients=True)
    theirs = {n: p.grad for n, p in hf.named_parameters()}
    assert set(ours) == set(theirs)
    for n, g in theirs.items():
        assert (ours[n] - g).abs().max() <= 1e-4 * g.abs().max() + 1e-8, n
