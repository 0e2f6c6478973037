"""The four stages: each a short program `run(recipe, run_dir) -> Manifest` over the run directory."""
