"""Cluster tests on a network-namespace test bed (needs root)."""
