"""A real 2-process CPU DDP run (gloo) through the CLI, on a tiny generic-CSV dataset."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import yaml

from core import load_package


def test_two_process_cpu_ddp_training(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["case_id,label,age,sex,note"]
    for i in range(120):
        y = int(rng.integers(0, 2))
        rows.append(f"c{i},{['neg', 'pos'][y]},{40 + 25 * y + rng.normal(0, 6):.1f},{['female', 'male'][i % 2]},"
                    f"{['stable spot', 'growing bleeding spot'][y]}")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "name": "ddp-smoke", "variant": "concat", "modalities": ["note", "metadata"], "out": str(tmp_path / "pkg"),
        "data": {"path": str(tmp_path / "cases.csv")},
        "encoders": {"note": {"type": "text", "source": "minilm", "max_length": 16, "frozen": True,
                              "random_init": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                              "intermediate_size": 32}},
                     "metadata": {"hidden": 16, "out_dim": 16, "token_dim": 8}},
        "fused_dim": 16, "head": {"hidden": 16, "blocks": 1, "dropout": 0.1},
        "train": {"epochs": 3, "batch_size": 16, "mc_samples": 4},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "FUSIONLENS_CACHE": str(tmp_path / "cache"), "PL_DISABLE_FORK": "1"}
    r = subprocess.run([sys.executable, "-m", "core", "train", "--config", str(tmp_path / "cfg.yaml"), "--devices", "2"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("package written to") == 1  # only rank 0 writes the package
    metrics = json.loads((tmp_path / "pkg" / "metrics.json").read_text())
    assert metrics["training"]["world_size"] == 2
    pkg = load_package(tmp_path / "pkg")
    assert pkg.labels == ["neg", "pos"]
