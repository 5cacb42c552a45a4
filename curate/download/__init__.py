"""The download stage: input reading and splitting, the guarded fetcher, img2dataset per part."""
