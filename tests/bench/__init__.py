"""Tests of the benchmarks (bench/): each runs --quick and its report is checked."""
