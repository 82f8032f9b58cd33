"""Mixed-precision training step on any device (Detectron2's AMPTrainer needs CUDA)."""

import time

import torch
from detectron2.engine import AMPTrainer

__all__ = ["AutocastTrainer", "resolve_amp_dtype"]

_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_amp_dtype(name: str, device_type: str) -> torch.dtype:
    """
    Args:
        name: ``SOLVER.AMP.DTYPE``: "auto" (bfloat16 on CPU, float16 on GPUs), "bfloat16" or
            "float16".
        device_type: "cpu" or "cuda" (the device the model runs on).

    Returns:
        The autocast dtype.
    """
    if name == "auto":
        return torch.bfloat16 if device_type == "cpu" else torch.float16
    if name not in _AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE must be 'auto', 'bfloat16' or 'float16', got '{name}'.")
    return _AMP_DTYPES[name]


class AutocastTrainer(AMPTrainer):
    """
    :class:`AMPTrainer` that autocasts on the model's own device type (CPU or CUDA).

    float16 scales the loss with a :class:`torch.amp.GradScaler`; bfloat16 has the range of
    float32 and runs unscaled (the scaler is disabled and has an empty state).
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        precision: torch.dtype,
        device_type: str,
        **kwargs,
    ):
        """
        Args:
            model, data_loader, optimizer: as in :class:`detectron2.engine.SimpleTrainer`.
            precision: autocast dtype (torch.bfloat16 or torch.float16).
            device_type: "cpu" or "cuda".
            kwargs: other arguments of :class:`AMPTrainer`.
        """
        grad_scaler = torch.amp.GradScaler(device_type, enabled=precision == torch.float16)
        super().__init__(
            model, data_loader, optimizer, grad_scaler=grad_scaler, precision=precision, **kwargs
        )
        self.device_type = device_type

    def run_step(self):
        """One iteration: forward under autocast, (scaled) backward, optimiser step."""
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()

        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
