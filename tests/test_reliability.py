"""Reliability: crash and resume, many workers (SQLite and PostgreSQL), divergence, determinism."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from grids import SLOW_GRID, TUNED_GRID

from bench import drain
from bench.__main__ import main
from bench.grid import load_grid
from bench.runner import Context, run_cell

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("LORAFIT_TEST_PG_URL")
TIMING = {
    "train_s",
    "wall_s",
    "images_per_s",
    "peak_mem_mb",
    "infer_unmerged_rel",
    "infer_merged_rel",
    "seconds_to_99",
}


def _env() -> dict:
    # Short heartbeats so a crashed worker's trial is noticed within seconds.
    return {
        **os.environ,
        "LORAFIT_HEARTBEAT_S": "1",
        "LORAFIT_GRACE_S": "4",
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
    }


def _cmd(grid: Path, runs: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench",
        "run",
        "grid",
        "--grid",
        str(grid),
        "--runs-dir",
        str(runs),
        "--no-progress",
        *extra,
    ]


def _start(cmd) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _kill_after_first_cell(proc: subprocess.Popen, storage: str | None = None, study: str = "") -> str:
    """SIGKILL the worker right after it reports its first finished cell. With `storage`, once the
    study shows a cell running (the worker's next), however long a loaded machine takes to claim it."""
    seen = []
    deadline = time.time() + 120
    for line in proc.stdout:
        seen.append(line)
        if " complete " in line or time.time() > deadline:
            break
    if storage is None:
        time.sleep(0.2)
    else:
        for _ in range(1200):  # a hang guard (60 s), not a timing assertion
            if "RUNNING" in sum(_per_cell_states(_study(storage, study)).values(), []):
                break
            time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "".join(seen)


def _study(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def _per_cell_states(study: optuna.Study) -> dict[str, list[str]]:
    states: dict[str, list[str]] = {}
    for t in study.get_trials():
        if "cell_id" in t.user_attrs and not t.user_attrs.get("skipped"):
            states.setdefault(t.user_attrs["cell_id"], []).append(t.state.name)
    return states


def _no_partial_files(runs: Path) -> None:
    leftovers = [
        p
        for p in runs.rglob("*")
        if p.name.endswith(".tmp") or (p.is_file() and p.name.startswith(".") and p.suffix != ".lock")
    ]
    assert not leftovers, leftovers
    for path in (runs / "records").rglob("*.json"):
        json.loads(path.read_text())  # every record parses


def _metrics_by_cell(runs: Path, study: str) -> dict[str, dict]:
    out = {}
    for path in sorted((runs / "records" / study).glob("*.json")):
        rec = json.loads(path.read_text())
        out[rec["run"]["id"]] = {k: v for k, v in rec["metrics"].items() if k not in TIMING}
    return out


@pytest.mark.slow
def test_kill_9_mid_cell_then_resume_completes_the_grid(tmp_path):
    grid = tmp_path / "crash.toml"
    grid.write_text(SLOW_GRID)
    runs, clean = tmp_path / "runs", tmp_path / "clean"
    first = _start(_cmd(grid, runs))
    storage = f"sqlite:///{runs / 'optuna.db'}"
    _kill_after_first_cell(first, storage, "crash-smoke")
    states = _per_cell_states(_study(storage, "crash-smoke"))
    assert "RUNNING" in sum(states.values(), []), states  # it died inside a cell
    resumed = subprocess.run(
        _cmd(grid, runs), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    states = _per_cell_states(_study(storage, "crash-smoke"))
    assert len(states) == 5
    for cell, cell_states in states.items():
        assert cell_states.count("COMPLETE") == 1, (cell, cell_states)
    assert sum(s.count("FAIL") for s in states.values()) == 1  # the killed trial, retried once
    assert len(list((runs / "records" / "crash-smoke").glob("*.json"))) == 5
    _no_partial_files(runs)
    # Same numbers as a run that was never interrupted.
    clean_run = subprocess.run(
        _cmd(grid, clean), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert clean_run.returncode == 0
    assert _metrics_by_cell(runs, "crash-smoke") == _metrics_by_cell(clean, "crash-smoke")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "finished", "resume"), [(TUNED_GRID, "  tune ", False), (SLOW_GRID, " complete ", True)]
)
def test_drain_stops_a_worker_between_two_runs(tmp_path, text, finished, resume, capsys):
    """--drain: a worker in the tuning stage (or among the cells) finishes the run it is in and
    exits; nothing is left running or failed, and a worker started afterwards is not drained."""
    grid = tmp_path / "drained.toml"
    grid.write_text(text)
    runs = tmp_path / "runs"
    drain_cmd = ["run", "grid", "--grid", str(grid), "--runs-dir", str(runs), "--drain"]
    assert main(drain_cmd) == 2  # nothing of this grid in the storage yet
    assert "holds no study of grid drained-smoke" in capsys.readouterr().err
    worker = _start(_cmd(grid, runs))
    seen, deadline = [], time.time() + 120
    for line in worker.stdout:
        seen.append(line)
        if finished in line:
            break
        assert time.time() < deadline, "no run finished in time"
    assert main(drain_cmd) == 0
    assert "drain requested; " in capsys.readouterr().out  # 0 or 1 runs in progress: a race
    out = "".join(seen) + worker.communicate(timeout=300)[0]
    assert worker.returncode == drain.STATUS, out
    assert "stopped on request (--drain) between two runs; the same command resumes" in out
    storage = f"sqlite:///{runs / 'optuna.db'}"
    studies = [_study(storage, s.study_name) for s in optuna.get_all_study_summaries(storage)]
    states = [t.state.name for st in studies for t in st.get_trials()]
    assert "RUNNING" not in states and "FAIL" not in states, states
    records = list((runs / "records").rglob("*.json"))
    assert len(records) == out.count(finished)  # every finished run recorded, the one in progress too
    assert not (runs / "records" / "drained-smoke").exists() if not resume else len(records) < 5
    _no_partial_files(runs)
    if resume:  # a worker started after the request goes on, and finishes the grid
        again = subprocess.run(
            _cmd(grid, runs), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(list((runs / "records" / "drained-smoke").glob("*.json"))) == 5


def test_a_drain_reaches_only_the_workers_started_before_it(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="g-smoke-tune-head-0", storage=storage)  # a grid in its tuning stage
    before = drain.watcher(storage, "g-smoke")
    before()  # nobody asked yet
    drain.request(storage, "g-smoke")
    after = drain.watcher(storage, "g-smoke")
    with pytest.raises(drain.Drained):
        before()
    after()  # started after the request: goes on
    with pytest.raises(drain.Drained):  # the count read before a worker resolved its data
        drain.watcher(storage, "g-smoke", start=0)()
    drain.request(storage, "g-smoke")
    with pytest.raises(drain.Drained):
        after()


def _two_workers(grid: Path, runs: Path, *extra: str, kill_one: bool = False) -> list[str]:
    procs = [_start(_cmd(grid, runs, *extra)) for _ in range(2)]
    outs = []
    if kill_one:
        outs.append(_kill_after_first_cell(procs[0]))
        procs = procs[1:]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        outs.append(out)
    return outs


@pytest.mark.slow
def test_two_workers_share_one_grid_on_one_machine(tmp_path):
    grid = tmp_path / "pair.toml"
    grid.write_text(SLOW_GRID)
    runs = tmp_path / "runs"
    outs = _two_workers(grid, runs)
    text = "".join(outs)
    assert text.count(" complete ") == 5  # 5 configurations x 1 seed, each run once
    assert all(" complete " in out for out in outs), "both workers took cells"
    # the shared backbone, pretrained (or copied from the user's backbone cache) once
    assert text.count("pretraining backbone") + text.count("from the shared backbone cache") == 1
    states = _per_cell_states(_study(f"sqlite:///{runs / 'optuna.db'}", "pair-smoke"))
    assert len(states) == 5 and all(s == ["COMPLETE"] for s in states.values()), states
    assert len(list((runs / "records" / "pair-smoke").glob("*.json"))) == 5
    _no_partial_files(runs)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(
    not PG_URL and not os.environ.get("LORAFIT_REQUIRE_PG"),
    reason="set LORAFIT_TEST_PG_URL to a PostgreSQL server (.ci/run does)",
)
def test_postgres_workers_with_a_crash(tmp_path):
    assert PG_URL, "LORAFIT_REQUIRE_PG is set but LORAFIT_TEST_PG_URL is not"
    name = f"pg{uuid.uuid4().hex[:8]}"
    grid = tmp_path / f"{name}.toml"
    grid.write_text(SLOW_GRID)
    study_name = f"{name}-smoke"
    try:
        # Two machines' worth of workers on one storage; one dies mid-cell, the other finishes,
        # including the dead worker's cell once its heartbeat goes stale.
        outs = _two_workers(grid, tmp_path / "runs", "--storage", PG_URL, kill_one=True)
        assert "5 done" in outs[-1]
        states = _per_cell_states(_study(PG_URL, study_name))
        assert len(states) == 5
        for cell, cell_states in states.items():
            assert cell_states.count("COMPLETE") == 1, (cell, cell_states)
    finally:
        try:
            optuna.delete_study(study_name=study_name, storage=PG_URL)
        except KeyError:
            pass


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # study.ask, as a worker claims
def test_a_worker_killed_before_its_first_heartbeat_does_not_hold_its_cell(tmp_path, tiny_grid, monkeypatch):
    # Optuna never counts a running trial without a heartbeat as stale; a worker killed between
    # claiming a cell and its heartbeat thread's first write left that cell pending forever.
    monkeypatch.setenv("LORAFIT_HEARTBEAT_S", "1")
    monkeypatch.setenv("LORAFIT_GRACE_S", "2")
    from bench import driver

    claimed = []

    def claim_and_die(study, cells, ctx, show_progress=True):
        driver.enqueue_missing(study, cells)
        claimed.append(study.ask())  # pops the oldest waiting cell: RUNNING, no heartbeat ever
        return {}

    argv = ["run", "grid", "--grid", str(tiny_grid()), "--runs-dir", str(tmp_path), "--no-progress"]
    with monkeypatch.context() as m:
        m.setattr(driver, "run_grid", claim_and_die)
        assert main(argv) == 0
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    headless = _study(storage, "tiny-smoke").trials[claimed[0].number]
    assert headless.state.name == "RUNNING" and "cell_id" in headless.user_attrs
    assert main(argv) == 0  # used to wait forever
    states = _per_cell_states(_study(storage, "tiny-smoke"))
    assert states[headless.user_attrs["cell_id"]] == ["FAIL", "COMPLETE"], states
    assert all(s.count("COMPLETE") == 1 for s in states.values()), states


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_headless_trial_is_failed_though_each_poll_loads_its_study_anew(tmp_path, monkeypatch):
    # The tuning stage reloads its studies on every pass; the watch must survive that.
    monkeypatch.setenv("LORAFIT_HEARTBEAT_S", "1")
    monkeypatch.setenv("LORAFIT_GRACE_S", "2")
    from bench.storage import fail_stale_trials, open_storage

    store = open_storage(None, tmp_path)
    optuna.create_study(study_name="s", storage=store).ask()  # claimed, never a heartbeat
    deadline, polls = time.time() + 30, []
    while optuna.load_study(study_name="s", storage=store).trials[0].state.name == "RUNNING":
        assert time.time() < deadline, "the headless trial was never failed"
        polls.append(optuna.load_study(study_name="s", storage=store))  # kept alive: no id reuse
        fail_stale_trials(polls[-1])
        time.sleep(0.5)
    assert optuna.load_study(study_name="s", storage=store).trials[0].state.name == "FAIL"


def test_divergence_is_recorded_and_the_grid_goes_on(tmp_path, tiny_grid, capsys):
    grid = tiny_grid(
        SLOW_GRID.split('[[cell]]\nname = "lora-')[0]
        + """
[[cell]]
name = "boom"
method = "lora"
placement = "proj"
rank = 2
policy = "lora"
lr = 1e30
""",
        name="boom",
    )
    runs = tmp_path / "runs"
    argv = ["run", "grid", "--grid", str(grid), "--runs-dir", str(runs), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "diverged" in out and "2 done" in out
    rec = json.loads(next((runs / "records" / "boom-smoke").glob("boom-*.json")).read_text())
    assert rec["run"]["status"] == "diverged" and "non-finite loss" in rec["run"]["error"]
    states = _per_cell_states(_study(f"sqlite:///{runs / 'optuna.db'}", "boom-smoke"))
    assert sorted(sum(states.values(), [])) == ["COMPLETE", "FAIL"]
    assert main(argv) == 0  # recorded, so not retried
    assert len(_study(f"sqlite:///{runs / 'optuna.db'}", "boom-smoke").get_trials()) == 2


def test_same_cell_same_seed_identical_metrics(tmp_path, tiny_grid):
    cfg = next(c for c in load_grid(tiny_grid(), "smoke") if c.name == "lora-conv3")
    a = run_cell(cfg, Context(tmp_path / "a"), "det")
    b = run_cell(cfg, Context(tmp_path / "b"), "det")

    def strip(m: dict) -> dict:
        return {k: v for k, v in m.items() if k not in TIMING}

    assert strip(a["metrics"]) == strip(b["metrics"])
    assert a["analysis"] == b["analysis"]


def test_reproduce_reruns_the_dirty_records_and_names_the_one_that_differs(tmp_path, tiny_grid, capsys):
    runs = tmp_path / "runs"
    cells = {c.name: c for c in load_grid(tiny_grid(), "smoke")}
    for name in ("head", "lora-proj", "lora-conv3"):
        run_cell(cells[name], Context(runs), "det")
    paths = {
        json.loads(p.read_text())["config"]["name"]: p for p in (runs / "records" / "det").glob("*.json")
    }
    for name in paths:  # head and lora-proj made from modified code, lora-conv3 from a commit
        record = json.loads(paths[name].read_text())
        record["run"]["git_sha"] = "0123abc" + ("" if name == "lora-conv3" else "-dirty")
        if name == "lora-proj":  # and what a different code would have given
            record["curve"][-1]["val_acc"] += 0.01
        paths[name].write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["reproduce", "--runs-dir", str(runs), "--dirty"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("reproducing 2 records at ")
    verdicts = {line.split()[0]: line.rsplit(": ", 1)[1] for line in out if line.startswith("  ")}
    assert verdicts == {cells["head"].cell_id: "same", cells["lora-proj"].cell_id: "DIFFERENT"}
    assert out[-2].startswith("1 of 2 reproduce bit for bit")
    assert out[-1] == "rerun - original test accuracy (same environment; 1 rerun): +0.00 points"
    summary = pd.read_csv(runs / "reproduced" / "summary.csv")
    assert dict(zip(summary["id"], summary["bit_for_bit"])) == {
        cells["head"].cell_id: True,
        cells["lora-proj"].cell_id: False,
    }
    assert len(list((runs / "records").rglob("*.json"))) == 3  # the reruns stay out of the records
    # a later batch adds its verdicts to the earlier ones
    assert main(["reproduce", cells["head"].cell_id, "--runs-dir", str(runs)]) == 0
    assert len(pd.read_csv(runs / "reproduced" / "summary.csv")) == 2


def test_reproduce_says_whether_an_environment_change_moves_accuracy_systematically():
    from bench.reproduce import rerun_effects

    def row(old: float, new: float, differences: str) -> dict:
        same = old == new and not differences
        return {"bit_for_bit": same, "env_differences": differences, "test_acc": old, "test_acc_rerun": new}

    fp32 = "cpu Intel -> AMD; bf16 True -> False; peft None -> 0.21.2"
    rows = [row(0.80, 0.81, fp32), row(0.80, 0.79, fp32), row(0.70, 0.72, "bf16 True -> False")]
    rows += [row(0.5, 0.5, ""), row(0.6, 0.6, "threads 1 -> 2")]  # bit for bit / unchanged accuracy
    assert rerun_effects(rows) == [
        "rerun - original test accuracy (bf16 True -> False; 1 rerun): +2.00 points",
        "rerun - original test accuracy (cpu Intel -> AMD; bf16 True -> False; 2 reruns): +0.00 points"
        " (95% CI -12.71 to +12.71, paired t p 1.000; single reruns -1.00 to +1.00, sd 1.41)",
        "rerun - original test accuracy (threads 1 -> 2; 1 rerun): +0.00 points",
    ]


def test_reproduce_outside_a_git_checkout_says_so(tmp_path, tiny_grid, capsys, monkeypatch):
    """An installed copy (or a tarball) has no commit: the record made there and the rerun say so."""
    from bench import reproduce

    runs = tmp_path / "runs"
    head = next(c for c in load_grid(tiny_grid(), "smoke") if c.name == "head")
    run_cell(head, Context(runs), "det")
    (path,) = (runs / "records" / "det").glob("*.json")
    record = json.loads(path.read_text())
    record["run"]["git_sha"] = None
    path.write_text(json.dumps(record))
    monkeypatch.setattr(reproduce, "git_sha", lambda: None)
    capsys.readouterr()
    assert main(["reproduce", head.cell_id, "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reproducing 1 record at an unknown commit\nnote: this code is not a git checkout")
    assert f"{head.cell_id} made at an unknown commit: same" in " ".join(out.split())


def test_reproduce_with_nothing_to_rerun_is_a_one_line_error(tmp_path, capsys):
    assert main(["reproduce", "--runs-dir", str(tmp_path), "--dirty"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("here_bf16", [False, True])
def test_a_worker_says_when_it_trains_on_another_path_than_earlier_runs(monkeypatch, here_bf16):
    import torch

    from bench import provenance

    monkeypatch.setattr(provenance, "bf16_supported", lambda device: here_bf16)

    def run(bf16: bool, backbone: str = "seed-cnn") -> dict:
        return {"config": {"backbone": backbone}, "env": {"device": "cpu", "bf16": bf16}}

    earlier = [run(True), run(True), run(False), run(False, "residual-cnn")]
    note = provenance.path_note(earlier, {"seed-cnn"}, torch.device("cpu"))
    assert note.startswith(
        f"note: this machine trains as cpu {'with' if here_bf16 else 'without'} native bf16"
    )
    others = "1 of the 3" if here_bf16 else "2 of the 3"
    assert f"{others} earlier runs of seed-cnn here took another (2 cpu bf16, 1 cpu fp32)" in note
    same = [run(here_bf16), run(not here_bf16, "residual-cnn")]
    assert provenance.path_note(same, {"seed-cnn"}, torch.device("cpu")) is None
    assert provenance.path_note([], {"seed-cnn"}, torch.device("cpu")) is None
