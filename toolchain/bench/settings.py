from toolchain.benchmark import BenchSettings

QUICK = BenchSettings(threads=(1,), batch=1, warmup=20, runs=200)
