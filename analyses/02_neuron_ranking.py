# %% [markdown]
# # Toxic neurons and their tokens (Lee et al. 2024, Table 1 top; Yang et al. v3)
# Rank all value vectors by cosine with (a) the probe and (b) the unembedding direction;
# decode them with the logit lens; SVD of the top-128 with signs fixed.

# %%
from _common import RESULTS, N, data_file, load

import mechtox as mt
from mechtox.activations import collect_activations
from mechtox.directions import final_resid_hook, token_log_odds, token_sets, unembedding_direction
from mechtox.neurons import logit_lens

model = load()
data = mt.load_labelled(data_file("jigsaw_balanced.csv", "builtin:toxicity")).subset(range(N["train"]))
h = final_resid_hook(model)
probe = mt.fit_probe(collect_activations(model, data.texts, [h])[h], data.labels, h, name="probe")
unembed = unembedding_direction(model, token_sets(token_log_odds(model, data), N["k_tokens"]))
for d in (probe, unembed):
    r = mt.rank_neurons(model, d, name=d.name)
    top = mt.decode_neurons(model, r.top(10))
    print(f"\n{d.name}: top cosine {r.table.cosine.iloc[0]:.3f}; chance range {r.chance_range}")
    print(top[["layer", "neuron", "cosine", "tokens"]].to_string(index=False))
    top.to_csv(RESULTS / f"02_top_neurons_{d.name}.csv", index=False)
    svd = mt.toxic_svd(model, r, d, top_n=128)
    print("SVD U[0..2]:", [" | ".join(t) for t in logit_lens(model, svd.vectors[:3], 6)])
