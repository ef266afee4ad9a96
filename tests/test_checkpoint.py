import sys

import pytest
import torch

from surgseg.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from surgseg.errors import CheckpointError
from tests._full_disk import on_a_full_disk


def test_round_trip_is_self_contained(make_checkpoint):
    path = make_checkpoint("parts")
    model, meta = load_checkpoint(path)
    assert meta.task == "parts"
    assert meta.class_names == ["background", "shaft", "wrist", "clasper"]
    assert meta.input_size == (64, 80)
    assert meta.model["depth"] == 18 and meta.model["output_stride"] == 8
    assert meta.provenance == {"made_by": "tests"}
    assert not model.training
    torch.manual_seed(0)
    fresh = meta.build()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_train_state_is_kept_for_resume(make_checkpoint, tmp_path):
    model, meta = load_checkpoint(make_checkpoint())
    path = tmp_path / "last.pt"
    save_checkpoint(path, model=model, meta=meta, train_state={"epoch": 3, "rng": torch.arange(4)})
    state = read_checkpoint(path)["train_state"]
    assert state["epoch"] == 3 and torch.equal(state["rng"], torch.arange(4))


def test_wrong_task_is_refused(make_checkpoint):
    path = make_checkpoint("binary")
    with pytest.raises(CheckpointError, match="trained for task 'binary', not 'parts'"):
        load_checkpoint(path, task="parts")


def test_files_that_are_not_our_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a surgseg checkpoint"):
        load_checkpoint(plain)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable checkpoint"):
        load_checkpoint(junk)


def test_weights_that_do_not_fit_the_stored_config(make_checkpoint):
    path = make_checkpoint("binary")
    payload = read_checkpoint(path)
    payload["meta"]["model"]["depth"] = 34
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(path)


def test_a_full_disk_is_an_oserror_naming_the_file(make_checkpoint, tmp_path):
    """Not torch's RuntimeError from inside its zip writer: what ``cli_errors`` makes one line of,
    and no partial file left behind."""
    source, out = make_checkpoint(), tmp_path / "full"
    code = ("import errno, os, sys\n"
            "from surgseg.checkpoint import load_checkpoint, save_checkpoint\n"
            "model, meta = load_checkpoint(sys.argv[1])\n"
            "try:\n"
            "    save_checkpoint(sys.argv[2], model=model, meta=meta)\n"
            "except OSError as exc:\n"
            "    print(errno.errorcode[exc.errno], exc.filename)\n"
            "print(sorted(os.listdir(os.path.dirname(sys.argv[2]))))\n")  # fmt: skip
    proc = on_a_full_disk(out, sys.executable, "-c", code, str(source), str(out / "last.pt"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"ENOSPC {out / 'last.pt'}", "['filler']"]
