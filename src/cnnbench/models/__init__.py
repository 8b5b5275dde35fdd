"""Model plugins: one family per file, builders registered by name through entry points."""
