import json
import sys
import tempfile
from pathlib import Path

from toolchain.benchmark import AGENT_PATH, agent_command, run_agent


def measure_files(models, evalset, settings):
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "r.json"
        run_agent(agent_command(sys.executable, AGENT_PATH, {k: str(v) for k, v in models.items()}, settings, output,
                                evalset=evalset, progress=False), lambda _: None)
        return json.loads(output.read_text())
