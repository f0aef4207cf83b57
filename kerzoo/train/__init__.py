"""Fine-tuning with any registered optimizer: data, tasks, the loop, checkpoints and replay."""
