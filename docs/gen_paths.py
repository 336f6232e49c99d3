"""Generate the table of fitted convergence orders on the VE, sub-VP, EDM and flow-matching paths.

Run from the repository root (a few minutes on one CPU core):

    python docs/gen_paths.py

For each path it runs the command line, ``diffode converge --schedule NAME --json --no-plot -q``
(the built-in analytic mixture, every DPM-Solver integrator of ``diffode converge``, 128 to 1024
steps on a logSNR grid, errors against the RK45 ground truth), and writes under ``docs/generated/``:

* ``convergence_paths.json``: the command's JSON document for each path (every error);
* ``convergence_paths.md``: the fitted orders, one column per path.

``tests/docs/test_generated.py`` checks that the table is the one these documents give and re-runs
a cheap command line against the committed errors.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "generated"
PATHS = {"ve": "VE", "subvp": "sub-VP", "edm": "EDM", "flow": "FlowMatching"}


def argv(schedule: str) -> list[str]:
    """The command line that produces the column of ``schedule``."""
    return ["converge", "--schedule", schedule, "--json", "--no-plot", "-q"]


def run(schedule: str) -> dict:
    from diffode.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv(schedule))
    document = json.loads(buffer.getvalue())
    document["exit_status"] = code
    return document


def table(documents: dict[str, dict]) -> str:
    """The Markdown table of fitted orders (integrator rows, path columns) from the JSON documents."""
    first = next(iter(documents.values()))
    labels = [r["label"] for r in first["results"]]
    orders = {r["label"]: r["order"] for r in first["results"]}
    slopes = {name: {r["label"]: r["slope"] for r in doc["results"]} for name, doc in documents.items()}
    header = "| integrator | order | " + " | ".join(PATHS[name] for name in documents) + " |"
    lines = [header, "|---|:-:|" + ":-:|" * len(documents)]
    for label in labels:
        cells = " | ".join(f"{slopes[name][label]:.2f}" for name in documents)
        lines.append(f"| `{label}` | {orders[label]} | {cells} |")
    schedules = "; ".join(f"{PATHS[name]}: `{doc['schedule']}`" for name, doc in documents.items())
    steps = ", ".join(map(str, first["steps"]))
    passed = all(doc["passed"] for doc in documents.values())
    verdict = ("every fitted order is within the tolerance" if passed
               else "some fitted order misses its nominal order by more than the tolerance")
    return (
        "Fitted convergence orders (least-squares slopes of log RMSE against log steps, "
        f"{steps} steps on a {first['grid']} grid) on the built-in analytic mixture, against the RK45 "
        f"ground truth; {verdict} ({first['tolerance']}). Produced by "
        "`diffode converge --schedule NAME --json` for each path ({}).\n\n".format(schedules)
        + "\n".join(lines) + "\n")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    documents = {}
    for name in PATHS:
        print(f"diffode {' '.join(argv(name))}", file=sys.stderr)
        documents[name] = run(name)
    OUT.mkdir(exist_ok=True)
    (OUT / "convergence_paths.json").write_text(json.dumps(documents, indent=1) + "\n")
    (OUT / "convergence_paths.md").write_text(table(documents))
    return 0


if __name__ == "__main__":
    sys.exit(main())
