"""The evaluation report: one HTML page (:mod:`.page`) with its plots (:mod:`.plots`)."""
