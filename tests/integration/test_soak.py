"""One seed of the chaos soak (tests/integration/soak.py; `python -m tests.integration.soak` runs more)."""

from __future__ import annotations

from .soak import Soak


def test_a_changing_estate_under_faults_and_kills_never_duplicates_nor_wrongly_retires_and_converges(tmp_path):
    log = Soak(seed=12, work=tmp_path).soak(rounds=10, first_killed_after=8)
    assert len(log) == 10 and log[0].endswith("killed")  # the first run, which creates everything, killed
    # what this seed's rounds do, whatever their runs' timing
    writers = {"ire" if "; ire," in line else "table" for line in log}
    assert writers == {"ire", "table"}
    assert any("no faults" in line for line in log) and any("rate_429" in line for line in log)
    assert any("datacenter unhosted" in line for line in log)
