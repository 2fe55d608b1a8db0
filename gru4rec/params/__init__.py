"""Built-in parameter sets (TOML), loadable by name with `--params NAME`."""
