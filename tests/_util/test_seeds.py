"""The one seed mixer, its named streams and the one hold-out (adam_ext._util.seeds)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from adam_ext._util import seeds
from adam_ext._util.seeds import STREAMS, holdout, mix, numpy_rng, stream_seed, torch_generator

PACKAGE = Path(seeds.__file__).resolve().parents[1]


def test_mix_is_splitmix64_order_sensitive_and_63_bit():
    assert mix(1, 2, 3) == mix(1, 2, 3) != mix(1, 3, 2)
    assert all(0 <= mix(s, 5) < 2**63 for s in (0, 1, 2**64 - 1, 2**70, -1))
    # splitmix64's first output for state 0 (its reference value 0xE220A8397B1DCDAF), halved to 63 bits
    assert mix(0, 0) == 0xE220A8397B1DCDAF >> 1


def test_streams_are_named_distinct_and_typos_are_refused():
    values = {stream_seed(7, name) for name in STREAMS}
    assert len(values) == len(STREAMS)  # no two streams of one seed share draws
    assert stream_seed(7, "views", 1, 2) != stream_seed(7, "views", 2, 1)
    with pytest.raises(ValueError, match="stream must be one of"):
        stream_seed(7, "view")
    a, b = numpy_rng(3, "few_shot").random(4), numpy_rng(3, "few_shot").random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, numpy_rng(3, "finetune_val").random(4))
    assert torch_generator(3, "views").initial_seed() == stream_seed(3, "views")


def test_holdout_keeps_groups_together_and_both_sides_non_empty(seed):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 30, 200).astype(str)
    held = holdout(groups, 0.1, seed)
    assert held.shape == (200,) and held.dtype == bool
    for g in set(groups):
        assert len(set(held[groups == g])) == 1  # a patient is on one side only
    assert round(0.1 * 200) <= held.sum() < round(0.1 * 200) + max(np.unique(groups, return_counts=True)[1])
    order = rng.permutation(200)
    assert np.array_equal(holdout(groups[order], 0.1, seed), held[order])  # independent of the input order
    assert not np.array_equal(holdout(groups, 0.1, seed + 1), held)
    assert not np.array_equal(holdout(groups, 0.1, seed, stream="finetune_val"), held)
    # tiny sets: at least one group out and one in, whatever the rounding
    assert holdout(["a", "b"], 0.1, seed).sum() == 1 and holdout(["a", "b"], 0.9, seed).sum() == 1
    assert holdout(["a", "a", "a"], 0.5, seed).sum() in (0, 3)  # one group cannot be split
    assert holdout(["a", "b"], 0.0, seed).sum() == 0 and holdout(["a", "b"], 1.0, seed).sum() == 2
    assert holdout([], 0.5, seed).shape == (0,)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, "0.1", True, None])
def test_holdout_refuses_a_bad_fraction(fraction):
    with pytest.raises(ValueError, match="hold-out fraction must be in"):
        holdout(["a", "b"], fraction, 0)


def test_no_other_generator_or_split_in_the_package():
    """One mixer: no module but adam_ext/_util/seeds.py makes a NumPy generator, seeds one from a literal
    stream, or draws a split with randperm (shuffle-BN's permutation is a draw of torch's global generator)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "seeds.py" and path.parent.name == "_util":
            continue
        text = path.read_text()
        for pattern in (
            r"default_rng\(",
            r"SeedSequence",
            r"np\.random\.(seed|permutation|choice|rand)",
            r"manual_seed\(\s*\d",
        ):
            offenders += [f"{path.relative_to(PACKAGE)}: {pattern}" for _ in re.finditer(pattern, text)]
        offenders += [
            f"{path.relative_to(PACKAGE)}: randperm"
            for line in text.splitlines()
            if "randperm(" in line and "idx_shuffle" not in line and "generator=" not in line
        ]
    assert not offenders, offenders
