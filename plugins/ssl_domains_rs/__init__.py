"""Remote-sensing plugins: CROMA (radar + optical) and SSL4EO-S12 (multi-temporal Sentinel-1/2), on rasterio."""
