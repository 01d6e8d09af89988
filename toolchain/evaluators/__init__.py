"""How good a model is: accuracy, parity between stages, latency (they judge; passes never measure)."""
