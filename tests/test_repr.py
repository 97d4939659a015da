"""What a notebook shows for a result: one readable line (no tensor dumps), and for the results
with tables an HTML view of them. The numbers in the line are checked against the tables."""

from __future__ import annotations

import re

import pytest
import torch

import mechtox as mt
from mechtox.attribution import attribute
from mechtox.data import PreferencePairs
from mechtox.generation import generate
from mechtox.probe import Direction
from tests.test_attribution import PROMPTS, perturbed


def _one_line(obj) -> str:
    r = repr(obj)
    assert "\n" not in r and "tensor(" not in r and "array(" not in r and len(r) < 400, r
    return r


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    model = mt.tiny_model()
    data = mt.load_labelled("builtin:toxicity").subset(range(200))
    return model, data, mt.probe_sweep(model, data, progress=False)


def test_probe_sweep_and_probe_lines_state_the_best_probe_and_its_scores(fitted, tmp_path):
    model, data, sweep = fitted
    row = sweep.table[sweep.table["hook"] == sweep.best_hook].iloc[0]
    line = _one_line(sweep)
    assert line.startswith(f"ProbeSweep({len(sweep.table)} hooks, best {sweep.best_hook}: ")
    assert f"test AUROC {row['test_auroc']:.3f}, accuracy {row['test_accuracy']:.3f}" in line
    assert f"{int(row['n_train'])} train / {int(row['n_test'])} test" in line
    html = sweep._repr_html_()
    assert all(h in html for h in sweep.table["hook"]) and html.count("<tr") == len(sweep.table) + 1
    probe = _one_line(sweep.best)
    assert probe.startswith(f"Probe({sweep.best_hook}, logreg, dim {model.cfg.d_model}, ")
    assert probe.endswith(f"test AUROC {row['test_auroc']:.3f})")
    sweep.best.save(tmp_path / "p")
    loaded = Direction.load(tmp_path / "p", model)
    assert _one_line(loaded).endswith(f"test AUROC {row['test_auroc']:.3f})")
    assert _one_line(data) == f"LabelledTexts(200 texts, {int(data.labels.sum())} toxic, from {data.source})"


def test_neuron_ranking_line_names_the_top_neurons_of_its_table(fitted):
    model, _, sweep = fitted
    ranking = mt.rank_neurons(model, sweep.best, name="probe")
    line = _one_line(ranking)
    top = ranking.table.head(3)
    want = ", ".join(f"L{int(r.layer)} N{int(r.neuron)} {r.cosine:+.3f}" for r in top.itertuples())
    assert line.endswith(f"top: {want})") and f"{len(ranking.table):,} neurons by cosine with 'probe'" in line
    assert f"{ranking.above_chance} above chance" in line
    html = ranking._repr_html_()
    assert f"(first 12 of {len(ranking.table):,} rows)" in html and html.count("<tr") == 13
    svd = _one_line(mt.toxic_svd(model, ranking, sweep.best, top_n=16, k=5))
    assert svd.startswith("ToxicSVD(top 16 neurons, 5 vectors of dim 64;")


def test_data_activation_and_generation_lines(fitted):
    model, data, _ = fitted
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    acts = mt.collect_activations(model, data.texts[:10], hooks, progress=False)
    assert _one_line(acts) == ("Activations(10 texts, mean pooling: blocks.0.hook_resid_post [10, 64], "
                               "blocks.1.hook_resid_post [10, 64])")
    tok = mt.collect_activations(model, data.texts[:10], hooks[:1], pooling="tokens", progress=False)
    assert f"10 texts, {tok.n_tokens:,} tokens, tokens pooling" in _one_line(tok)
    prompts = mt.load_prompts("builtin:prompts")
    assert _one_line(prompts).startswith(f"PromptSet({len(prompts)} prompts from {prompts.source}; first: ")
    pairs = PreferencePairs(["Say:"] * 2, ["a kind\nreply"] * 2, ["a rude reply " * 10] * 2, "here")
    assert _one_line(pairs) == ("PreferencePairs(2 pairs from here; first: 'Say:' -> chosen 'a kind reply', "
                                "rejected 'a rude reply a rude reply a r…')")
    gens = generate(model, ["hello there"], 3, progress=False)
    assert _one_line(gens) == f"Generations(1 greedy continuation; first: 'hello there' -> {gens.continuations[0]!r})"


def test_attribution_line_adds_up_to_the_exactness_check():
    torch.manual_seed(0)
    before = mt.tiny_model()
    after = perturbed(before, w_out=True)
    res = attribute(before, after, torch.randn(before.cfg.d_model), PROMPTS, max_new_tokens=4, progress=False)
    line = _one_line(res)
    nums = dict(re.findall(r"(before - after|neurons|heads|other parts) ([+-][0-9.e+-]+)", line))
    c = res.check
    other = c["embeddings"] + c["attention_biases"] + c["mlp_biases"]  # the parts, summed here on their own
    for key, want in (("before - after", c["total_change"]), ("neurons", c["neurons"]), ("heads", c["heads"]),
                      ("other parts", other)):
        assert float(nums[key]) == pytest.approx(want, rel=1e-3, abs=1e-6), (key, line)
    assert ("fell" if c["total_change"] >= 0 else "rose") in line
    html = res._repr_html_()
    assert "neuron groups" in html and "head groups" in html and "largest contribution first" in html


def test_a_cell_without_a_value_reads_as_a_dash_in_every_table(tmp_path, capsys):
    """NaN (a direction has no test AUROC) is a dash in the terminal's markdown, the notebook's HTML
    and the report, not 'nan'."""
    import pandas as pd

    from mechtox.cli import main
    from mechtox.report import _table
    from mechtox.tables import markdown, notebook_html

    df = pd.DataFrame({"method": ["probe", "unembed"], "test_auroc": [0.9, float("nan")]})
    for text in (markdown(df), notebook_html("t", [("c", df)]), _table(df)):
        assert "—" in text and "nan" not in text.lower(), text
    Direction(torch.ones(64), "blocks.1.hook_resid_post", "unembed", "tiny").save(tmp_path / "directions" / "unembed")
    assert main(["models", "-w", str(tmp_path), "-q"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| unembed |"))
    assert row.split(" | ")[4] == "—", row
