"""The workers: one worker's loop, --jobs N processes, Ray placement, GPUs and cores."""
