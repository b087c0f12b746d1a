"""The README's tour, run as written (``scripts/tour.sh`` takes its blocks from README.md)
against the setup ``make run`` makes: demo ingest, ``privtext ensure-admin``, ``privtext
serve``. Any 4xx or 5xx on the way fails the script, so the README cannot drift from the
service again.

Cost: the default test runs on the session's service (``served_demo``: a 20,000-message
slice of the demo, 8 s to set up, shared with the client's tests) and makes the tour's ~40
calls: 6 s (both measured on a loaded 2-core machine, 2026-12-02). The slow test runs it on the
whole demo (about 40 s of ingest) and checks what the README says the answers show."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.served import Served, make_run

ROOT = Path(__file__).resolve().parents[2]


def _run_tour(served: Served, blocks: str = "") -> list[dict[str, Any]]:
    # A reader's fresh shell at the repository root: no PRIVTEXT_* settings of the test run
    # (`make test` exports PRIVTEXT_DATA_DIR, which sent the tour's CLI to another database).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVTEXT_")}
    env |= {"PRIVTEXT_TOUR_URL": served.address, "PRIVTEXT_TOUR_BLOCKS": blocks}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tour.sh")],
        cwd=served.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _queries(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in out if "query_hash" in o]


def _check_tour(out: list[dict[str, Any]]) -> None:
    readme = (ROOT / "README.md").read_text()
    script = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tour.sh"), "--print"], capture_output=True, text=True
    ).stdout
    answers = _queries(out)
    assert len(answers) == script.count("\nQ '")  # every query of the tour was answered
    assert answers[-1]["replay"] is True and answers[-1]["cost"]["epsilon"] == 0
    assert answers[-2]["dry_run"] is True
    # GET /v1/budget by alice, after her questions (bob's budget is 5, then 10, then 12)
    views = [o for o in out if "committed" in o and o["budget"] == {"epsilon": 20.0, "delta": 1e-6}]
    assert len(views) == 2 and views[0] == views[1]
    alice = views[0]
    # the README says the tour "spends about 14" of alice's 20
    assert "the tour below spends about 14 of it" in readme
    assert 13.0 <= alice["spent_epsilon"] <= 15.0
    assert alice["committed"] == len([a for a in answers if not a["replay"] and not a["dry_run"]])
    caps = [o for o in out if "capped" in o]
    assert [c["capped"] for c in caps] == [False, True]
    assert caps[0]["remaining_epsilon"] is None


@pytest.mark.gunicorn
def test_the_readme_tour_runs_as_written(served_demo: Served) -> None:
    _check_tour(_run_tour(served_demo))


@pytest.mark.slow
@pytest.mark.gunicorn
def test_the_readme_tour_shows_what_it_says_on_the_whole_demo(tmp_path: Path) -> None:
    """The claims in the tour's comments, each with room for the noise: the counts' bounds are
    at least 7 Laplace scales from the values the README quotes, the shares' several times
    their noise (one run's interval for "sorry" was [0.46, 0.90] around 0.63: a conservative
    box, wider than the noise); the rarest wit rating (86 senders against a threshold of
    about 69) may miss the threshold now and then, so only the common ones are required."""
    with make_run(tmp_path, demo_limit=None) as served:
        out = _run_tour(served)
    _check_tour(out)
    q = _queries(out)  # in the README's order
    assert 47_000 <= q[0]["result"]["value"] <= 48_500  # count, cap 100 (scale 100)
    assert 1_300 <= q[1]["result"]["value"] <= 1_330  # senders (scale 1; 1,315 in truth)
    assert q[2]["max_messages_per_sender"]["chosen"] == "auto"
    assert q[2]["result"]["value"] > 100_000
    months = {g["key"]: g["value"] for g in q[6]["groups"]}
    assert months["2018-04-01"] > 8_000 and months["2018-05-01"] > 14_000
    assert all(abs(months[m]) < 1_000 for m in ("2018-06-01", "2018-07-01"))
    witty = {g["key"] for g in q[7]["groups"]}
    assert witty >= {"1", "5", "7", "8", "10"} and witty <= {str(r) for r in range(1, 11)}
    terms = [t["term"] for t in q[8]["result"]["terms"]]
    assert "like" in terms[:3]
    sorry = q[11]["result"]["shares"]["negative"]["value"]
    overall = q[10]["result"]["shares"]["negative"]["value"]
    assert sorry > 0.3 and overall < 0.2


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.gunicorn
def test_the_readme_embeddings_block_runs_as_written(tmp_path: Path) -> None:
    """The tour, then the embeddings block (``<!-- tour: embeddings -->``): a synchronous
    call, an embedding job run by ``privtext worker``, its result as .npy (about a minute:
    the model loads in a gunicorn worker and in the job worker)."""
    import numpy as np

    with make_run(tmp_path, worker=True) as served:
        out = _run_tour(served, blocks="embeddings")
    _check_tour(out)
    vectors = np.load(tmp_path / "vectors.npy")
    assert vectors.shape == (200, 384) and np.all(np.isfinite(vectors))
