"""Structures, candidate generators and featurizers."""
