"""The per-template table of ft's answer masks against TRL's training templates (docs/masks.md).

    .venv/bin/python bench/mask_referee_table.py

Runs the same comparison as tests/test_masks_vs_trl.py and prints, per installed TRL template pair,
each record's outcome: agree (token for token), policy (equal once ft's named policies are applied),
refuse-dropped (ft refuses a record whose piece the template does not render), both refuse.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_masks_vs_trl as referee  # noqa: E402

root = Path(tempfile.mkdtemp())
names = list(referee.records())
print("| template | " + " | ".join(names) + " |")
print("| --- " * (len(names) + 1) + "|")
for name in referee.template_pairs():
    if name in referee.NOT_CAUSAL:
        print(f"| {name} | " + " | ".join(["n/a"] * len(names)) + f" |  <!-- {referee.NOT_CAUSAL[name]} -->")
        continue
    outcomes = referee.compare_with_referee(name, *referee.referee_tokenizers_for(name, root))
    print(f"| {name} | " + " | ".join(outcomes.get(n, "?") for n in names) + " |")
