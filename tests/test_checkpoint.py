"""Safe loading (weights_only) and atomic saving of checkpoints."""

import os

import pytest
import torch
from torch import nn

from hapnet_d2.checkpoint import (
    CheckpointError,
    HAPNetCheckpointer,
    UnsafeCheckpointError,
    safe_torch_load,
)


class NeedsCodeToUnpickle:
    """A class that a weights_only unpickler must refuse to construct."""

    def __init__(self, value):
        self.value = value


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_safe_load_round_trip(tmp_path):
    path = str(tmp_path / "ok.pth")
    torch.save({"model": _model(0).state_dict(), "iteration": 7}, path)
    loaded = safe_torch_load(path)
    assert loaded["iteration"] == 7
    assert _same_state(loaded["model"], _model(0).state_dict())


def test_missing_file_names_the_file(tmp_path):
    path = str(tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        safe_torch_load(path)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_corrupt_file_names_the_file(tmp_path, content):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt.pth.*corrupt"):
        safe_torch_load(str(path))


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    full = tmp_path / "full.pth"
    torch.save({"w": torch.randn(100, 100)}, str(full))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        safe_torch_load(str(truncated))


def test_pickle_needing_code_execution_is_refused_then_accepted_with_opt_in(tmp_path):
    path = str(tmp_path / "unsafe.pth")
    torch.save({"model": {}, "extra": NeedsCodeToUnpickle(3)}, path)
    with pytest.raises(UnsafeCheckpointError) as error:
        safe_torch_load(path)
    message = str(error.value)
    assert "unsafe.pth" in message
    assert "NeedsCodeToUnpickle" in message
    assert "MODEL.ALLOW_UNSAFE_CHECKPOINTS True" in message
    assert "--allow-unsafe-checkpoint" in message
    assert safe_torch_load(path, allow_unsafe=True)["extra"].value == 3


def test_checkpointer_refuses_unsafe_files_unless_allowed(tmp_path):
    path = str(tmp_path / "unsafe.pth")
    torch.save({"model": _model(1).state_dict(), "extra": NeedsCodeToUnpickle(1)}, path)
    model = _model(0)
    with pytest.raises(UnsafeCheckpointError, match="ALLOW_UNSAFE_CHECKPOINTS"):
        HAPNetCheckpointer(model).load(path)
    HAPNetCheckpointer(model, allow_unsafe=True).load(path)
    assert _same_state(model.state_dict(), _model(1).state_dict())


def test_checkpointer_refuses_plain_pickles_unless_allowed(tmp_path):
    path = tmp_path / "zoo_model.pkl"
    path.write_bytes(b"\x80\x04N.")  # pickle of None; never unpickled without the opt-in
    with pytest.raises(UnsafeCheckpointError, match="zoo_model.pkl.*--allow-unsafe-checkpoint"):
        HAPNetCheckpointer(_model(0)).load(str(path))


def test_save_then_resume(tmp_path):
    model = _model(3)
    checkpointer = HAPNetCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"

    restored = _model(4)
    extra = HAPNetCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    assert _same_state(restored.state_dict(), model.state_dict())


def _crash_after_partial_write(monkeypatch):
    """Make torch.save write some bytes and then die, as a kill during a save would."""

    def partial_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial checkpoint bytes")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", partial_save)


def test_crash_during_save_keeps_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model = _model(5)
    checkpointer = HAPNetCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    checkpointer.save("model_final", iteration=19)
    final_before = (tmp_path / "model_final.pth").read_bytes()

    _crash_after_partial_write(monkeypatch)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000029", iteration=29)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=39)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000009.pth",
        "model_final.pth",
    ], "no partial or temporary file is left behind"
    assert (tmp_path / "model_final.pth").read_bytes() == final_before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    restored = _model(6)
    extra = HAPNetCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 19
    assert _same_state(restored.state_dict(), _model(5).state_dict())


def test_crash_while_tagging_keeps_previous_tag(tmp_path, monkeypatch):
    checkpointer = HAPNetCheckpointer(_model(7), str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.tag_last_checkpoint("model_0000019.pth")
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
