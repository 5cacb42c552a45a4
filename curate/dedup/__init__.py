"""The dedup stage: exact, caption (MinHash-LSH), embedding (SemDeDup) and pixel copy search, each pair
confirmed pixel for pixel."""
