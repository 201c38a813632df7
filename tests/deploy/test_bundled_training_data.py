"""The bundled model's training data leaves the demo cells out, and says so when it cannot."""
import numpy as np

from deploy.bundled_training_data import main
from tests.synthetic import write_image


def _elpv(root, names_grades):
    for name, grade in names_grades:
        write_image(root / "images" / name, np.zeros((8, 8), np.uint8))
    (root / "labels.csv").write_text("".join(f"images/{n} {g} mono\n" for n, g in names_grades))
    return root


def test_demo_cells_are_left_out(tmp_path, capsys):
    full = _elpv(tmp_path / "elpv", [(f"cell{i:04d}.png", "1.0" if i % 3 == 0 else "0.0") for i in range(1, 11)])
    demo = _elpv(tmp_path / "demo", [("cell0002.png", "0.0"), ("cell0003.png", "1.0")])
    out = tmp_path / "out"
    assert main(["--elpv", str(full), "--exclude", str(demo), "--out", str(out)]) == 0
    rows = (out / "labels.csv").read_text().split("\n")
    kept = {r.split()[0] for r in rows if r}
    assert len(kept) == 8 and "images/cell0002.png" not in kept and "images/cell0003.png" not in kept
    assert all((out / k).is_file() for k in kept)  # links resolve to the originals
    assert main(["--elpv", str(full), "--exclude", str(demo), "--out", str(out)]) == 0  # idempotent
    other = _elpv(tmp_path / "other", [("cell9999.png", "0.0")])
    assert main(["--elpv", str(full), "--exclude", str(other), "--out", str(tmp_path / "o2")]) == 2
    assert main(["--elpv", str(tmp_path / "missing"), "--exclude", str(demo), "--out", str(tmp_path / "o3")]) == 2
    assert "needs the full ELPV data" in capsys.readouterr().err
