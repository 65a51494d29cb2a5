"""Running experiments: stacked training, cached and resumable sweeps, distributed executors."""
