"""Choosing what to evaluate: discrete batch selection, multi-objective, inverse design,
strategy."""
