"""Eager PyTorch: the reference every speed-up is measured against (CPU or CUDA)."""

from __future__ import annotations

import torch

from mmdeploy.engines.base import Engine, InputMeta
from mmdeploy.engines.tensor_names import INPUT_NAME  # the name the exported graphs give this input
from mmdeploy.latency.threads import ThreadPolicy, TorchThreads, torch_policy


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model: torch.nn.Module, size: int, precision: str = "fp32", device: str | None = None,
                 policy: ThreadPolicy | None = None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        super().__init__(size, precision, device)
        self._model_cpu = model
        self.policy = policy or torch_policy()

    def _activate(self) -> None:
        from mmdeploy.errors import MMDeployError

        if self.precision not in ("fp32", "fp16"):
            raise MMDeployError(f"the torch engine has no precision {self.precision!r}", "use --precision fp32 or fp16")
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        if dtype == torch.float16 and self.device == "cpu":
            raise MMDeployError("the torch engine runs fp16 only on CUDA", "use --precision fp32 on the CPU")
        self.model = self._model_cpu.to(self.device, dtype).eval()
        self.dtype = dtype
        TorchThreads.acquire(self.policy.threads)

    def _deactivate(self) -> None:
        TorchThreads.release()
        self.model = None

    @torch.inference_mode()
    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        TorchThreads.use(self.policy.threads)  # another engine in this process may hold a different count
        out = self.model(x.to(self.device, self.dtype, non_blocking=True))
        return out.float().cpu()

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _input_metadata(self) -> InputMeta:
        conv = next((m for m in self.model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        return InputMeta(INPUT_NAME, (None, conv.in_channels if conv is not None else 3, self.size, self.size))
