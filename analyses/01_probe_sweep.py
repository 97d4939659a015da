# %% [markdown]
# # Probe sweep (Lee et al. 2024, §3)
# A logistic-regression probe on the mean-pooled residual stream at every layer, from ONE
# activation pass. Lee et al.: 94% validation accuracy on GPT-2 medium's last layer (full Jigsaw).

# %%
from _common import RESULTS, N, data_file, load, save

import mechtox as mt
from mechtox.plotting import probe_sweep_figure
from mechtox.probe import split_indices

model = load()
data = mt.load_labelled(data_file("jigsaw_balanced.csv", "builtin:toxicity"))
keep, _ = split_indices(data.labels, test_size=len(data) - N["train"] - N["test"], seed=0)
sweep = mt.probe_sweep(model, data.subset(keep), test_size=N["test"], train_size=N["train"], seed=0)
print(sweep.table[["hook", "test_accuracy", "test_auroc"]].to_string(index=False))
print("best:", sweep.best_hook, sweep.best.metrics["test_accuracy"])
sweep.table.to_csv(RESULTS / "01_probe_sweep.csv", index=False)
save(probe_sweep_figure(sweep.table), "01_probe_sweep.html")
