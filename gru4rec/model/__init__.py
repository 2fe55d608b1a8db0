"""The network: its configuration, the GRU4Rec module, checkpoints (model directories) and export."""
