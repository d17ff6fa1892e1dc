"""BatchNorm recalibration for each deployment size (exact, multi-size, distributed-ready)."""

from mmdeploy.calib.bn import BNSums, bn_layers, calibrate_bn, finalize_bn_state, plan_batches

__all__ = ["BNSums", "bn_layers", "calibrate_bn", "finalize_bn_state", "plan_batches"]
