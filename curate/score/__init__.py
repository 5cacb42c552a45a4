"""The score stage: CLIP similarity per scorer, embeddings and heuristic signals."""
