"""The benchmark agent: bench_agent.py runs standalone on the target; the host imports its timed loop."""
