"""Lightning callbacks: temperature annealing, attention statistics, RNG state in checkpoints, divergence stop,
the last checkpoint before validation."""

from dyconv.analysis.callback import AttentionStatistics
from dyconv.callbacks.finite import NonFiniteGuard
from dyconv.callbacks.last import LastCheckpoint
from dyconv.callbacks.rng import RNGStateCallback
from dyconv.callbacks.temperature import TemperatureScheduler, temperature_at

__all__ = [
    "AttentionStatistics",
    "LastCheckpoint",
    "NonFiniteGuard",
    "RNGStateCallback",
    "TemperatureScheduler",
    "temperature_at",
]
