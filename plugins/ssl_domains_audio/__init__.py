"""Audio plugins: TERA and SSAST on torchaudio features, sharing one data module."""
