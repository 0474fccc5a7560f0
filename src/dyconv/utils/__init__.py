"""Generic helpers with no knowledge of runs, models or data: atomic file writes (:mod:`.files`),
parameter and FLOP counts (:mod:`.model_stats`)."""
