"""The fuzz test: seeded mutations of the tiny GGUFs, mmprojs, images, chat templates and API arguments,
each run in a worker subprocess; it passes when no case crashes, hangs, or ends in an error outside
the documented types (ValueError, FastVEdgeError), and every error leaves the shared model working.

CI runs FASTV_EDGE_FUZZ_ITERATIONS cases (default 200, about 30 s on one busy core); a local
campaign runs more, with another seed: see tests/fuzz_campaign.py.
"""

from __future__ import annotations

import os

import pytest
from fuzz_campaign import campaign, make_bases

pytestmark = pytest.mark.native
ITERATIONS = int(os.environ.get("FASTV_EDGE_FUZZ_ITERATIONS", "200"))
SEED = int(os.environ.get("FASTV_EDGE_FUZZ_SEED", "0"))


def test_nothing_crashes_hangs_or_raises_undocumented(tiny_dir, tmp_path):
    report = campaign(make_bases(tiny_dir), ITERATIONS, SEED, tmp_path)
    print(report.summary())
    lines = [f"case {f['id']} ({f['kind']}): {f['what']} -> {f['outcome']}" for f in report.failures]
    assert not report.failures, report.summary() + "\n" + "\n".join(lines)
    assert report.cases == ITERATIONS
