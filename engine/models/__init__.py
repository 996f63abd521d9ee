"""Surrogates that know their uncertainty, target transforms, metrics and model selection."""
