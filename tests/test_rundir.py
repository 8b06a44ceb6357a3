"""The run directory guards itself: resume rule, lock, records (findings 1–3).

Fast tests use a real Orbax checkpoint of a tiny state (the rule reads only
which steps exist) and `rundir.claim` directly; the slow ones train.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from subprocesses import ROOT

from dmljax.runtime import checkpoint as checkpoint_lib
from dmljax.runtime import export
from dmljax.runtime import reporting
from dmljax.runtime import rundir
from dmljax.runtime import runlock
from dmljax.runtime import train
from experiments.configs import methods


def _config(**changes):
  config = methods.get_config("method=margin_dw,dataset=digits,smoke")
  for name, value in changes.items():
    section, field = name.split("__")
    config[section][field] = value
  return config


def _snapshot(workdir):
  """{relative path: bytes} of every file under `workdir`."""
  files = {}
  for folder, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, workdir)] = f.read()
  return files


@pytest.fixture
def run(tmp_path):
  """A workdir that holds a run of `_config()` with a checkpoint at step 4."""
  workdir = str(tmp_path / "run")
  with rundir.claim(workdir, _config()):
    saver = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    saver.save(4, {"x": np.zeros(2, np.float32)}, {"next_index": 4})
    saver.close()
  return workdir


@pytest.mark.parametrize(
  "change, field",
  [
    ({"data__batch_size": 15}, "data.batch_size 20 → 15"),
    ({"model__embedding_dim": 32}, "model.embedding_dim 16 → 32"),
    ({"train__num_steps": 2}, "train.num_steps 4 → 2 (a run is extended"),
    ({"data__num_workers": 2}, "data.num_workers 0 → 2"),
    ({"sampler__name": "semihard"}, "sampler.name"),
    ({"loss__margin": 0.3}, "loss.margin 0.2 → 0.3"),
    ({"optim__learning_rate": 0.01}, "optim.learning_rate"),
    ({"beta__beta0": 1.0}, "beta.beta0"),
    ({"parallel__mining": "local"}, "parallel.mining"),
  ],
)
def test_a_contradicting_resume_is_refused_and_writes_nothing(
  run, change, field
):
  before = _snapshot(run)
  with pytest.raises(rundir.RunDirError, match="new --workdir") as error:
    with rundir.claim(run, _config(**change)):
      pytest.fail("the claim should have been refused")
  assert field in str(error.value) and "checkpoint at step 4" in str(
    error.value
  )
  assert _snapshot(run) == before


def test_seed_and_every_refused_field_are_named_together(run):
  config = _config(model__embedding_dim=32)
  config.seed = 3
  with pytest.raises(rundir.RunDirError) as error:
    with rundir.claim(run, config):
      pass
  assert "model.embedding_dim 16 → 32" in str(error.value)
  assert "seed 0 → 3" in str(error.value)


def _edit_recorded(workdir, edit):
  path = os.path.join(workdir, "config.json")
  recorded = json.loads(open(path).read())
  edit(recorded)
  with open(path, "w") as f:
    json.dump(recorded, f)


def test_a_field_the_run_predates_is_refused_saying_so(run):
  _edit_recorded(run, lambda c: c["loss"].pop("npair_scale"))
  with pytest.raises(rundir.RunDirError) as error:
    with rundir.claim(run, _config()):
      pass
  assert "loss.npair_scale (absent) → 1.0 (added to dmljax after" in str(
    error.value
  )


def test_dsp_fields_matter_only_to_a_dsp_run(run):
  _edit_recorded(run, lambda c: c["dsp"].pop("features"))  # A field added,
  with rundir.claim(run, _config(dsp__pool_classes=3)):  # one changed: fine.
    pass
  _edit_recorded(run, lambda c: c["sampler"].update(name="dsp"))
  dsp = _config(dsp__pool_classes=4)  # The record now says 3.
  dsp.sampler.name = "dsp"
  with pytest.raises(rundir.RunDirError, match="dsp.pool_classes"):
    with rundir.claim(run, dsp):
      pass


def test_free_fields_and_a_longer_run_are_allowed_and_recorded(run):
  config = _config(
    train__num_steps=8,
    train__log_every=2,
    train__eval_every=4,
    ckpt__every=4,
    ckpt__max_to_keep=5,
    eval__batch_size=7,
    parallel__num_devices=1,
  )
  with rundir.claim(run, config) as step:
    assert step == 4
  starts = rundir.read_starts(run)
  assert [s["step"] for s in starts] == [0, 4]
  assert starts[1]["changes"]["train.num_steps"] == [4, 8]
  assert starts[1]["changes"]["eval.batch_size"] == [500, 7]
  recorded = json.loads(open(os.path.join(run, "config.json")).read())
  assert recorded["train"]["num_steps"] == 8


def test_a_workdir_without_checkpoint_takes_any_config(tmp_path):
  workdir = str(tmp_path / "run")
  with rundir.claim(workdir, _config()):
    pass  # Started, never checkpointed.
  with rundir.claim(workdir, _config(model__embedding_dim=32)) as step:
    assert step == 0
  recorded = json.loads(open(os.path.join(workdir, "config.json")).read())
  assert recorded["model"]["embedding_dim"] == 32


def test_a_fresh_start_that_fails_leaves_no_workdir(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match="bad data"):
    with rundir.claim(str(workdir), _config()):
      raise ValueError("bad data")
  assert not workdir.exists()


def test_a_run_from_before_the_rule_uses_its_summary(run):
  os.remove(os.path.join(run, "config.json"))
  with open(os.path.join(run, "summary.json"), "w") as f:
    json.dump({"config": _config().to_dict(), "final": {}}, f, default=str)
  with pytest.raises(rundir.RunDirError, match="data.batch_size"):
    with rundir.claim(run, _config(data__batch_size=15)):
      pass


def test_a_run_with_no_record_resumes_with_a_warning(run, capsys):
  os.remove(os.path.join(run, "config.json"))
  with rundir.claim(run, _config(data__batch_size=15)) as step:
    assert step == 4
  assert "no record of its config" in capsys.readouterr().err


# ------------------------------------------------------------------ lock


def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, runlock.LOCK_FILE), "w") as f:
    json.dump(holder, f)


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)"]
  )
  try:
    _write_lock(
      workdir,
      pid=holder.pid,
      host=socket.gethostname(),
      started="now",
      process_start=runlock._process_start(holder.pid),
    )
    with pytest.raises(rundir.RunDirError, match=f"in use by pid {holder.pid}"):
      with rundir.claim(workdir, _config()):
        pass
  finally:
    holder.kill()
    holder.wait()
  assert os.path.exists(os.path.join(workdir, runlock.LOCK_FILE))


def test_the_lock_is_held_during_the_run_and_released_after(tmp_path):
  workdir = str(tmp_path / "run")
  second = (
    "import sys; from dmljax.runtime import runlock; "
    "runlock.acquire_lock(sys.argv[1])"
  )
  with rundir.claim(workdir, _config()):
    holder = json.load(open(os.path.join(workdir, runlock.LOCK_FILE)))
    assert holder["pid"] == os.getpid()
    result = subprocess.run(
      [sys.executable, "-c", second, workdir],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert result.returncode != 0
    assert f"in use by pid {os.getpid()}" in result.stderr
  assert not os.path.exists(os.path.join(workdir, runlock.LOCK_FILE))


def test_a_stale_lock_is_removed_with_a_warning(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _write_lock(workdir, pid=dead.pid, host=socket.gethostname(), started="x")
  with rundir.claim(workdir, _config()):
    pass
  assert "removed the stale lock" in capsys.readouterr().err


def test_a_reused_pid_is_stale(tmp_path):
  workdir = str(tmp_path / "run")
  _write_lock(  # Our parent's pid, with another start time: a reused pid.
    workdir,
    pid=os.getppid(),
    host=socket.gethostname(),
    started="x",
    process_start="1",
  )
  with rundir.claim(workdir, _config()):
    pass


def test_a_lock_from_another_host_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  _write_lock(workdir, pid=1, host="elsewhere", started="x")
  with pytest.raises(rundir.RunDirError, match="If that process is gone"):
    with rundir.claim(workdir, _config()):
      pass


def test_a_torn_lock_is_stale_once_old(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  lock = os.path.join(workdir, runlock.LOCK_FILE)
  with open(lock, "w") as f:
    f.write('{"pi')
  with pytest.raises(rundir.RunDirError, match="creating it now"):
    runlock.acquire_lock(workdir)
  old = time.time() - 3600
  os.utime(lock, (old, old))
  runlock.release_lock(runlock.acquire_lock(workdir))


# ------------------------------------------------------- metrics.jsonl


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
  log = reporting.MetricsLog(str(tmp_path))
  log.write(1, "train", {"loss": 1.0})
  log.write(2, "train", {"loss": 0.5})
  with open(tmp_path / rundir.METRICS_FILE, "a") as f:
    f.write('{"step": 3, "kind": "tr')  # A crash in the middle of a write.
  assert [r["step"] for r in reporting.read_metrics(str(tmp_path))] == [1, 2]
  assert "torn last line 3" in capsys.readouterr().err
  reporting.MetricsLog(str(tmp_path), resume_step=2)  # The resume rewrites.
  text = (tmp_path / rundir.METRICS_FILE).read_text()
  assert text.count("\n") == 2 and '"kind": "tr"' not in text


def test_a_broken_metrics_line_before_the_last_is_named(tmp_path):
  (tmp_path / rundir.METRICS_FILE).write_text(
    '{"step": 1, "kind": "train"}\nnot json\n{"step": 2, "kind": "train"}\n'
  )
  with pytest.raises(ValueError, match="line 2, is not a metrics record"):
    reporting.read_metrics(str(tmp_path))


# ------------------------------------------------------------ end to end


def _driver(workdir, *args):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.digits",
      "--config=margin_dw:smoke",
      f"--workdir={workdir}",
      *args,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.slow
def test_a_refused_resume_keeps_the_run_and_its_exports(tmp_path):
  workdir = tmp_path / "run"
  result = _driver(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  model, variables, step, config = export.load_model(str(workdir))
  out = str(tmp_path / "e.npz")
  export.write_embeddings(
    out,
    np.ones((2, 16), np.float32),
    ["a", "b"],
    ["x", "y"],
    {"workdir": str(workdir), "step": step, "config": config.to_dict()},
    variables=variables,
  )
  before = _snapshot(workdir)
  result = _driver(workdir, "--config.model.embedding_dim=32")
  assert result.returncode == 2
  assert "Traceback" not in result.stderr and "ImportError" not in result.stderr
  assert "model.embedding_dim 16 → 32" in result.stderr
  assert _snapshot(workdir) == before  # Nothing written, nothing lost.
  export.load_model(str(workdir))  # Still exports,
  _, _, _, meta = export.read_embeddings(out)
  export.load_export_model(out, meta)  # and the export still loads.


@pytest.mark.slow
def test_an_extended_run_is_recorded_in_the_summary(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_config(), workdir)
  train.train_and_evaluate(_config(train__num_steps=6), workdir)
  summary = json.loads(open(os.path.join(workdir, "summary.json")).read())
  assert summary["config"]["train"]["num_steps"] == 6
  assert summary["starts"][-1]["changes"] == {"train.num_steps": [4, 6]}
  steps = [
    r["step"] for r in reporting.read_metrics(workdir) if r["kind"] == "train"
  ]
  assert steps == [1, 2, 3, 4, 5, 6]
