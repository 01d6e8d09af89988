"""Training: the loop and the papers' recipe, optimizers, checkpoints, run folders and their logs."""
