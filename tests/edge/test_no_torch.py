"""The line machine has no torch: edge/ must import without it (DESIGN.md)."""
import subprocess
import sys


def test_edge_imports_no_torch_trainer_calibration_or_deploy():
    code = ("import sys, pkgutil, importlib, edge, edge.stages, edge.backends\n"
            "for pkg in (edge, edge.stages, edge.backends):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'trainer', 'calibration', 'deploy')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
