"""Prefect flows and deployments (the only package that imports Prefect)."""
