"""ssl-domains plugin template: a denoising autoencoder on feature vectors."""
