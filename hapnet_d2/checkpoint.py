"""Safe checkpoint loading and crash-safe (atomic) checkpoint saving.

Checkpoints are read with ``torch.load(..., weights_only=True)``: a file whose unpickling would
execute code (arbitrary classes or functions) is refused unless the user opts in with
``MODEL.ALLOW_UNSAFE_CHECKPOINTS True`` (configs) or ``--allow-unsafe-checkpoint`` (command
lines). Checkpoints are written to a temporary file in the target directory, flushed to disk and
renamed over the destination, so a process killed during a save never leaves a truncated file
behind, neither as a checkpoint nor as the ``last_checkpoint`` tag.
"""

import logging
import os
import pickle
import re
import tempfile
from typing import Any, Callable, Dict, IO

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "safe_torch_load",
    "atomic_write",
    "HAPNetCheckpointer",
]

logger = logging.getLogger(__name__)

UNSAFE_OPT_IN = (
    "MODEL.ALLOW_UNSAFE_CHECKPOINTS True (config) or --allow-unsafe-checkpoint (command line)"
)
# torch names the offending class/function in its weights_only error message
_UNSAFE_GLOBAL_PATTERN = re.compile(r"Unsupported global: GLOBAL (\S+)")


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (corrupt, truncated or not a checkpoint)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file needs pickle code execution and the user has not opted in."""


def safe_torch_load(path: str, allow_unsafe: bool = False) -> Any:
    """
    Load a file written by ``torch.save`` onto the CPU, without executing pickled code.

    Args:
        path: local path of the checkpoint.
        allow_unsafe: if True, fall back to a full (code-executing) unpickling for files that
            need it. Only for files from a trusted source.

    Returns:
        The deserialised object (usually a dict of tensors or of nested state dicts).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file needs code execution and ``allow_unsafe`` is False.
        CheckpointError: the file is corrupt, truncated or not a PyTorch checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {path} does not exist or is not a file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe_global = _UNSAFE_GLOBAL_PATTERN.search(str(e))
        if unsafe_global is None:
            raise CheckpointError(
                f"Checkpoint file {path} is corrupt or not a PyTorch checkpoint "
                f"(unpickling failed: {_first_line(e)})."
            ) from None
        if not allow_unsafe:
            raise UnsafeCheckpointError(
                f"Refusing to load checkpoint {path}: it needs pickle code execution "
                f"(it references {unsafe_global.group(1)}), which can run arbitrary code. "
                f"If you trust this file, opt in with {UNSAFE_OPT_IN}."
            ) from None
        logger.warning(f"Loading {path} with full unpickling (unsafe checkpoints allowed).")
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(
            f"Checkpoint file {path} is corrupt, truncated or not a PyTorch checkpoint "
            f"({_first_line(e)})."
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """
    Write a file so that readers see either its previous content or the complete new one.

    The data goes to a temporary file in the same directory, is flushed and fsync'ed, and the
    temporary file is then renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    On any error the temporary file is removed and ``path`` is left untouched.

    Args:
        path: destination file.
        write: called with the open binary temporary file; writes the whole content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Persist a rename in ``directory`` (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class HAPNetCheckpointer(DetectionCheckpointer):
    """
    A :class:`DetectionCheckpointer` that saves atomically and loads through
    :func:`safe_torch_load`.

    Files in Detectron2's pickle formats (``.pkl`` model zoo files, ``.pyth`` pycls files) can
    only be unpickled with code execution, so they are read only when ``allow_unsafe`` is True.
    """

    def __init__(self, model, save_dir: str = "", *, allow_unsafe: bool = False, **checkpointables):
        """
        Args:
            model (nn.Module): model whose state is saved and loaded.
            save_dir: directory of the checkpoints and of the ``last_checkpoint`` tag.
            allow_unsafe: allow loading files that need pickle code execution.
            checkpointables: other objects with ``state_dict``/``load_state_dict`` to save, as
                in :class:`fvcore.common.checkpoint.Checkpointer`.
        """
        super().__init__(model, save_dir, **checkpointables)
        self.allow_unsafe = allow_unsafe

    def save(self, name: str, **kwargs: Any) -> None:
        """
        Save ``{name}.pth`` (model, checkpointables and ``kwargs``) and tag it as the last
        checkpoint, both atomically.

        Args:
            name: file name without extension.
            kwargs: extra data to save (e.g. ``iteration``).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically write the name of the latest checkpoint to ``save_dir/last_checkpoint``."""
        tag_file = os.path.join(self.save_dir, "last_checkpoint")
        content = last_filename_basename.encode("utf-8")
        atomic_write(tag_file, lambda f: f.write(content))

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith((".pkl", ".pyth")) and not self.allow_unsafe:
            raise UnsafeCheckpointError(
                f"Refusing to load checkpoint {filename}: {os.path.splitext(filename)[1]} files "
                f"are plain pickles and need code execution to load. If you trust this file, "
                f"opt in with {UNSAFE_OPT_IN}."
            )
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> Dict[str, Any]:
        return safe_torch_load(f, allow_unsafe=self.allow_unsafe)
