"""Tests of the Prefect flows, against a real Prefect server and real DVC projects."""
