"""Built-in parameter sets (`--params rsc15-xe`), one TOML file each."""
