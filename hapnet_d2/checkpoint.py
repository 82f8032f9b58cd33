"""Safe checkpoint loading and crash-safe (atomic) checkpoint saving.

Checkpoints are read with ``torch.load(..., weights_only=True)``: a file whose unpickling would
execute code (arbitrary classes or functions) is refused unless the user opts in with
``MODEL.ALLOW_UNSAFE_CHECKPOINTS True`` (configs) or ``--allow-unsafe-checkpoint`` (command
lines). Checkpoints are written to a temporary file in the target directory, flushed to disk and
renamed over the destination, so a process killed during a save never leaves a truncated file
behind, neither as a checkpoint nor as the ``last_checkpoint`` tag.

For inference (demo, ``--eval-only``) a checkpoint must fit the model:
:meth:`HAPNetCheckpointer.for_inference` refuses a file that leaves more than
``MODEL.WEIGHTS_MAX_UNLOADED_FRACTION`` of the model's parameter values unloaded, unless
``MODEL.ALLOW_PARTIAL_WEIGHTS True``. Training keeps Detectron2's partial loading (e.g. a
file for another number of classes), which logs the keys it could not load.
"""

import logging
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections import defaultdict
from typing import Any, Callable, Dict, IO, Mapping, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "safe_torch_load",
    "atomic_write",
    "HAPNetCheckpointer",
]

logger = logging.getLogger(__name__)

UNSAFE_OPT_IN = (
    "MODEL.ALLOW_UNSAFE_CHECKPOINTS True (config) or --allow-unsafe-checkpoint (command line)"
)
PARTIAL_OPT_IN = "MODEL.ALLOW_PARTIAL_WEIGHTS True"
# torch names the offending class/function in its weights_only error message
_UNSAFE_GLOBAL_PATTERN = re.compile(r"Unsupported global: GLOBAL (\S+)")
# ... and the weights-only unpickler's own reason between these two phrases
_UNPICKLER_REASON_PATTERN = re.compile(
    r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", re.DOTALL
)
_ANSI_PATTERN = re.compile(r"\x1b\[[0-9;]*m")
_ENFORCE_PATTERN = re.compile(r"^\[enforce fail at [^\]]*\]\s*\.?\s*")
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (corrupt, truncated or not a checkpoint)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file needs pickle code execution and the user has not opted in."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint would leave too much of the model unloaded (keys or shapes do not match)."""


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
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"Checkpoint file {path} is corrupt or not a PyTorch checkpoint: it is empty (0 bytes).")
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols helps no user
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe_global = _UNSAFE_GLOBAL_PATTERN.search(str(e))
        if unsafe_global is None and not allow_unsafe:
            raise CheckpointError(
                f"Checkpoint file {path} is corrupt or not a PyTorch checkpoint "
                f"(unpickling failed: {_unpickler_reason(e)})."
            ) from None
        if not allow_unsafe:
            raise UnsafeCheckpointError(
                f"Refusing to load checkpoint {path}: it needs pickle code execution "
                f"(it references {unsafe_global.group(1)}), which can run arbitrary code. "
                f"If you trust this file, opt in with {UNSAFE_OPT_IN}."
            ) from None
        logger.warning(f"Loading {path} with full unpickling (unsafe checkpoints allowed).")
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as full_error:  # noqa: BLE001  any unpickling failure is the file's
            raise CheckpointError(
                f"Checkpoint file {path} is corrupt or not a PyTorch checkpoint "
                f"(unpickling failed: {_first_line(full_error)})."
            ) from None
    except Exception as e:  # noqa: BLE001  torch raises many types for malformed files
        raise CheckpointError(
            f"Checkpoint file {path} is corrupt or not a PyTorch checkpoint: {_describe_failure(path, e)}."
        ) from None


def _first_line(error: BaseException) -> str:
    text = _ANSI_PATTERN.sub("", str(error)).strip()
    text = _ENFORCE_PATTERN.sub("", text.splitlines()[0]) if text else ""
    return f"{type(error).__name__}: {text}" if isinstance(error, KeyError) or not text else text


def _unpickler_reason(error: BaseException) -> str:
    """The weights-only unpickler's own reason, without torch's advice around it."""
    match = _UNPICKLER_REASON_PATTERN.search(_ANSI_PATTERN.sub("", str(error)))
    reason = " ".join(match.group(1).split()) if match else ""
    return reason or _first_line(error)


