"""GraphMAE for ssl-domains (extra ``graph``): masked graph autoencoders on PyTorch Geometric data."""
