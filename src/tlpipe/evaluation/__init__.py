"""Evaluation: metrics, calibration, open-set scores, figures, and the evaluate stage's body."""
