"""Child entry: measure one contender on one workload and write the result as JSON.

``python -m benchmarks._job '<JobSpec JSON>'``. Run by ``benchmarks.jobs.launch`` in a fresh
interpreter, so that no job inherits another's imports, pools or warm caches. A freshproc
job checks that it imported the freshproc it was given (the baseline's, or the current one),
and its contender checks the workers; a mismatch stops the whole run.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from benchmarks import provenance
from benchmarks.contenders import BY_NAME, load
from benchmarks.jobs import JobResult, JobSpec
from benchmarks.workloads import BY_KEY


def measure(spec: JobSpec) -> JobResult:
    try:
        if spec.baseline_path is not None:
            provenance.put_first(spec.baseline_path)
        contender = load(spec.contender)
        if BY_NAME[spec.contender].family == "freshproc":
            provenance.check_job(spec.freshproc_package())
        measurement = contender.measure(BY_KEY[spec.workload], spec.plan)
    except provenance.WrongFreshprocError as exc:
        traceback.print_exc()
        return JobResult(abort=str(exc))
    except ModuleNotFoundError as exc:
        traceback.print_exc()
        return JobResult(unavailable=f"{exc.name} not installed")
    except Exception as exc:  # noqa: BLE001 - any failure becomes an n/a row, not a crash
        traceback.print_exc()
        return JobResult(error=f"{type(exc).__name__}: {exc}"[:300])
    return JobResult(measurement.samples, measurement.notes, measurement.extras)


def main(argv: list[str]) -> int:
    spec = JobSpec.from_json(json.loads(argv[0]))
    result = measure(spec)
    Path(spec.result_path).write_text(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
