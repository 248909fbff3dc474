"""The project's database: migrations for the trading tables and the `recon` schema."""
