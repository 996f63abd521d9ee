"""Prefect flows and tasks for matforge; each task wraps one engine or adapter call."""
