"""gtlib.datasets: dataset loaders and generators (from the top-level datasets/ folder)."""
