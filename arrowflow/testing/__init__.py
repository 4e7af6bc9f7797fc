"""Public test helpers for arrowflow users and for arrowflow's own suite."""
