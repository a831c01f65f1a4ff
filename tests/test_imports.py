"""What a sampling stage imports: torch and the math core, not Lightning nor torchvision (each costs
seconds per process on a small CPU; the train and evaluate stages are the ones that need them)."""

import subprocess
import sys


def test_sampling_modules_import_neither_lightning_nor_torchvision():
    code = (
        "import sys; import difflab.sampling, difflab.training, difflab.solvers, difflab.distributed, "
        "difflab.metrics.solver_error; "
        "heavy = ('lightning', 'torchvision', 'torch_fidelity', 'wandb'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
