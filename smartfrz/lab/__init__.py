"""The reproduction lab: real data and models, the experiment runner, cost accounting, the benchmark,
presets, reports, W&B logging and the papermill driver. A training loop needs none of it."""
