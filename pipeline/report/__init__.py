"""Run and sweep reports."""
