"""curate: turn a pool of image-text pairs into quality-tiered WebDataset shards."""
