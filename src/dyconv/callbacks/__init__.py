"""Lightning callbacks: temperature annealing, attention statistics, RNG state in checkpoints."""

from dyconv.callbacks.attention import AttentionStatistics
from dyconv.callbacks.rng import RNGStateCallback
from dyconv.callbacks.temperature import TemperatureScheduler, temperature_at

__all__ = ["AttentionStatistics", "RNGStateCallback", "TemperatureScheduler", "temperature_at"]
