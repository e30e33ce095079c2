"""The library beneath the stages: plain functions over plain arguments."""
