"""Config composition, the local and Ray runners, and the `curate` command line."""
