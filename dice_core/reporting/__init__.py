"""The paper's report: Tables 1 and 2, Figures 11 to 13, emissions, for the trained models."""
