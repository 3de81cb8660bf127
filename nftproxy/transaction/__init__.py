"""Transaction: kernel operations rendered to one nft script, applied atomically."""