def _describe_failure(path: str, error: BaseException) -> str:
    """Why ``torch.load`` could not read ``path``, from the file's format and ``error``."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    if not is_zip:
        return f"neither a zip archive (torch.save) nor a pickle (unpickling failed: {_first_line(error)})"
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as zip_error:
        return f"a truncated or damaged zip archive ({zip_error}; was a download or copy interrupted?)"
    return f"a zip archive that torch.save did not write ({_first_line(error)})"


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
    With ``max_unloaded_fraction`` set, a file that would leave more than that fraction of the
    model's parameter values unloaded raises :class:`CheckpointMismatchError`.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        allow_unsafe: bool = False,
        max_unloaded_fraction: Optional[float] = None,
        **checkpointables,
    ):
        """
        Args:
            model (nn.Module): model whose state is saved and loaded.
            save_dir: directory of the checkpoints and of the ``last_checkpoint`` tag.
            allow_unsafe: allow loading files that need pickle code execution.
            max_unloaded_fraction: refuse files leaving more than this fraction of the model's
                floating-point state (parameters and buffers, counted in values) unloaded;
                None: accept any file (Detectron2's behaviour, for training).
            checkpointables: other objects with ``state_dict``/``load_state_dict`` to save, as
                in :class:`fvcore.common.checkpoint.Checkpointer`.
        """
        super().__init__(model, save_dir, **checkpointables)
        self.allow_unsafe = allow_unsafe
        self.max_unloaded_fraction = max_unloaded_fraction
        self._loading = ""

    @classmethod
    def for_inference(cls, model, cfg, save_dir: str = "") -> "HAPNetCheckpointer":
        """A checkpointer for inference (demo, ``--eval-only``, tools) configured by ``cfg``:
        ``MODEL.ALLOW_UNSAFE_CHECKPOINTS``, and the fit check of
        ``MODEL.WEIGHTS_MAX_UNLOADED_FRACTION`` unless ``MODEL.ALLOW_PARTIAL_WEIGHTS``."""
        limit = None if cfg.MODEL.ALLOW_PARTIAL_WEIGHTS else cfg.MODEL.WEIGHTS_MAX_UNLOADED_FRACTION
        return cls(model, save_dir, allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS, max_unloaded_fraction=limit)

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
        self._loading = filename
        if filename.endswith((".pkl", ".pyth")) and not self.allow_unsafe:
            raise UnsafeCheckpointError(
                f"Refusing to load checkpoint {filename}: {os.path.splitext(filename)[1]} files "
                f"are plain pickles and need code execution to load. If you trust this file, "
                f"opt in with {UNSAFE_OPT_IN}."
            )
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> Dict[str, Any]:
        loaded = safe_torch_load(f, allow_unsafe=self.allow_unsafe)
        state = loaded.get("model", loaded) if isinstance(loaded, Mapping) else loaded
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f"Checkpoint file {f} is not a weights file: it holds a {type(state).__name__}, "
                f"not a state dict (a mapping of parameter names to tensors)."
            )
        for key, value in state.items():
            if not isinstance(key, str) or not (torch.is_tensor(value) or hasattr(value, "__array__")):
                raise CheckpointError(
                    f"Checkpoint file {f} is not a weights file: its entry {key!r} is a "
                    f"{type(value).__name__}, not a tensor."
                )
        return loaded

    def _load_model(self, checkpoint: Dict[str, Any]):
        incompatible = super()._load_model(checkpoint)
        if self.max_unloaded_fraction is not None:
            self._check_fit(incompatible)
        return incompatible

    def _check_fit(self, incompatible) -> None:
        """Raise :class:`CheckpointMismatchError` when too much of the model stayed unloaded."""
        state = {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}
        total = sum(v.numel() for v in state.values())
        unloaded_keys = set(incompatible.missing_keys) | {k for k, _, _ in incompatible.incorrect_shapes}
        per_prefix = defaultdict(int)
        for key in unloaded_keys & set(state):
            per_prefix[_prefix(key)] += state[key].numel()
        unloaded = sum(per_prefix.values())
        if total == 0 or unloaded <= self.max_unloaded_fraction * total:
            return
        largest = sorted(per_prefix.items(), key=lambda kv: (-kv[1], kv[0]))[:3]  # ties by name: deterministic
        where = ", ".join(f"{p}.* ({n:,})" for p, n in largest)
        file_prefixes = sorted({_prefix(k) for k in incompatible.unexpected_keys})[:3]
        theirs = f"; the file's unused keys start with {', '.join(p + '.*' for p in file_prefixes)}" if file_prefixes else ""
        shapes = f"; {len(incompatible.incorrect_shapes)} tensors have another shape" if incompatible.incorrect_shapes else ""
        raise CheckpointMismatchError(
            f"Refusing checkpoint {self._loading}: it leaves {unloaded:,} of the model's {total:,} parameter "
            f"values ({unloaded / total:.1%}) unloaded, e.g. {where}{shapes}{theirs}. Is it the checkpoint of "
            f"this config? To load a partial file on purpose (e.g. backbone only) set {PARTIAL_OPT_IN}."
        )


def _prefix(key: str, depth: int = 2) -> str:
    """The first ``depth`` dotted components of a state-dict key (``backbone.vfm.blocks.0.x``
    -> ``backbone.vfm``)."""
    return ".".join(key.split(".")[:depth])
