"""GRU4Rec session-based recommendations, faithful to the authors' reference behaviour."""

__version__ = "0.1.0"
