"""Deployment: the adapter registry, export formats and vLLM serving (no argparse, no print)."""
