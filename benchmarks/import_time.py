"""Import cost of `agent_lightning` versus the reference `agentlightning` package.

    python benchmarks/import_time.py [--reference-python /path/to/venv/bin/python] [--repeat 5]

Each measurement is a fresh interpreter; the table shows the median wall time and peak RSS
of `import <module>`, and the ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import resource, sys, time
t = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print({{"seconds": elapsed, "rss_mb": rss_mb, "modules": len(sys.modules)}})
"""


def measure(python: str, module: str, repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([python, "-c", PROBE.format(module=module)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{python} cannot import {module}: {out.stderr.strip()[-300:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')))
    return {key: statistics.median(r[key] for r in runs) for key in ("seconds", "rss_mb", "modules")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", help="python of a venv with agentlightning==0.3.0 installed")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = [("agent_lightning (this repo)", measure(sys.executable, "agent_lightning", args.repeat))]
    if args.reference_python:
        rows.append(("agentlightning 0.3.0", measure(args.reference_python, "agentlightning", args.repeat)))
    print("| package | import time (s) | peak RSS (MB) | modules |\n|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['seconds']:.3f} | {r['rss_mb']:.0f} | {r['modules']:.0f} |")
    if len(rows) == 2:
        ours, ref = rows[0][1], rows[1][1]
        time_ratio = ref["seconds"] / ours["seconds"]
        print(f"\nreference / ours: {time_ratio:.0f}x time, {ref['rss_mb'] / ours['rss_mb']:.1f}x memory")


if __name__ == "__main__":
    main()
