# The deployables, read from services.toml (shared with cargo xtask).
(builtins.fromTOML (builtins.readFile ./services.toml)).service
