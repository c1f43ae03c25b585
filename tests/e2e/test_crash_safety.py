"""kill -9 in the middle of refreshes (DESIGN §5 writes, §6 steps 5-7).

Each round starts `qlam-hpc refresh --force` against an IdP with a random latency
fault and SIGKILLs it at a random moment: before the request, while the IdP rotates
the refresh token, while the new store file is written. After every kill the store
must parse as QLAM Core's file, `status` and `token` must work, and a login whose
rotated refresh token died with the process must show up as exit 41 with the file
intact (then we log in again). Every snapshot is finally loaded by QLAM Core itself.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time

from idp import TEMP_FILE_RE, fp, hpc_factory, idp_factory, qlam_core_load, redact  # noqa: F401  (fixtures)

ROUNDS = int(os.environ.get("QLAM_CRASH_ROUNDS", "40"))
SEED = int(os.environ.get("QLAM_CRASH_SEED", str(int(time.time()))))


def test_kill9_during_refresh(idp_factory, hpc_factory, tmp_path):
    rng = random.Random(SEED)
    idp = idp_factory("--access-ttl", "900", "--refresh-ttl", "3600", "--device-interval", "1")
    hpc = hpc_factory(idp)
    hpc.login(idp)
    hpc.check_store()
    lock_ino = None

    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    outcomes = {"intact": 0, "spent": 0}
    killed: set[int] = set()
    # What a process killed mid-write may leave (fsutil::write_atomic, documented there and
    # swept after an hour): `.<file>.tmp.<pid>.<8 hex>`, only for pids we killed.
    stray_temps = 0
    t_end = time.monotonic() + 600  # the whole test is bounded

    for i in range(ROUNDS):
        assert time.monotonic() < t_end, f"crash rounds took too long (round {i}, seed {SEED})"
        ctx = f"round {i} seed {SEED}"
        latency = rng.choice([0, rng.randint(5, 100), rng.randint(100, 400)])
        idp.clear_faults()
        if latency:
            idp.fault({"latency_ms": latency}, times=1)
        p = hpc.popen("refresh", "--force", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Anywhere from exec to after the write: typical debug-build runtime plus latency.
        time.sleep(rng.uniform(0, 0.06 + latency / 1000 * 1.3))
        p.kill()
        p.wait(timeout=10)
        killed.add(p.pid)
        idp.clear_faults()

        # 1. The file is QLAM Core's format, whole, right after the kill.
        assert hpc.store.is_file(), f"{ctx}: store file gone"
        doc = hpc.check_store()
        shutil.copy2(hpc.store, snaps / f"{i:03d}.json")
        assert doc["extra"]["token_data"]["access_token"], ctx
        if hpc.lock.exists():
            ino = hpc.lock.stat().st_ino
            assert lock_ino in (None, ino), f"{ctx}: lock file was replaced"
            lock_ino = ino

        # 2. status and token work without the IdP (the access token is long-lived).
        st = hpc.run("status", timeout=30)
        assert st.returncode == 0, f"{ctx}: status exited {st.returncode}: {redact(st.stderr)}"
        tk = hpc.run("token", timeout=30)
        assert tk.returncode == 0, f"{ctx}: token exited {tk.returncode}: {redact(tk.stderr)}"
        assert fp(tk.stdout) == hpc.access_fp(), f"{ctx}: token differs from the store"

        # 3. The refresh token: still good, or spent by the killed process.
        rf = hpc.run("refresh", "--force", timeout=60)
        if rf.returncode == 0:
            outcomes["intact"] += 1
        else:
            assert rf.returncode == 41, f"{ctx}: refresh exited {rf.returncode}: {redact(rf.stderr)}"
            outcomes["spent"] += 1
            assert hpc.store.is_file(), f"{ctx}: store deleted on invalid_grant"
            hpc.check_store()
            # The access token is still valid (900 s): `token` keeps serving it.
            tk = hpc.run("token", timeout=30)
            assert tk.returncode == 0, f"{ctx}: token with a spent login exited {tk.returncode}"
            hpc.login(idp)
        doc = hpc.check_store()
        others = []
        for name in hpc.leftovers():
            m = TEMP_FILE_RE.match(name)
            if m and int(m.group("pid")) in killed:
                continue
            others.append(name)
        assert not others, f"{ctx}: unexpected files in the credentials dir: {others}"
        stray_temps = len(hpc.leftovers())
        assert stray_temps <= len(killed)

    print(f"crash rounds={ROUNDS} seed={SEED} outcomes={outcomes} stray_temp_files={stray_temps}")
    assert outcomes["intact"] + outcomes["spent"] == ROUNDS

    # 4. QLAM Core reads every post-kill snapshot and the final store.
    files = sorted(snaps.iterdir()) + [hpc.store]
    results = qlam_core_load(files)
    bad = [(f.name, r) for f, r in zip(files, results) if r != "ok"]
    assert len(results) == len(files) and not bad, f"QLAM Core could not load: {bad[:5]}"
    assert hpc.lock.is_file() and (hpc.lock.stat().st_mode & 0o777) == 0o600, "lock file mode"
