"""Built-in search spaces (`--space xe`), one TOML file each."""
