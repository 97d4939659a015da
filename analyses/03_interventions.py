# %% [markdown]
# # Interventions table (Lee et al. 2024, Table 1)
# Toxicity of greedy continuations (20 tokens) of the challenge prompts, perplexity on
# Wikitext-2 and F1, under: no-op, subtracting the toxicity direction, subtracting the top value
# vector, subtracting SVD U[0], ablating the top-100/1000 toxic neurons.
# Paper (GPT-2 medium, Perspective): no-op 0.453 / 21.7; subtract W_Toxic 0.245 / 23.56; DPO 0.208 / 23.34.

# %%
from _common import RESULTS, N, data_file, load

import mechtox as mt
from mechtox.directions import final_resid_hook, token_log_odds, token_sets, unembedding_direction
from mechtox.evaluate import EvalConfig, evaluate
from mechtox.interventions import NOOP, ablate, subtract
from mechtox.scorers import get_scorer

model = load()
data = mt.load_labelled(data_file("jigsaw_balanced.csv", "builtin:toxicity")).subset(range(N["train"]))
w = unembedding_direction(model, token_sets(token_log_odds(model, data), N["k_tokens"]))
r = mt.rank_neurons(model, w, chance_draws=0)
top = r.table.iloc[0]
v = model.blocks[int(top.layer)].mlp.W_out[int(top.neuron)].detach()
svd = mt.toxic_svd(model, r, w)
hook = final_resid_hook(model)
ivs = [NOOP, subtract(w, 8.0), subtract(v, 8.0, hook), subtract(svd.vectors[0], 8.0, hook),
       ablate(r.table.head(100)), ablate(r.table.head(1000))]
prompts = mt.load_prompts(data_file("rtp_challenge.jsonl", "builtin:prompts"), limit=N["prompts"]).prompts
text = mt.load_text(data_file("wikitext2_test.raw", "builtin:text"))
table, _ = evaluate(model, ivs, prompts, get_scorer("profanity"), text,
                    config=EvalConfig(max_new_tokens=N["new_tokens"], ppl_tokens=N["ppl_tokens"]))
print(table.to_string(index=False))
table.to_csv(RESULTS / "03_interventions.csv", index=False)
