"""One error hierarchy for the whole tool.

Every failure a user can cause is a `ToolchainError`: a one-line message saying what went wrong,
a one-line hint saying what to do, and an exit code (1 for failures, 2 for usage errors).
Third-party exceptions (torch, onnx, onnxruntime, paramiko) are wrapped into these at the
boundary where they happen, so the CLI never shows a traceback unless `--debug` is given.
"""

from __future__ import annotations


class ToolchainError(Exception):
    """Base class: message + hint + exit code."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ToolchainError):
    """The command line itself is wrong (unknown option value, conflicting flags)."""

    exit_code = 2


# --- models, data, training -------------------------------------------------------------------


class UnknownModelError(UsageError):
    """A model name that the registry cannot build."""


class DatasetError(ToolchainError):
    """A dataset folder or file that is missing or malformed."""


class CheckpointError(ToolchainError):
    """A checkpoint that cannot be read or does not fit the model."""


class TrainingError(ToolchainError):
    """Training cannot start or continue (diverged, bad resume file)."""


# --- host pipeline ----------------------------------------------------------------------------


class ExportError(ToolchainError):
    """torch -> ONNX export failed or produced an invalid model."""


class ParityError(ExportError):
    """ONNX Runtime output differs from torch (or from the previous stage) beyond tolerance."""


class SimplifyError(ToolchainError):
    """onnxsim failed or changed the model's outputs."""


class OnnxModelError(ToolchainError):
    """An ONNX file that is corrupt, not ONNX, or not an NCHW image classifier."""


class CalibrationError(ToolchainError):
    """A calibration set that is missing, empty, or of the wrong shape."""


class QuantizationError(ToolchainError):
    """Static INT8 quantization failed."""


class AccuracyGateError(QuantizationError):
    """INT8 accuracy drop could not be brought within --max-drop."""


class ArtifactError(ToolchainError):
    """The artifact store cannot be read or written."""


class BenchmarkError(ToolchainError):
    """A benchmark run failed or produced an invalid result."""


# --- target, transport, deploy ----------------------------------------------------------------


class TargetConfigError(UsageError):
    """A target profile (target.toml / ~/.ssh/config) that is missing or invalid."""


class TransportError(ToolchainError):
    """Base class for everything that goes wrong talking to a target."""


class HostUnreachableError(TransportError):
    """TCP connect failed (refused, no route, DNS)."""


class HostKeyUnknownError(TransportError):
    """The target's host key is not in known_hosts (never accepted silently)."""


class HostKeyMismatchError(TransportError):
    """The target's host key differs from the one in known_hosts (always refused)."""


class AuthenticationFailedError(TransportError):
    """The target refused our key."""


class ConnectionDroppedError(TransportError):
    """An established connection broke (mid-upload, mid-command)."""


class CommandTimedOutError(TransportError):
    """A remote command ran past its timeout."""


class CommandFailedError(TransportError):
    """A remote command exited non-zero."""

    def __init__(self, message: str, hint: str | None = None, *, exit_status: int | None = None,
                 stderr: str = "") -> None:
        super().__init__(message, hint)
        self.exit_status = exit_status
        self.stderr = stderr


class TargetIncompatibleError(ToolchainError):
    """The target cannot run the artifact (architecture, Python, glibc, opset, disk)."""


class ProvisioningError(ToolchainError):
    """Installing onnxruntime/numpy on the target failed or no compatible wheel exists."""


class DeployError(ToolchainError):
    """Upload or verification of an artifact on the target failed."""


class LockHeldError(DeployError):
    """Another deploy or bench holds the target's lock."""


class InventoryError(ToolchainError):
    """An Ansible-style inventory file that is missing or malformed, or a --limit that selects no host."""


class FleetFailedError(ToolchainError):
    """Some hosts of a fleet run failed; the exit code is how many (the others finished)."""

    def __init__(self, message: str, hint: str | None = None, *, failed: int = 1) -> None:
        super().__init__(message, hint)
        # 126 and above mean something else to a shell
        self.exit_code = max(1, min(failed, 125))


class FleetInterruptedError(ToolchainError):
    """Ctrl-C stopped a fleet run: what was stopped and what is left, exit 130 (as any interruption)."""

    exit_code = 130


class EmulatedTargetError(ToolchainError):
    """The emulated Bluebox cannot be built, started or stopped (root, qemu-user binfmt, debootstrap)."""
