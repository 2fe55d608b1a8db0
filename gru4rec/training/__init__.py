"""Training as the reference does it: trainer, session-parallel batching, negative sampling, losses,
the optimiser, the fused step and its compiled kernels, distributed training and warm starts."""
