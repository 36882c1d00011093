"""The benchmarked functions, exactly as a Skython user writes them (no framework). The FastAPI
and Flask apps and the in-process floor import these same definitions."""
import numpy as np


def add(a: float, b: float) -> float:
    return a + b


def norm(xs: list) -> float:
    return float(np.linalg.norm(np.asarray(xs, dtype=float)))
