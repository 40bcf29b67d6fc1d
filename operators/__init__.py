"""gtlib.operators: neural operators (installed from the top-level operators/ folder)."""
