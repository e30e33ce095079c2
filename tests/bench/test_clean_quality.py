"""bench.clean_quality: a small labeled set (10% of each category) gives a complete report that meets the targets."""

import json
import sys

from tests.conftest import ROOT, run


def test_small_run_reports_every_category_and_meets_the_targets(tmp_path):
    out = tmp_path / "clean_quality.json"
    run([sys.executable, "-m", "bench.clean_quality", "--scale", "0.1", "--out", str(out)], cwd=ROOT)
    report = json.loads(out.read_text())
    cats = report["categories"]
    assert set(cats) == {"clean", "markup", "pii", "exact_duplicate", "near_duplicate", "non_english",
                         "repeated_lines", "boilerplate"}  # fmt: skip
    assert report["documents"] == sum(c["documents"] for c in cats.values()) >= 30
    for name, c in cats.items():
        assert ("kept_share" if c["expected"] == "keep" else "recall") in c, name
        assert sum(c["reasons"].values()) == c["dropped"]
    assert cats["exact_duplicate"]["reasons"] == {"exact_dedup/exact_duplicate": cats["exact_duplicate"]["dropped"]}
    assert set(cats["near_duplicate"]["reasons"]) == {"minhash/near_duplicate"}
    assert set(cats["non_english"]["reasons"]) == {"language/not_english"}
    assert cats["markup"]["repaired_share"] == 1.0 and cats["pii"]["masked_share"] == 1.0
    assert report["meets_targets"] is True
    assert report["command"] == f"python -m bench.clean_quality --scale 0.1 --out {out}"
