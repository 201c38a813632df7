"""Per-line calibration sets: a run's held-out good cells and test defective cells, one folder per cell type."""
import numpy as np

from deploy.heldout_by_type import main
from tests.synthetic import write_image
from trainer.data import load_dataset, open_set_split
from trainer.run_setup import hold_out_validation, write_run_header


def test_held_out_cells_split_by_type_and_nothing_trained_on(tmp_path, capsys):
    data = tmp_path / "elpv"
    rows = []
    for i in range(40):
        name, grade, kind = f"cell{i:04d}.png", "1.0" if i % 4 == 0 else "0.0", "mono" if i % 2 else "poly"
        write_image(data / "images" / name, np.full((8, 8), i, np.uint8))
        rows.append(f"images/{name} {grade} {kind}\n")
    (data / "labels.csv").write_text("".join(rows))
    types = {r.split()[0]: r.split()[2] for r in rows}
    dataset = load_dataset(data)
    split = open_set_split(dataset, 2, 0, 0.25)
    fit, val = hold_out_validation(split, 0.2, 0)
    run = tmp_path / "run"
    run.mkdir()
    write_run_header(run, "patch_head", {}, dataset, split, val)
    out = tmp_path / "by_type"
    assert main(["--run", str(run), "--out", str(out)]) == 0
    written = {(p.parent.parent.name, p.parent.name, p.name) for p in out.glob("*/*/*")}
    expected = {(types[f"images/{s.path.name}"], "good", s.path.name) for s in val}
    expected |= {(types[f"images/{s.path.name}"], "defective", s.path.name) for s in split.test if s.label == 1}
    assert written == expected and len(expected) > 4
    trained = {s.path.name for s in fit} | {s.path.name for s in split.train if s.label == 1}
    assert not trained & {name for _, _, name in written}
    assert all(p.resolve().is_file() for p in out.glob("*/*/*"))
    assert "held-out good" in capsys.readouterr().out
    assert main(["--run", str(run), "--out", str(out)]) == 2  # never mixes with an earlier run's cells
    assert "not empty" in capsys.readouterr().err
