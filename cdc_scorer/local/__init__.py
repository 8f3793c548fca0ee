"""The embedded default: a private MariaDB, local model endpoints, demo data and models."""
