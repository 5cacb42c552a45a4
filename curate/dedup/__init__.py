"""The dedup stage: exact, caption (MinHash-LSH), embedding (SemDeDup) and pixel copy search, each pair
confirmed pixel for pixel."""
from pathlib import Path

VERIFIER_WEIGHTS = Path(__file__).with_name("copy_verifier.pt")  # here, so naming it loads no torch
