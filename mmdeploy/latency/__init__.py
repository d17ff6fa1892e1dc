"""Latency: how engines are timed and how they are set to run fast.

Modules: :mod:`~mmdeploy.latency.bench` (the timing protocol and ``mmdeploy bench``), :mod:`~mmdeploy.latency.tune`
(engine settings chosen by measurement, stored in the bundle), :mod:`~mmdeploy.latency.threads` (thread policies),
:mod:`~mmdeploy.latency.noise` (was the machine busy while timing), :mod:`~mmdeploy.latency.trust` (which latencies a
report may quote), :mod:`~mmdeploy.latency.table` (the bench table), :mod:`~mmdeploy.latency.machine` (the machine a
figure was measured on). Nothing is imported here, so ``import mmdeploy.latency.X`` stays as light as X.
"""
