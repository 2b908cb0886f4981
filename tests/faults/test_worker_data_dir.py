"""REFSTREAM_DATA_DIR unusable: no permission, or the disk full under a running worker.

The worker stops (exit non-zero) with a last line that names the folder and the fix, not a
traceback; nothing is corrupted: once the folder is fixed, a restart recovers and the
outputs are still exactly the pure Engine's, each once.

Tests run as root, where chmod 000 does not bite, so "no permission" is a read-only tmpfs
mounted over the folder (EROFS, what a read-only volume gives) and a file where the folder
should be; "disk full" is a small tmpfs filled up while the worker runs (ENOSPC). Both need
`mount`, which this machine's test environment allows (root in the container)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from projections.demo import Programme, programme, worked_example
from tests.faults.conftest import Reliability
from tests.pipeline.stack import Proc, Stack, until

pytestmark = pytest.mark.kafka



@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points this test made; unmounted (lazily, so a dead worker's files don't block it)."""
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def mount_tmpfs(mounts: list[Path], point: Path, *options: str) -> None:
    point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(point)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"mount failed (the test needs it): {done.stderr}"
    mounts.append(point)


def umount(mounts: list[Path], point: Path) -> None:
    subprocess.run(["umount", "-l", str(point)], check=True)
    mounts.remove(point)


async def stopped_with_a_clear_message(stack: Stack, proc: Proc, data_dir: Path) -> str:
    async def exited() -> bool:
        return not proc.alive()

    await until(f"{proc.name} to stop", exited, 120, every_s=0.25)
    proc.stopped = True
    assert proc.popen.returncode != 0, proc.tail()
    lines = [ln for ln in proc.log.read_text(errors="replace").splitlines() if ln.strip()]
    last = lines[-1]
    assert str(data_dir) in last and "REFSTREAM_DATA_DIR" in last and "Fix:" in last, proc.tail()
    assert "Traceback" not in "\n".join(lines[-3:]), proc.tail()
    return last


@pytest.mark.parametrize("fault", ["read-only folder", "a file where the folder should be"])
async def test_no_permission_on_the_data_dir_stops_the_worker_clearly_and_corrupts_nothing(
    stack: Stack, mounts: list[Path], fault: str, reliability: Reliability
) -> None:
    stack = stack
    bodies = worked_example()
    await stack.start_ingest()
    worker = await stack.start_worker()
    await stack.post(bodies[:4])
    await stack.assert_outputs_match_engine()
    stack.stop(worker)

    data_dir = worker.data_dir
    assert data_dir is not None
    aside = data_dir.with_name(data_dir.name + ".aside")
    if fault == "read-only folder":
        mount_tmpfs(mounts, data_dir, "ro", "size=1m")
    else:
        data_dir.rename(aside)
        data_dir.write_text("not a folder")
    await stack.post(bodies[4:])  # ingest takes them while the worker cannot run
    worker = await stack.restart(worker, ready=False)
    last = await stopped_with_a_clear_message(stack, worker, data_dir)
    code = worker.popen.returncode

    if fault == "read-only folder":
        umount(mounts, data_dir)
    else:
        data_dir.unlink()
        aside.rename(data_dir)
    worker = await stack.restart(worker)
    got = await stack.assert_outputs_match_engine()
    reliability.record(
        f"test_no_permission_on_the_data_dir[{fault}]",
        what=f"REFSTREAM_DATA_DIR unusable ({fault}) when the worker starts; fixed, restarted",
        sent=len(bodies), acknowledged=len(stack.posted), lost=0, duplicated=0, kills=0,
        notes=f"worker exited {code} with: "
              f"`{last.split('(')[0].strip()[:60]}…`; after the fix {len(got)} commands, each once",
    )


async def test_a_full_disk_under_the_running_worker_stops_it_clearly_and_corrupts_nothing(
    stack: Stack, mounts: list[Path], reliability: Reliability
) -> None:
    stack = stack
    bodies = worked_example() + list(programme(Programme(referrers=6, customers=40, seed=83)))
    half = len(bodies) // 2
    await stack.start_ingest()
    data_dir = stack.tmp / "data-worker-1"
    mount_tmpfs(mounts, data_dir, "size=64m")
    worker = await stack.start_worker()
    await stack.post(bodies[:half])
    await stack.assert_outputs_match_engine()

    # the disk fills up (another tenant's file), then more webhooks arrive
    filler = data_dir / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        except OSError:
            pass
    await stack.post(bodies[half:])
    last = await stopped_with_a_clear_message(stack, worker, data_dir)

    filler.unlink(missing_ok=True)  # the operator frees space
    worker = await stack.restart(worker)
    got = await stack.assert_outputs_match_engine()
    reliability.record(
        "test_a_full_disk_under_the_running_worker",
        what="the data dir's disk (64 MB tmpfs) filled up under a running worker; space freed, restarted",
        sent=len(bodies), acknowledged=len(stack.posted), lost=0, duplicated=0, kills=0,
        notes=f"worker stopped with: `{last.split('(')[0].strip()[:60]}…`; after the fix "
              f"{len(got)} commands, each once",
    )
