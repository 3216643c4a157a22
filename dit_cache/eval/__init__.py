"""Evaluation: metrics, sweeps against peers, reports, and the trained reference models (zoo)."""
