"""The fine-tuning loop: batching, precision, data parallel, checkpoints."""
