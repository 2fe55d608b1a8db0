"""Session files, the contract between preparing and training: their format, and loading them into arrays."""
