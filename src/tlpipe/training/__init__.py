"""Training: optimiser and schedule, mixing, resume files, one epoch loop, and the training stages' glue."""
