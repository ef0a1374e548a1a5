"""benchmarks/peers.py: the authors' code beside ours. The side-by-side run needs their checkouts
(UNLEARNABLE_PEERS=DIR holding anti-dreambooth/ and mist-v2/); the patch check needs nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_a_checkout_the_patches_do_not_match_is_refused_by_name(tmp_path):
    from peers import prepare_peer

    checkout = tmp_path / "Anti-DreamBooth"
    (checkout / "attacks").mkdir(parents=True)
    (checkout / "attacks" / "aspl.py").write_text("import datasets\nimport torch\n")  # an older or newer file: the CUDA line moved
    with pytest.raises(SystemExit, match=r"Anti-DreamBooth/attacks/aspl.py: expected 'datasets.utils.logging.set_verbosity_warning\(\)'"):
        prepare_peer("anti-dreambooth", checkout, tmp_path / "work")


@pytest.mark.skipif(not os.environ.get("UNLEARNABLE_PEERS"), reason="set UNLEARNABLE_PEERS to a folder with anti-dreambooth/ and mist-v2/ checkouts")
def test_the_authors_code_and_ours_run_side_by_side(tmp_path):
    peers = Path(os.environ["UNLEARNABLE_PEERS"])
    out = tmp_path / "peers.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--anti-dreambooth", str(peers / "anti-dreambooth"), "--mist",
               str(peers / "mist-v2"), "--images", "2", "--rounds", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [(r["who"], r["method"]) for r in data["runs"]] == [("Anti-DreamBooth (authors' code)", "aspl"), ("mist-v2 (authors' code)", "mist"),
                                                               ("unlearnable", "aspl"), ("unlearnable", "mist"), ("unlearnable", "auto")]  # fmt: skip
    assert all(0 < r["linf"] <= 8 and r["seconds_whole_process"] > 0 for r in data["runs"])  # within the budget, and moved
    assert all(r["commit"] for r in data["runs"][:2])
