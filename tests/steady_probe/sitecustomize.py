"""Put on PYTHONPATH by tests/test_table.py for the benchmark scripts it runs (and the train.py processes they
start): the speed probe (``timing.speed_probe``) returns one figure, as on a machine of steady speed, so a resumed
script finds what the first run recorded. On a shared machine, and beside the other tests of ``pytest -n``, the
probe varies from one process to the next by more than ``results.PROBE_RATIO``; what a resumed benchmark does with
the probe is tested in tests/test_records.py."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
import timing  # noqa: E402

timing.speed_probe = lambda steps=20, warmup=5: 100.0
