"""ssl-domains SAR plugin: MERLIN self-supervised despeckling of single-look complex images."""
