"""T-JEPA for ssl-domains (extra ``tabular``): joint-embedding predictive pretraining on tables."""
