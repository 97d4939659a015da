"""Figures: every model and intervention a figure shows is its own mark (the evaluation figure is the
one that shows several models)."""


def test_the_evaluation_figure_tells_models_and_interventions_apart():
    """A two-model evaluation table: each model and intervention is its own mark (no two bars at one x)."""
    import pandas as pd

    from mechtox import plotting

    t = pd.DataFrame({"model": ["base", "dpo", "base"], "intervention": ["none", "none", "ablate:probe:100"],
                      "toxicity": [0.3, 0.2, 0.25], "toxic_frac": [0.3, 0.2, 0.2], "ppl": [37.0, 40.0, 38.0]})
    fig = plotting.eval_figure(t)
    for trace in fig.data:
        assert len(set(trace.x)) == len(t), trace.x
    assert "dpo" in set(fig.data[0].x) and "base" in set(fig.data[0].x)
