"""Shared fixtures and helpers of the bigactor test suite."""
