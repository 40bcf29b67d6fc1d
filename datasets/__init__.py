"""gtlib.datasets: dataset loaders and generators (installed from the top-level datasets/ folder)."""
