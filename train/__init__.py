"""CLIP training and evaluation on curated subsets (open_clip models and loss)."""
