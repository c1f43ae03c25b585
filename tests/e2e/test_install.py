"""scripts/install.sh puts the binary, job scripts, hooks, man page, completions and an Lmod
modulefile under a prefix, and what it installs works."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("QLAM_HPC_BIN", REPO / "target/debug/qlam-hpc"))


def test_install_into_a_prefix(tmp_path):
    prefix = tmp_path / "prefix"
    r = subprocess.run([str(REPO / "scripts/install.sh"), "--prefix", str(prefix), "--bin", str(BIN)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    installed = prefix / "bin/qlam-hpc"
    assert os.access(installed, os.X_OK)
    version = subprocess.run([str(installed), "--version"], capture_output=True, text=True).stdout.split()[1]
    share = prefix / "share/qlam-hpc"
    for rel in ["qlam-hpc-job.sh", "qlam-hpc-job.csh", "slurm/prolog.sh", "slurm/task-prolog.sh",
                "slurm/epilog.sh", "slurm/cli_filter.lua", "pbs/qlam_hpc_hook.py", "pbs/torque/prologue",
                "pbs/torque/epilogue"]:
        assert (share / rel).is_file(), rel
    assert os.access(share / "slurm/prolog.sh", os.X_OK)
    man = (prefix / "share/man/man1/qlam-hpc.1").read_text()
    assert ".TH" in man and "qlam\\-hpc" in man
    assert "logout" in (prefix / "share/bash-completion/completions/qlam-hpc").read_text()
    assert (prefix / "share/zsh/site-functions/_qlam-hpc").stat().st_size > 0
    assert (prefix / "share/fish/vendor_completions.d/qlam-hpc.fish").stat().st_size > 0
    module = (prefix / f"share/modulefiles/qlam-hpc/{version}.lua").read_text()
    assert f'local prefix = "{prefix}"' in module
    assert "@PREFIX@" not in module and "@VERSION@" not in module
    assert 'setenv("QLAM_HPC_BIN"' in module


def test_install_without_a_binary_says_how_to_build_one(tmp_path):
    r = subprocess.run([str(REPO / "scripts/install.sh"), "--prefix", str(tmp_path), "--bin",
                        str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "cargo build --release" in r.stderr


def test_unknown_argument_is_a_usage_error(tmp_path):
    r = subprocess.run([str(REPO / "scripts/install.sh"), "--nope"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "--nope" in r.stderr
