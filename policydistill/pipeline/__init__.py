"""The user-facing jobs: train a teacher policy, distil it, compare methods. Each is a typed
config (with named presets) and one library function; the CLI only builds the config."""
