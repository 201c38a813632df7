"""The validation hold-out is large enough for the calibration promise (issue 12 item 4)."""
import json
from pathlib import Path

from calibration.thresholds import min_calibration_size
from trainer.data import Sample, Split
from trainer.run_setup import MAX_VALIDATION_SHARE, hold_out_validation, validation_count
from trainer.runs import run_samples


def split_of(n_good: int) -> Split:
    good = tuple(Sample(path=Path(f"/d/good/{i:05d}.png"), label=0, defect_type="good") for i in range(n_good))
    bad = (Sample(path=Path("/d/bad/0.png"), label=1, defect_type="crack"),)
    return Split(train=good + bad, test=(Sample(path=Path("/d/bad/1.png"), label=1, defect_type="crack"),),
                 k=1, seed=0, rule="test")


def test_the_default_hold_out_of_elpv_is_enough_for_a_one_percent_promise():
    # ELPV, k = 10, seed 0: 1131 good training cells; 10% would be 113 (5% at best, as order statistic 113 of 113)
    assert validation_count(1131, 0.1) == 300 >= min_calibration_size(0.01, 0.95)
    fit, val = hold_out_validation(split_of(1131), 0.1, seed=0)
    assert len(val) == 300 and len(fit) == 831 and not {s.path for s in fit} & {s.path for s in val}
    # the same images for every model with that seed (the hybrid fits its fusion on them)
    assert hold_out_validation(split_of(1131), 0.1, seed=0)[1] == val


def test_small_sets_keep_most_images_for_training_and_large_fractions_are_kept():
    assert validation_count(40, 0.25) == 12 == int(MAX_VALIDATION_SHARE * 40)
    assert validation_count(5000, 0.1) == 500          # the fraction, where it gives more
    assert validation_count(10, 0.0) == 0              # 0 still means none
    assert validation_count(3, 0.1) == 0               # nothing to spare


def test_a_run_written_before_the_rule_keeps_its_own_hold_out(tmp_path):
    """split.json lists the validation images: an old run (10% hold-out, no validation_rule) reads back as written."""
    from tests.synthetic import make_folders_tree
    from trainer.data import load_dataset, open_set_split
    data = make_folders_tree(tmp_path / "parts", seed=3)
    dataset = load_dataset(data)
    split = open_set_split(dataset, 1, 0)
    doc = split.to_json(dataset.root)
    old_val = [s.path.relative_to(dataset.root).as_posix() for s in split.train_good[:1]]
    doc.update(validation_good=old_val, data_root=str(dataset.root), data_fingerprint=dataset.fingerprint(),
               layout=dataset.layout, skipped={})
    (tmp_path / "split.json").write_text(json.dumps(doc))
    val, again, _ = run_samples(json.loads((tmp_path / "split.json").read_text()))
    assert [s.path.relative_to(dataset.root).as_posix() for s in val] == old_val and again.counts() == split.counts()
