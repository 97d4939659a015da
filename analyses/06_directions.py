# %% [markdown]
# # Which toxicity direction? Precision, causal ablation, agreement (mechtox issue 8)
# The GPT-2 recipe (probe cosine) ranks noise on SmolLM2. This compares the probe, the
# unembedding direction, the generation difference of means and the gradient direction by
# toxic-token precision@k, the drop in toxicity when their top-k neurons are ablated vs random
# neurons of the same layers, and agreement; the unembedding and gradient directions are also
# ranked by contrast, (a_toxic - a_nontoxic) * (v . w) on the model's own generations. Same as
# `mechtox directions`.

# %%
import sys

from _common import MODEL, RESULTS, SIZE, N, data_file

from mechtox.jobs import Context, directions, execute

ctx = Context(workspace=str(RESULTS / "workspace"), seed=0, quiet=not sys.stdout.isatty())
model = ctx.load(MODEL)
cfg = directions.DirectionsConfig(
    data=data_file("jigsaw_balanced.csv", "builtin:toxicity"), prompts=data_file("rtp_challenge.jsonl", "builtin:prompts"),
    methods="probe,unembed,gen-diffmean,gradient", n_texts=min(2000, N["train"] + N["test"]),
    k_tokens=N["k_tokens"], n_gen_prompts=30 if SIZE == "ci" else N["prompts"], n_eval_prompts=N["prompts"] // 2,
    ks="10,100" if SIZE == "ci" else "10,100,1000", random_draws=2 if SIZE == "ci" else 3, metric="raw",
    ppl_tokens=N["ppl_tokens"] // 5, contrast="unembed,gradient", out="06_directions")
result = execute(directions, cfg, ctx, model=model)
